"""Stand-in: Lucent's notebook display helpers are never called by the benchmark."""


def display(*args, **kwargs):
    raise RuntimeError("IPython stand-in: display is not available in the benchmark")


class HTML:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("IPython stand-in: HTML is not available in the benchmark")


Image = HTML
