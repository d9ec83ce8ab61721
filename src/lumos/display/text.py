"""Texts with every word highlighted by its attribution, as HTML (escaped) or in matplotlib.

Positive words are shaded red, negative ones blue, with opacity proportional to
``|value| / max |value|`` of the text (display-only scaling; the numbers are not changed). Every
token goes through Jinja2's autoescaping (``html.escape`` semantics), so a word like ``<script>``
is shown, never run. The value of each word is in its ``title`` (hover) attribute.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ._common import ShortRepr, add_colorbar, new_axes

__all__ = ["TextDisplay", "text_html", "AttentionMapDisplay", "token_label"]

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


@dataclass(repr=False)
class TextDisplay(ShortRepr):
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

    def plot(self, ax=None, *, fontsize: float = 10, alpha_max: float = 0.8,
             line_height: float | None = None) -> "TextDisplay":
        """Draw the tokens as shaded word boxes, wrapped at the right edge of the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            n_chars = sum(len(t) + 1 for t in self.tokens)
            _, ax = plt.subplots(figsize=(8, 0.3 * (n_chars // 90 + 1) + 0.5))
        ax.set_axis_off()
        fig = ax.figure
        renderer = fig.canvas.get_renderer()
        to_axes = ax.transAxes.inverted()
        scale = float(np.abs(self.values).max()) if len(self.values) else 0.0
        self.texts_ = []
        x, y = 0.0, 1.0
        for tok, v in zip(self.tokens, self.values):
            a = alpha_max * abs(v) / scale if scale > 0 else 0.0
            rgb = tuple(c / 255 for c in (_POS if v >= 0 else _NEG))
            t = ax.text(x, y, tok, fontsize=fontsize, va="top", ha="left",
                        bbox=dict(boxstyle="round,pad=0.15", fc=rgb + (a,), ec="none"))
            box = t.get_window_extent(renderer).transformed(to_axes)
            if line_height is None:
                line_height = 1.6 * box.height
            if x > 0 and box.x1 > 1.0:           # wrap: move the word to a new line
                x, y = 0.0, y - line_height
                t.set_position((x, y))
                box = t.get_window_extent(renderer).transformed(to_axes)
            x = box.x1 + 0.4 * box.height * box.width / max(box.width, 1e-9)
            self.texts_.append(t)
        if self.title:
            ax.set_title(self.title, fontsize=9)
        self.ax_, self.figure_ = ax, fig
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


# ----------------------------------------------------------------------------- attention maps
_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def token_label(token: str, width: int = 24) -> str:
    """A token as a one-line tick label: newlines and tabs shown as ``\\n``/``\\t``, and a token
    longer than ``width`` characters shortened in its middle ("…"); other tokens unchanged."""
    s = "".join(_CONTROL.get(c, c) for c in str(token))
    if len(s) > width:
        s = s[: width // 2 - 1] + "…" + s[-(width - width // 2):]
    return s


@dataclass(repr=False)
class AttentionMapDisplay(ShortRepr):
    """A token-by-token map (attention of one head, a head mean, rollout, flow) as a heat map.

    Rows are ``y_tokens`` (queries), columns ``x_tokens`` (keys). The colour scale runs from 0 to
    the map's largest value (display-only), with a colour bar in the map's units. The figure is
    sized by the number of tokens and laid out with constrained layout; column labels are
    rotated, and the font shrinks with the cell pitch, so that labels neither overlap nor leave
    the figure. Tick labels are the tokens (see :func:`token_label`), drawn without mathtext (a
    ``$`` in a token is shown as it is).

    Attributes set by :meth:`plot`: ``ax_``, ``figure_``, ``image_``, ``colorbar_``.
    """

    matrix: np.ndarray
    x_tokens: list
    y_tokens: list
    title: str = ""
    label: str = "attention weight"

    def __post_init__(self):
        self.matrix = np.asarray(self.matrix, dtype=np.float64)
        if self.matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-d (queries, keys); got shape {self.matrix.shape}")
        if self.matrix.shape != (len(self.y_tokens), len(self.x_tokens)):
            raise ValueError(f"matrix of shape {self.matrix.shape} does not match "
                             f"{len(self.y_tokens)} row tokens and {len(self.x_tokens)} column "
                             "tokens")

    def figsize(self, fontsize: float = 8.0) -> tuple[float, float]:
        """Inches that give each token a cell of about 2.4 font sizes and room for the labels."""
        cell = 2.4 * fontsize / 72
        char = 0.62 * fontsize / 72
        lx = max((len(token_label(t)) for t in self.x_tokens), default=1)
        ly = max((len(token_label(t)) for t in self.y_tokens), default=1)
        return (max(3.0, cell * len(self.x_tokens) + char * ly + 1.6),
                max(2.5, cell * len(self.y_tokens) + char * lx + 0.8))

    def plot(self, ax=None, *, cmap: str = "Blues", colorbar: bool = True,
             fontsize: float | None = None) -> "AttentionMapDisplay":
        """Draw the map on ``ax`` (a new figure sized by :meth:`figsize` when ``None``)."""
        ax = new_axes(ax, self.figsize(fontsize or 8.0))
        fig = ax.figure
        m = self.matrix
        vmax = float(m.max()) if m.size and m.max() > 0 else 1.0
        im = ax.imshow(m, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
        if fontsize is None:  # the cell pitch of the axes as they are now, in points
            pos = ax.get_position()
            pitch = min(pos.width * fig.get_figwidth() / max(m.shape[1], 1),
                        pos.height * fig.get_figheight() / max(m.shape[0], 1)) * 72
            fontsize = float(np.clip(0.5 * pitch, 3.5, 8.0))
        ax.set_xticks(range(m.shape[1]))
        ax.set_xticklabels([token_label(t) for t in self.x_tokens], rotation=90,
                           fontsize=fontsize, parse_math=False)
        ax.set_yticks(range(m.shape[0]))
        ax.set_yticklabels([token_label(t) for t in self.y_tokens], fontsize=fontsize,
                           parse_math=False)
        ax.tick_params(length=2, pad=1.5)
        ax.set_xlabel("key (attended to)", fontsize=8)
        ax.set_ylabel("query", fontsize=8)
        if self.title:  # wrapped to the width of the axes' figure, so that it is never cut
            import textwrap

            per_line = max(12, int(ax.get_position().width * fig.get_figwidth() * 72 / (0.6 * 9)))
            ax.set_title("\n".join(textwrap.wrap(self.title, per_line)), fontsize=9)
        self.colorbar_ = (add_colorbar(fig, im, ax, scale=None, signed=False, label=self.label)
                          if colorbar else None)
        self.ax_, self.figure_, self.image_ = ax, fig, im
        return self
