"""Every picture of lumos. matplotlib is imported only when something is drawn."""


def plot_explanation(explanation, *args, **kwargs):
    """Draw an explanation with the display that fits its data (see :mod:`lumos.display.heatmap`)."""
    from .heatmap import plot_explanation as _plot

    return _plot(explanation, *args, **kwargs)
