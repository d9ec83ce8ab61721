"""Texts with every word highlighted by its attribution, as HTML (escaped) or in matplotlib.

Positive words are shaded red, negative ones blue, with opacity proportional to
``|value| / max |value|`` of the text (display-only scaling; the numbers are not changed). Every
token goes through Jinja2's autoescaping (``html.escape`` semantics), so a word like ``<script>``
is shown, never run. The value of each word is in its ``title`` (hover) attribute.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["TextDisplay", "text_html"]

_POS = (255, 0, 81)
_NEG = (0, 139, 251)

_TEMPLATE = """\
<div class="lumos-text" style="font-family: sans-serif; line-height: 1.9; margin: 4px 0;">
{%- if title %}<div style="font-size: 80%; color: #555;">{{ title }}</div>{% endif -%}
{%- for t in tokens %}<span style="background-color: rgba({{ t.rgb }}, {{ t.alpha }}); \
padding: 1px 2px; border-radius: 3px;" title="{{ t.value }}">{{ t.text }}</span>{{ t.sep }}{% endfor -%}
</div>"""


def _template():
    from jinja2 import Environment

    return Environment(autoescape=True).from_string(_TEMPLATE)


@dataclass
class TextDisplay:
    """One text's tokens and their attributions.

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``texts_`` (one matplotlib Text per
    token, in order).
    """

    tokens: list[str]
    values: np.ndarray
    title: str = ""

    @classmethod
    def from_explanation(cls, explanation, index: int = 0, tokens: Sequence[str] | None = None,
                         title: str | None = None) -> "TextDisplay":
        """Tokens from ``tokens=``, ``meta["tokens"]`` (text maskers) or ``feature_names``."""
        v = np.asarray(explanation.values, dtype=np.float64)
        if v.ndim != 2:
            raise ValueError(f"a text explanation has values of shape (n, tokens); got {v.shape}")
        if not -len(v) <= index < len(v):
            raise IndexError(f"index {index} out of range for an explanation of {len(v)} samples")
        n_tok = explanation.meta.get("n_tokens")
        d = int(np.asarray(n_tok)[index]) if n_tok is not None else v.shape[1]
        if tokens is None:
            if explanation.meta.get("tokens") is not None:
                tokens = [str(t) for t in np.asarray(explanation.meta["tokens"])[index][:d]]
            elif explanation.feature_names is not None:
                tokens = list(explanation.feature_names)[:d]
            else:
                raise ValueError("tokens: the explanation has no meta['tokens'] or feature_names; "
                                 "pass tokens=[...]")
        tokens = [str(t) for t in tokens]
        if len(tokens) != d:
            raise ValueError(f"tokens has {len(tokens)} entries but the explanation has {d} values")
        return cls(tokens, v[index, :d].copy(), explanation.method if title is None else title)

    def _rows(self, alpha_max: float = 0.8):
        scale = float(np.abs(self.values).max()) if len(self.values) else 0.0
        rows = []
        for i, (tok, val) in enumerate(zip(self.tokens, self.values)):
            a = alpha_max * abs(val) / scale if scale > 0 else 0.0
            rgb = _POS if val >= 0 else _NEG
            rows.append({"text": tok, "value": f"{val:+.4g}", "alpha": f"{a:.3f}",
                         "rgb": ", ".join(map(str, rgb)),
                         "sep": "" if i == len(self.tokens) - 1 else " "})
        return rows

    def to_html(self, alpha_max: float = 0.8) -> str:
        """The highlighted text as an HTML fragment (every token escaped)."""
        return _template().render(tokens=self._rows(alpha_max), title=self.title)

    def _repr_html_(self) -> str:  # notebooks
        return self.to_html()

    def plot(self, ax=None, *, width: int = 80, fontsize: float = 10, alpha_max: float = 0.8
             ) -> "TextDisplay":
        """Draw the tokens as shaded word boxes, wrapped at about ``width`` characters a line."""
        import matplotlib.pyplot as plt

        lines, cur, n = [], [], 0
        for i, tok in enumerate(self.tokens):
            if cur and n + len(tok) + 1 > width:
                lines.append(cur)
                cur, n = [], 0
            cur.append(i)
            n += len(tok) + 1
        if cur:
            lines.append(cur)
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 0.35 * len(lines) + 0.6))
        scale = float(np.abs(self.values).max()) if len(self.values) else 0.0
        self.texts_ = []
        for li, line in enumerate(lines):
            col = 0
            for i in line:
                v = self.values[i]
                a = alpha_max * abs(v) / scale if scale > 0 else 0.0
                rgb = tuple(c / 255 for c in (_POS if v >= 0 else _NEG))
                t = ax.text(col / width, 1 - (li + 0.5) / max(len(lines), 1), self.tokens[i],
                            fontsize=fontsize, va="center", ha="left", family="monospace",
                            bbox=dict(boxstyle="round,pad=0.15", fc=rgb + (a,), ec="none"))
                self.texts_.append(t)
                col += len(self.tokens[i]) + 1
        ax.set_axis_off()
        if self.title:
            ax.set_title(self.title, fontsize=9)
        self.ax_, self.figure_ = ax, ax.figure
        return self


def text_html(explanation, index: int | Sequence[int] | None = None,
              tokens: Sequence[str] | None = None) -> str:
    """HTML of one text (``index``), several, or all of them (``None``), one block each."""
    if index is None:
        index = range(len(explanation))
    if isinstance(index, (int, np.integer)):
        return TextDisplay.from_explanation(explanation, int(index), tokens=tokens).to_html()
    return "\n".join(TextDisplay.from_explanation(explanation, int(i), tokens=tokens).to_html()
                     for i in index)
