"""Attention views: head view and model view as self-contained interactive HTML, and heat maps.

The two views follow BertViz (Vig, "A Multiscale Visualization of Attention in the Transformer
Model", 2019), without its network dependencies:

- :func:`head_view`: the tokens in two columns (queries left, the keys they attend to right),
  joined by lines whose opacity is the attention weight, one colour per head; a layer menu, head
  check boxes, and hovering a token shows only its lines.
- :func:`model_view`: a grid of layers x heads, each a small picture of its attention map;
  clicking one opens its two-column view.
- :func:`attention_heatmap`: one head, a head mean, the rollout or the flow as a matplotlib heat
  map with the tokens on both axes (:class:`lumos.display.text.AttentionMapDisplay`).

The HTML is one file (or notebook cell) with its CSS and JavaScript inline: no network, no CDN,
no external file. It is built from Jinja2 templates with autoescaping on (shipped in
``lumos/text/templates``); the data travels as JSON in a ``<script type="application/json">``
element encoded by Jinja's ``tojson`` (``<``, ``>``, ``&`` and ``'`` written as ``\\u003c`` ...,
so a token ``</script>`` cannot close the element), and the script puts every token into the
page with ``textContent``, never as markup. The same inputs give the same bytes.

Attention is taken as Hugging Face returns it (a tuple of per-layer ``(batch, heads, T, T)``
tensors), as one stacked ``(layers, batch, heads, T, T)`` tensor or array, as one example's
``(layers, heads, T, T)``, or as the :class:`~lumos.text.attention.Attentions` of
:func:`~lumos.text.attention.attentions`; only an example's real tokens (``attention_mask``) are
shown.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..core.validation import check_choice, check_number
from ..display._common import ShortRepr
from .attention import Attentions, _fuse_heads, as_attention, attentions, flow, rollout

__all__ = ["HeadView", "ModelView", "head_view", "model_view", "example_attention",
           "attention_heatmap", "attention_pictures", "HEAD_COLORS"]

#: One colour per head (heads beyond 12 reuse them in order).
HEAD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
               "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a")

#: Decimals kept for the weights embedded in the HTML (the page draws; 1e-4 is below what a
#: line's opacity shows).
DECIMALS = 4


# ---------------------------------------------------------------------------------------------
# One example's attention on its real tokens
# ---------------------------------------------------------------------------------------------

def example_attention(attention: Any, tokens: Sequence[Any] | None = None, *, index: int = 0,
                      attention_mask: Any = None) -> tuple[np.ndarray, list[str]]:
    """One example's attention on its real tokens, and those tokens.

    Parameters
    ----------
    attention : tuple of (batch, heads, T, T), array (layers, batch, heads, T, T), array
        (layers, heads, T, T) of one example, or Attentions
    tokens : list of str (the example's T tokens, or only its real ones) or list of such lists
        (one per example), optional
        Default: the tokens of an :class:`Attentions`, else the positions ``"0"``, ``"1"``, ...
    index : int, default 0
        The example of the batch.
    attention_mask : array (batch, T) or (T,), optional
        Real tokens (default: those of an :class:`Attentions`, else all).

    Returns
    -------
    attention : ndarray (layers, heads, n, n), float64
    tokens : list of n str
    """
    if tokens is None and isinstance(attention, Attentions):
        tokens = attention.tokens
    if isinstance(attention, (np.ndarray, torch.Tensor)) and attention.ndim == 4:
        attention = attention[:, None]  # one example: (layers, heads, T, T)
        if attention_mask is not None:
            attention_mask = np.asarray(attention_mask).reshape(1, -1)
    a, mask = as_attention(attention, attention_mask)
    B, T = mask.shape
    index = check_number(index, "index", integer=True)
    if not -B <= index < B:
        raise IndexError(f"index {index} out of range for attention of {B} examples")
    index %= B
    keep = np.flatnonzero(mask[index])
    a = a[:, index][:, :, keep][:, :, :, keep]
    if tokens is None:
        return a, [str(i) for i in range(len(keep))]
    if isinstance(tokens, str):
        raise TypeError("tokens must be a list of token strings, not one string")
    tokens = list(tokens)
    if tokens and isinstance(tokens[0], (list, tuple, np.ndarray)):
        if len(tokens) != B:
            raise ValueError(f"tokens holds {len(tokens)} lists but the attention has {B} examples")
        tokens = list(tokens[index])
    tokens = [str(t) for t in tokens]
    if len(tokens) == T:
        tokens = [tokens[k] for k in keep]
    elif len(tokens) != len(keep):
        raise ValueError(f"tokens has {len(tokens)} entries; expected the example's {T} positions "
                         f"or its {len(keep)} real tokens")
    return a, tokens


# ---------------------------------------------------------------------------------------------
# HTML views
# ---------------------------------------------------------------------------------------------

def _environment():
    from jinja2 import Environment, PackageLoader

    return Environment(loader=PackageLoader("lumos.text", "templates"), autoescape=True,
                       keep_trailing_newline=True)


@dataclass(repr=False)
class _AttentionView(ShortRepr):
    attention: np.ndarray
    tokens: list
    title: str = ""

    kind = ""

    def data(self) -> dict:
        """What the page draws: tokens, colours, state, and the weights as integers in units of
        ``1 / scale`` (``scale = 10**DECIMALS``; the page divides), which keeps the page small."""
        scale = 10 ** DECIMALS
        return {"kind": self.kind, "title": self.title, "tokens": list(self.tokens),
                "attention": np.rint(self.attention * scale).astype(np.int64).tolist(),
                "scale": scale, "colors": list(HEAD_COLORS)}

    def to_html(self, standalone: bool = False) -> str:
        """The view as HTML: a fragment (notebooks, reports) or a whole page (``standalone``)."""
        from jinja2.utils import htmlsafe_json_dumps

        data = self.data()
        # Jinja's own tojson encoding (<, >, &, ' as \u00XX), compact separators
        payload = htmlsafe_json_dumps(data, sort_keys=True, separators=(",", ":"))
        uid = hashlib.sha1(payload.encode()).hexdigest()[:16]
        return _environment().get_template("attention_view.html.j2").render(
            payload=payload, uid=f"{self.kind}-{uid}", title=self.title, tokens=self.tokens,
            standalone=standalone)

    def _repr_html_(self) -> str:  # notebooks
        return self.to_html()

    def save(self, path: str | Path) -> Path:
        """Write the view as one self-contained HTML page (UTF-8); returns the path."""
        path = Path(path)
        path.write_text(self.to_html(standalone=True), encoding="utf-8")
        return path

    @property
    def n_layers(self) -> int:
        return self.attention.shape[0]

    @property
    def n_heads(self) -> int:
        return self.attention.shape[1]


@dataclass(repr=False)
class HeadView(_AttentionView):
    """Two columns of tokens joined by attention lines, for one layer and a choice of heads.

    Attributes
    ----------
    attention : ndarray (layers, heads, n, n)
        One example's attention on its real tokens (row: query, column: key).
    tokens : list of n str
    layer : int
        The layer shown first (a menu in the page switches layers).
    heads : list of int
        The heads ticked first (check boxes in the page).
    title : str
    """

    layer: int = 0
    heads: list | None = None
    kind = "head"

    def data(self) -> dict:
        d = super().data()
        d.update(layer=int(self.layer), heads=[int(h) for h in self.heads])
        return d

    @classmethod
    def from_model(cls, model: Any, text: Any, *, tokenizer: Any = None, layer: int = 0,
                   heads: Sequence[int] | None = None, index: int = 0,
                   title: str | None = None, **kwargs) -> "HeadView":
        """The head view of a Hugging Face model on ``text`` (see
        :func:`~lumos.text.attention.attentions`; ``kwargs`` go to it)."""
        return head_view(attentions(model, text, tokenizer=tokenizer, **kwargs), index=index,
                         layer=layer, heads=heads, title=title)


@dataclass(repr=False)
class ModelView(_AttentionView):
    """Every layer and head of one example as a grid of small attention maps (click to enlarge).

    Attributes
    ----------
    attention : ndarray (layers, heads, n, n)
    tokens : list of n str
    title : str
    """

    kind = "model"

    @classmethod
    def from_model(cls, model: Any, text: Any, *, tokenizer: Any = None, index: int = 0,
                   title: str | None = None, **kwargs) -> "ModelView":
        """The model view of a Hugging Face model on ``text``."""
        return model_view(attentions(model, text, tokenizer=tokenizer, **kwargs), index=index,
                          title=title)


def _layer(layer: Any, n_layers: int) -> int:
    layer = check_number(layer, "layer", integer=True)
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer must be in [-{n_layers}, {n_layers}) for attention of "
                         f"{n_layers} layers; got {layer}")
    return int(layer) % n_layers


def _heads(heads: Any, n_heads: int) -> list[int]:
    if heads is None:
        return list(range(n_heads))
    if isinstance(heads, (int, np.integer)):
        heads = [heads]
    out = []
    for h in heads:
        h = check_number(h, "heads", integer=True)
        if not -n_heads <= h < n_heads:
            raise ValueError(f"heads must be in [-{n_heads}, {n_heads}) for attention of "
                             f"{n_heads} heads; got {h}")
        out.append(int(h) % n_heads)
    return sorted(set(out))


def head_view(attention: Any, tokens: Sequence[Any] | None = None, *, index: int = 0,
              layer: int = 0, heads: Sequence[int] | None = None, attention_mask: Any = None,
              title: str | None = None) -> HeadView:
    """Interactive head view of one example (self-contained HTML).

    Parameters
    ----------
    attention, tokens, index, attention_mask
        As in :func:`example_attention`: Hugging Face's tuple, a stacked array, or Attentions.
    layer : int, default 0
        The layer shown first.
    heads : list of int, optional
        The heads ticked first (default all).
    title : str, optional

    Returns
    -------
    HeadView
        Shown by notebooks (``_repr_html_``); ``.save(path)`` writes a page that works offline;
        ``.to_html()`` gives the fragment.
    """
    a, toks = example_attention(attention, tokens, index=index, attention_mask=attention_mask)
    return HeadView(a, toks, "Head view" if title is None else str(title),
                    _layer(layer, a.shape[0]), _heads(heads, a.shape[1]))


def model_view(attention: Any, tokens: Sequence[Any] | None = None, *, index: int = 0,
               attention_mask: Any = None, title: str | None = None) -> ModelView:
    """Interactive model view of one example: layers x heads thumbnails (self-contained HTML).

    Parameters as in :func:`head_view`. Returns a :class:`ModelView`.
    """
    a, toks = example_attention(attention, tokens, index=index, attention_mask=attention_mask)
    return ModelView(a, toks, "Model view" if title is None else str(title))


# ---------------------------------------------------------------------------------------------
# Heat maps (matplotlib, imported when drawn)
# ---------------------------------------------------------------------------------------------

HEATMAP_KINDS = ("head", "mean", "rollout", "flow")


def attention_heatmap(attention: Any, tokens: Sequence[Any] | None = None, *,
                      kind: str = "mean", layer: int = -1, head: int = 0, index: int = 0,
                      attention_mask: Any = None, head_fusion: str = "mean",
                      residual: float = 0.5, ax: Any = None, title: str | None = None,
                      **plot_kwargs):
    """One attention map of one example as a heat map with the tokens on both axes.

    Parameters
    ----------
    attention, tokens, index, attention_mask
        As in :func:`example_attention`.
    kind : {"head", "mean", "rollout", "flow"}, default "mean"
        One head of ``layer`` (``head``), the heads of ``layer`` fused by ``head_fusion`` (mean,
        max or min), attention rollout or attention flow through all layers
        (:func:`~lumos.text.attention.rollout`, :func:`~lumos.text.attention.flow`, with
        ``head_fusion`` and ``residual``).
    layer, head : int
    ax : matplotlib axes, optional
    title : str, optional
    **plot_kwargs
        Passed to :meth:`lumos.display.text.AttentionMapDisplay.plot` (``cmap``, ``colorbar``,
        ``fontsize``).

    Returns
    -------
    lumos.display.text.AttentionMapDisplay
        Drawn; rows are query tokens, columns key tokens.
    """
    from ..display.text import AttentionMapDisplay

    check_choice(kind, "kind", HEATMAP_KINDS)
    a, toks = example_attention(attention, tokens, index=index, attention_mask=attention_mask)
    L, H = a.shape[:2]
    if kind in ("head", "mean"):
        lay = _layer(layer, L)
        if kind == "head":
            h = _heads([head], H)[0]
            m, auto, label = a[lay, h], f"layer {lay}, head {h}", "attention weight"
        else:
            m = _fuse_heads(a[lay], head_fusion)
            auto, label = f"layer {lay}, {head_fusion} over {H} heads", "attention weight"
    else:
        fn = rollout if kind == "rollout" else flow
        m = fn(a[:, None], head_fusion=head_fusion, residual=residual)[0]
        auto = f"attention {kind}, {L} layers ({head_fusion} of heads, residual {residual:g})"
        label = kind
    disp = AttentionMapDisplay(m, toks, toks, auto if title is None else str(title), label)
    return disp.plot(ax=ax, **plot_kwargs)


# ---------------------------------------------------------------------------------------------
# For the demo
# ---------------------------------------------------------------------------------------------

def attention_pictures(model: Any, tokenizer: Any, text: str, out_dir: str | Path,
                       files: dict, *, prefix: str = "attention") -> list[str]:
    """Write the head view, the model view and a heat-map figure of ``model`` on ``text``.

    Files written into ``out_dir`` (each recorded as ``files[path] = "what it shows"``):
    ``{prefix}_head_view.html``, ``{prefix}_model_view.html`` and ``{prefix}_heatmaps.png``
    (last layer's mean over heads beside the rollout). Returns the paths written.
    """
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    att = attentions(model, text, tokenizer=tokenizer)
    a, toks = example_attention(att)
    name = type(model).__name__
    paths = []
    p = HeadView(a, toks, f"Head view: {name}", a.shape[0] - 1, list(range(a.shape[1]))).save(
        out_dir / f"{prefix}_head_view.html")
    files[str(p)] = (f"head view of {name} on {text!r} (open in a browser: layer menu, head "
                     "check boxes, hover a token)")
    paths.append(str(p))
    p = ModelView(a, toks, f"Model view: {name}").save(out_dir / f"{prefix}_model_view.html")
    files[str(p)] = f"model view of {name}: every layer x head, click one to enlarge"
    paths.append(str(p))
    n = len(toks)
    side = 1.2 + 0.2 * n + 0.07 * max(len(t) for t in toks)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1.6, side), layout="constrained")
    try:
        attention_heatmap(a, toks, kind="mean", ax=axes[0])
        attention_heatmap(a, toks, kind="rollout", ax=axes[1])
        p = out_dir / f"{prefix}_heatmaps.png"
        fig.savefig(p, dpi=110)
    finally:
        plt.close(fig)
    files[str(p)] = (f"{name}: last layer's attention (mean over heads) and attention rollout "
                     "(query rows, key columns)")
    paths.append(str(p))
    return paths
