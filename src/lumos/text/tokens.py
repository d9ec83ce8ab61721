"""Word-level aggregation of sub-word token attributions (a separate step after explaining).

Tokenizers cut words into pieces ("token", "##isation"); :func:`words` pools the pieces of each
word into one value with ``sum`` (keeps completeness: the word values add up to the token
values), ``mean`` or ``max`` (the largest piece, signed) and returns an Explanation over words.
The grouping comes from the tokenizer's word ids, recorded by the text adapter in
``meta["word_index"]`` (special tokens such as ``[CLS]`` are units of their own).
"""
from __future__ import annotations

import numpy as np

from ..core.explanation import Explanation

__all__ = ["words"]

_HOW = ("sum", "mean", "max")


def words(expl: Explanation, how: str = "sum") -> Explanation:
    """Pool the token values of a text explanation into one value per word.

    Parameters
    ----------
    expl : Explanation
        A token explanation from ``lumos.explain(model, texts, ..., tokenizer=tok)`` (values of
        shape ``(n, T)``, ``meta["word_index"]`` present).
    how : {"sum", "mean", "max"}, default "sum"
        How the pieces of a word combine. ``"max"`` takes the piece of largest absolute value
        (with its sign).

    Returns
    -------
    Explanation
        ``values`` of shape ``(n, W)`` (``W``: the most words of any text; 0 after a text's last
        word), ``meta["words"]`` the words per text ("" after the last), ``meta["word_index"]``
        the token-to-word map used, ``feature_names`` the words when every text has the same.

    Examples
    --------
    >>> tok_expl = lumos.explain(model, ["unbelievable plot"], "integrated_gradients", tokenizer=tok)
    >>> lumos.text.tokens.words(tok_expl, "sum").feature_names
    ['[CLS]', 'unbelievable', 'plot', '[SEP]']
    """
    from ..core.validation import check_choice

    how = check_choice(how, "how", _HOW)
    if "word_index" not in expl.meta or expl.several:
        raise ValueError("expl: not a token explanation of texts (meta['word_index'] is missing); "
                         "explain strings with lumos.explain(model, texts, method, tokenizer=tok)")
    values = np.asarray(expl.values)
    index = np.asarray(expl.meta["word_index"])
    text = np.asarray(expl.meta["word_text"])
    if values.shape != index.shape:
        raise ValueError(f"expl: values of shape {values.shape} do not match the token map "
                         f"{index.shape}")
    n = len(values)
    W = int(index.max()) + 1 if index.size else 0
    out = np.zeros((n, W), dtype=values.dtype)
    labels = np.full((n, W), "", dtype=object)
    for i in range(n):
        for w in range(int(index[i].max()) + 1):
            sel = index[i] == w
            v = values[i, sel]
            out[i, w] = v.sum() if how == "sum" else v.mean() if how == "mean" else v[np.argmax(np.abs(v))]
            labels[i, w] = text[i, sel][0]
    labels = labels.astype(str)
    meta = {k: v for k, v in expl.meta.items() if k not in expl.sample_keys}
    keys = [k for k in ("completeness_gap", "relative_gap") if k in expl.meta]
    meta.update({k: expl.meta[k] for k in keys})
    meta.update(words=labels, word_index=index, aggregation=how)
    keys += ["words", "word_index"]
    same = all(list(labels[i]) == list(labels[0]) for i in range(n))
    return Explanation(values=out, inputs=expl.inputs, target=expl.target, output=expl.output,
                       baseline_output=expl.baseline_output, method=expl.method,
                       params=dict(expl.params), meta=meta, sample_keys=tuple(keys),
                       feature_names=list(labels[0]) if same else None)
