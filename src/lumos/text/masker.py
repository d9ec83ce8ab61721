"""Token maskers: LIME and the Shapley methods on the tokens (or words) of a text model.

``lumos.explain(model, texts, method="kernel_shap", tokenizer=tok, target=...)`` (also
``"lime"``, ``"permutation_shap"``, ``"exact_shapley"``) plays with the model's own tokens: the
players are the real, non-special tokens of each text (``granularity="token"``) or its words
(``granularity="word"``: the word pieces of a word go together), and a removed player is

==========  ===================================================================================
``fill``    what the model sees for a removed token
==========  ===================================================================================
"mask"      the tokenizer's mask token (``[MASK]``) in its place; the attention mask unchanged
"pad"       the pad token with attention mask 0 there: the token is hidden, as padding is; the
            other tokens keep their positions
"delete"    nothing: the kept tokens move left to close the gap (positions shift), padding at
            the end; encoders and classifiers only (a causal LM's next-token position would move)
an int id   that token id in its place (seen by the model)
==========  ===================================================================================

Special tokens (``[CLS]``, ``[SEP]``, ``<s>``) are never players: they are always kept, so
``v(∅)`` is the model on ``[CLS] [SEP]`` (deletion), on ``[CLS] [MASK] … [SEP]`` (mask) or on the
special tokens alone, attended (pad). Each text is tokenised once (lumos's right padding, see
:mod:`lumos.text.adapter`), so the players are exactly the model's tokens, never re-tokenised
text (unlike shap's ``Text`` masker and lumos's string-level
:class:`~lumos.agnostic.maskers.TextMasker`, which rebuild a string and tokenise it again).

The values come back per token, ``(n, T)`` like every text explanation: a word's value is
spread evenly over its pieces (so sums are kept and :func:`lumos.text.tokens.words` with
``"sum"`` gives the word values back); ``meta["feature_index"]`` (n, T) is the player of each
token (-1: special or padding) and ``meta["feature_values"]`` (n, players) the values per player.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..agnostic.maskers import MaskedInputs, Masker

__all__ = ["TokenMasker", "MaskedTokens", "FILLS", "GRANULARITIES"]

FILLS = ("mask", "pad", "delete")
GRANULARITIES = ("token", "word")


class TokenMasker(Masker):
    """How tokens are removed for LIME / Shapley values on a text model (see the module docs).

    Parameters
    ----------
    fill : {"mask", "pad", "delete"} or int, default "mask"
        ``"mask"``: the mask token takes a removed token's place; ``"pad"``: the pad token,
        hidden by the attention mask; ``"delete"``: the token is removed and the rest close up;
        an int: that token id takes its place.
    granularity : {"token", "word"}, default "token"
        Players are tokens, or words (all pieces of a word removed together; needs a fast
        tokenizer).
    """

    def __init__(self, fill: Any = "mask", granularity: str = "token"):
        from ..core.validation import check_choice

        if isinstance(fill, str):
            check_choice(fill, "fill", FILLS)
        elif isinstance(fill, bool) or not isinstance(fill, (int, np.integer)) or int(fill) < 0:
            raise TypeError(f"fill: give one of {list(FILLS)} or a non-negative int token id; "
                            f"got {fill!r}")
        self.fill = fill if isinstance(fill, str) else int(fill)
        self.granularity = check_choice(granularity, "granularity", GRANULARITIES)
        self._enc: dict | None = None

    def prepared(self, enc: dict, tokenizer: Any, pad_id: int, kind: str) -> "TokenMasker":
        """A copy bound to the tokenised texts (what :func:`~lumos.text.adapter.explain_text`
        hands to the method)."""
        fill = self.fill
        if fill == "mask":
            fill = getattr(tokenizer, "mask_token_id", None)
            if fill is None:
                raise ValueError("fill='mask': the tokenizer has no mask token; use fill='pad', "
                                 "'delete' or a token id")
        elif fill == "delete" and kind == "lm":
            raise ValueError("fill='delete' moves the tokens of a causal language model, and with "
                             "them the position whose next token is explained; use fill='pad' "
                             "(hidden by the attention mask) or 'mask'")
        out = TokenMasker(self.fill, self.granularity)
        out._enc = dict(enc, fill_id=None if isinstance(fill, str) else int(fill), pad_id=int(pad_id))
        return out

    def bind(self, inputs: Any, name: str = "inputs") -> "MaskedTokens":
        if self._enc is None:
            raise TypeError(f"{name}: a TokenMasker works through lumos.explain(model, texts, "
                            "method, tokenizer=tok, masker=TokenMasker(...)); for a predict "
                            "function on strings use lumos.agnostic.maskers.TextMasker")
        return MaskedTokens(self._enc, self)

    def describe(self) -> dict:
        return {"masker": "TokenMasker", "fill": self.fill, "granularity": self.granularity}


class MaskedTokens(MaskedInputs):
    """The tokenised texts behind a :class:`TokenMasker`; model inputs are int arrays
    ``(m, 2, T)``: token ids and attention mask."""

    modality = "text"
    default_batch = 512

    def __init__(self, enc: dict, masker: TokenMasker):
        self.ids = enc["input_ids"].numpy().astype(np.int64)
        self.mask = enc["attention_mask"].numpy().astype(np.int64)
        special = enc["special"].numpy()
        self.n, self.T = self.ids.shape
        real = (self.mask > 0) & ~special
        # the player of each token (-1: special or padding)
        feat = np.full((self.n, self.T), -1, dtype=np.int64)
        for i in range(self.n):
            pos = np.flatnonzero(real[i])
            if masker.granularity == "token":
                feat[i, pos] = np.arange(len(pos))
            else:
                _, first = np.unique(enc["word_index"][i, pos], return_inverse=True)
                feat[i, pos] = first
        self.feature = feat
        self.n_features = np.maximum(feat.max(1) + 1, 0)
        empty = np.flatnonzero(self.n_features == 0)
        if len(empty):
            raise ValueError(f"inputs: texts {empty[:5].tolist()} have no tokens besides special "
                             "tokens to explain")
        self.weights = np.ones(1)
        self.fill = masker.fill
        self.fill_id = enc["fill_id"]
        self.pad_id = enc["pad_id"]
        self._masker = masker

    def originals(self) -> np.ndarray:
        return np.stack([self.ids, self.mask], axis=1)

    def masked(self, rows, Z) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        Z = np.asarray(Z, dtype=bool)
        feat = self.feature[rows]
        Zp = np.concatenate([Z, np.ones((len(Z), 1), bool)], axis=1)  # column -1: always kept
        keep = np.take_along_axis(Zp, np.where(feat >= 0, feat, Zp.shape[1] - 1), axis=1)
        ids, mask = self.ids[rows].copy(), self.mask[rows].copy()
        if self.fill == "pad":
            ids[~keep] = self.pad_id
            mask[~keep] = 0
        elif self.fill == "delete":
            # stable sort: kept real tokens first in their order, then removed ones and padding
            order = np.argsort(~(keep & (mask > 0)), axis=1, kind="stable")
            ids = np.take_along_axis(ids, order, axis=1)
            mask = np.take_along_axis(keep & (mask > 0), order, axis=1).astype(np.int64)
            ids[mask == 0] = self.pad_id
        else:
            ids[~keep] = self.fill_id
        return np.stack([ids, mask], axis=1)

    def layout(self, per_feature: np.ndarray):
        per_feature = np.asarray(per_feature, dtype=np.float64)
        counts = np.zeros_like(per_feature)
        for i in range(self.n):
            f = self.feature[i][self.feature[i] >= 0]
            np.add.at(counts[i], f, 1.0)
        values = np.zeros((self.n, self.T))
        for i in range(self.n):
            on = self.feature[i] >= 0
            f = self.feature[i][on]
            values[i, on] = per_feature[i, f] / counts[i, f]
        return values, {"inputs": self.ids, "feature_names": None, "meta": {},
                        "sample_meta": {"feature_index": self.feature,
                                        "feature_values": per_feature}}

    def describe(self) -> dict:
        return self._masker.describe()
