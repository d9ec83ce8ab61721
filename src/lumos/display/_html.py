"""The look of lumos' notebook views: the static report's styles, inline, and one autoescaping
Jinja2 environment.

``REPORT_RULES`` copies the rules of the report's stylesheet
(``lumos/report/templates/report.html.j2``) that a table needs; ``STYLE`` composes them into the
``style=""`` of each kind of element, so a ``Explanation``, ``MetricResult`` or ``Comparison`` shown
in Jupyter looks like the report's tables (``tests/test_notebook_html.py`` checks both against the
template). Inline and not a ``<style>`` block, because notebook hosts treat a ``<style>`` block
differently (JupyterLab applies it to the whole page, sanitising hosts drop it) while a style
attribute survives them all. The box sets its own text and background colours: a dark notebook
theme would otherwise draw light text on the report's light header cells.

Every value goes through Jinja2's autoescaping: a feature, class, method or parameter called
``<script>alert(1)</script>`` is shown as text, never run.
"""
from __future__ import annotations

from functools import lru_cache

__all__ = ["REPORT_RULES", "STYLE", "render"]

# selector of report.html.j2 -> the declarations the notebook views take from it
REPORT_RULES = {
    "body": 'font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; line-height: 1.4',
    "table": "border-collapse: collapse; font-size: .9rem",
    "th, td": "border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top",
    "th": "background: #f4f4f4",
    "td.num": "text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap",
    "td.best": "background: #e6f4ea; font-weight: 600",
    "code, pre": "background: #f6f6f6; font-size: .85rem",
    ".note": "color: #666; font-size: .9rem",
}


def _join(*parts: str) -> str:
    return "; ".join(p.strip().rstrip(";") for p in parts if p) + ";"


_CELL = REPORT_RULES["th, td"]
STYLE = {
    "box": _join(REPORT_RULES["body"], "background: #fff; padding: .25rem 0"),
    "table": _join(REPORT_RULES["table"], "margin: 0"),
    "caption": "text-align: left; font-weight: 600; padding: 0 0 .2rem 0;",
    "th": _join(_CELL, REPORT_RULES["th"]),
    "td": _join(_CELL),
    "num": _join(_CELL, REPORT_RULES["td.num"]),
    "best": _join(_CELL, REPORT_RULES["td.num"], REPORT_RULES["td.best"]),
    "code": _join(REPORT_RULES["code, pre"]),
    "note": _join(REPORT_RULES[".note"], "margin: .2rem 0"),
    "img": "max-width: 640px; border: 1px solid #ccc;",
}


@lru_cache(maxsize=None)
def _template(source: str):
    from jinja2 import Environment

    return Environment(autoescape=True).from_string(source)


def render(source: str, **context) -> str:
    """``source`` (a Jinja2 template, compiled once) rendered with autoescaping, with ``s`` = STYLE."""
    return _template(source).render(s=STYLE, **context)
