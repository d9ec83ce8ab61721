"""Every picture of lumos. matplotlib is imported only when something is drawn.

``Explanation.plot()`` chooses the display (:mod:`lumos.display.explanation`); each display is
also reachable directly: :mod:`~lumos.display.heatmap` (``HeatmapDisplay``, ``GridDisplay``,
``plot_grid``), :mod:`~lumos.display.segments`, :mod:`~lumos.display.shap_plots` (``waterfall``,
``bar``, ``beeswarm``, ``force``), :mod:`~lumos.display.text`, :mod:`~lumos.display.effects`,
:mod:`~lumos.display.metrics`.
"""


def plot_explanation(explanation, kind=None, index=None, ax=None, **kwargs):
    """Draw an explanation with the display that fits it (see :mod:`lumos.display.explanation`)."""
    from .explanation import plot_explanation as _plot

    return _plot(explanation, kind, index=index, ax=ax, **kwargs)
