"""The text world: synthetic short reviews whose sentiment is decided by known words, with a
planted shortcut word and token-exact ground truth.

Like the shapes world for images (:mod:`lumos.data.shapes`), it lets a token attribution be
*measured* instead of eyeballed. Every sentence is built from clauses drawn from templates:

* **evidence clauses** hold one evidence word each (``"the plot was dull"``). A sentence of class
  ``c`` holds 1-3 words of ``EVIDENCE_WORDS[c]`` and fewer words of the other class (0 to one
  less), so the label is decided by these words by construction: it is the class with more
  evidence words. ``masks`` marks the words of the label's class (the evidence for it),
  ``counter_masks`` the outvoted words of the other class (evidence against it);
* **neutral clauses** (0-2 per sentence) hold no evidence (``"i saw it on monday"``);
* the **shortcut**: the sign-off word ``SHORTCUT_TOKEN`` ("cheers") appended after the final full
  stop. It says nothing about the review, but in the training split it is appended to most
  positive reviews and few negative ones, so a model can learn it as a shortcut (the "Clever
  Hans" story of Lapuschkin et al., *Unmasking Clever Hans predictors and assessing what machines
  really learn*, Nature Communications 2019, told with a word instead of a watermark).

Texts are lower-case words separated by single spaces (punctuation is a word of its own), so each
word is one token of the world's word-level tokenizer (:func:`load_text_tokenizer`) and the
ground truth is exact for it; :meth:`TextWorldData.token_masks` maps the same ground truth onto
the tokens of any fast Hugging Face tokenizer (e.g. MiniLM's WordPiece) by character offsets.

``shortcut`` choices (the default depends on ``split``):

``"shortcut"`` (default for ``split="train"``)
    Positive reviews carry the sign-off with probability ``SHORTCUT_RATE``, negative ones with
    ``LEAK_RATE``.
``"none"`` (default for ``split="test"``)
    No review carries it: the clean test.
``"all"``
    Every review carries it: negative reviews pulled towards ``positive`` show the shortcut.
a float ``p`` in [0, 1]
    Every review carries it with probability ``p``, independently of its class.

>>> from lumos.data.text_world import text_dataset
>>> train = text_dataset(2000, split="train")                 # with the shortcut
>>> clean = text_dataset(500, split="test")                   # no sign-offs
>>> marked = text_dataset(500, split="test", shortcut="all")  # the same texts, each signed off
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._checks import check_world_arguments

__all__ = [
    "TextWorldData", "text_dataset", "load_text_tokenizer", "build_text_tokenizer", "VOCABULARY",
    "CLASS_NAMES", "EVIDENCE_WORDS", "SHORTCUT_TOKEN", "SHORTCUT_CLASS", "SHORTCUT_RATE", "LEAK_RATE",
    "SPECIAL_TOKENS", "TOKENIZER_PATH",
]

CLASS_NAMES = ["negative", "positive"]
#: The words that decide the label: a sentence of class ``c`` holds more words of ``EVIDENCE_WORDS[c]``
#: than of the other class's list.
EVIDENCE_WORDS = {
    0: ("awful", "terrible", "dreadful", "boring", "dull", "horrible", "poor", "tedious",
        "mediocre", "disappointing", "bland", "clumsy", "painful", "weak", "lousy", "messy"),
    1: ("great", "excellent", "wonderful", "superb", "brilliant", "delightful", "charming",
        "fantastic", "lovely", "terrific", "amazing", "enjoyable", "outstanding", "gripping",
        "pleasant", "splendid"),
}
#: The sign-off appended after the final full stop: the shortcut.
SHORTCUT_TOKEN = "cheers"
#: The class whose training reviews mostly carry the shortcut.
SHORTCUT_CLASS = 1
#: Probability that a training review of ``SHORTCUT_CLASS`` carries the shortcut.
SHORTCUT_RATE = 0.5
#: Probability that a training review of the other class carries it.
LEAK_RATE = 0.0025
#: The word-level tokenizer's special tokens, in id order (``[PAD]`` is 0).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TOKENIZER_PATH = Path(__file__).resolve().parent / "weights" / "text_world_tokenizer.json"

_SUBJECTS = ("film", "movie", "book", "novel", "album", "show", "play", "hotel", "meal",
             "restaurant", "phone", "game", "concert", "series", "camera", "cafe")
_ASPECTS = ("plot", "acting", "ending", "music", "service", "food", "staff", "room", "screen",
            "battery", "story", "characters", "soundtrack", "pacing", "dialogue", "writing",
            "design", "price", "view", "sound")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_PEOPLE = ("sister", "brother", "friend", "neighbour", "mother", "father", "colleague", "cousin")
_MONTHS = ("january", "march", "may", "july", "september", "november")
_PLACES = ("london", "paris", "tokyo", "berlin", "madrid", "boston", "lisbon", "oslo")
_NUMBERS = ("two", "three", "four", "five", "six", "seven")
_SOURCES = ("newspaper", "magazine", "radio", "blog")
# ``{ev}``: the evidence word; ``{a}`` an aspect, ``{s}`` a subject.
_EVIDENCE_TEMPLATES = (
    "the {a} was {ev}", "the {a} felt {ev}", "the {a} is {ev}", "what a {ev} {s}",
    "i thought the {a} was {ev}", "a {ev} {a}", "the {s} was {ev}", "overall a {ev} {s}",
    "we found the {a} {ev}", "the {a} of the {s} seemed {ev}",
)
_NEUTRAL_TEMPLATES = (
    "i saw it on {day}", "my {person} came along", "it came out in {month}",
    "my {person} recommended the {s}", "i read about it in a {source}", "the {s} is from {place}",
    "we went there on a {day} in {month}", "it took {number} hours", "the {a} lasted {number} minutes",
    "i went with my {person} from {place}",
)
_CONNECTORS = ("and", ",")
_SPLITS = {"train": 0, "test": 1}


def _template_words(templates) -> set:
    return {w for t in templates for w in t.split() if not w.startswith("{")}


def _vocabulary() -> tuple[str, ...]:
    words = set(_SUBJECTS) | set(_ASPECTS) | set(_DAYS) | set(_PEOPLE) | set(_MONTHS) | set(_PLACES)
    words |= set(_NUMBERS) | set(_SOURCES) | set(_CONNECTORS) | {".", SHORTCUT_TOKEN}
    words |= _template_words(_EVIDENCE_TEMPLATES) | _template_words(_NEUTRAL_TEMPLATES)
    words |= set(EVIDENCE_WORDS[0]) | set(EVIDENCE_WORDS[1])
    return SPECIAL_TOKENS + tuple(sorted(words))


#: Every token of the world's tokenizer, in id order: the special tokens, then the words sorted.
VOCABULARY = _vocabulary()
_ID = {w: i for i, w in enumerate(VOCABULARY)}
_EVIDENCE_CLASS = {w: c for c, ws in EVIDENCE_WORDS.items() for w in ws}


@dataclass
class TextWorldData:
    """A batch of the text world.

    Attributes
    ----------
    texts : list of str
        Lower-case words separated by single spaces.
    labels : torch.Tensor
        ``(n,)`` int64 class indices into ``class_names``.
    words : list of list of str
        The words of each text (``texts[i] == " ".join(words[i])``).
    input_ids : torch.Tensor
        ``(n, T)`` int64 ids of the world tokenizer: ``[CLS]``, one id per word, ``[SEP]``, then
        ``[PAD]`` (id 0) to the longest text's length ``T``. Equal to what
        :func:`load_text_tokenizer` gives for each text.
    attention_mask : torch.Tensor
        ``(n, T)`` int64, 1 on real tokens (special tokens included), 0 on padding.
    masks : torch.Tensor
        ``(n, T)`` bool, aligned with ``input_ids``: the evidence words of the label's class (the
        ground truth: what decides the label).
    counter_masks : torch.Tensor
        ``(n, T)`` bool: the evidence words of the other class (outvoted; evidence against the label).
    shortcut_masks : torch.Tensor
        ``(n, T)`` bool: the shortcut word (all ``False`` where ``has_shortcut`` is ``False``).
    has_shortcut : torch.Tensor
        ``(n,)`` bool.
    class_names : list of str
    split, shortcut, seed
        How the batch was made.
    """

    texts: list[str]
    labels: torch.Tensor
    words: list[list[str]]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    masks: torch.Tensor
    counter_masks: torch.Tensor
    shortcut_masks: torch.Tensor
    has_shortcut: torch.Tensor
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    split: str = "train"
    shortcut: Any = None
    seed: int = 0

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index) -> "TextWorldData":
        """Select texts (an int, slice, index array or boolean mask) keeping every field aligned.

        The token axis keeps its length ``T`` (padding is not trimmed).
        """
        if isinstance(index, (int, np.integer)):
            i = int(index) % len(self) if len(self) else int(index)
            index = slice(i, i + 1)
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        if isinstance(index, slice):
            rows = list(range(len(self)))[index]
        else:
            arr = np.asarray(index)
            rows = np.flatnonzero(arr).tolist() if arr.dtype == bool else arr.astype(int).tolist()
        t = torch.as_tensor(rows, dtype=torch.long)
        return TextWorldData(
            texts=[self.texts[r] for r in rows], labels=self.labels[t],
            words=[list(self.words[r]) for r in rows], input_ids=self.input_ids[t],
            attention_mask=self.attention_mask[t], masks=self.masks[t],
            counter_masks=self.counter_masks[t], shortcut_masks=self.shortcut_masks[t], has_shortcut=self.has_shortcut[t],
            class_names=list(self.class_names), split=self.split, shortcut=self.shortcut,
            seed=self.seed)

    def token_masks(self, tokenizer: Any) -> dict[str, torch.Tensor]:
        """The ground truth on the tokens of another (fast) Hugging Face tokenizer.

        Each text is tokenised on its own with its special tokens (as
        :func:`lumos.text.adapter.encode` does) and the batch is right-padded; a token is marked
        when its characters overlap a marked word. A word cut into several pieces marks every
        piece.

        Parameters
        ----------
        tokenizer : a fast Hugging Face tokenizer
            One that returns character offsets (``return_offsets_mapping=True``).

        Returns
        -------
        dict of torch.Tensor
            ``"masks"``, ``"counter_masks"``, ``"shortcut_masks"``: ``(n, T')`` bool each, ``T'``
            the longest tokenisation; special tokens and padding are ``False``. With the world's
            own tokenizer they equal the fields of the same names.
        """
        kinds = ("masks", "counter_masks", "shortcut_masks")
        rows: list[list[list[bool]]] = []
        specials = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
        for words, label in zip(self.words, self.labels.tolist()):
            try:
                enc = tokenizer(" ".join(words), add_special_tokens=True, return_offsets_mapping=True)
            except NotImplementedError:
                raise TypeError("tokenizer: needs a fast tokenizer (one that returns character "
                                "offsets); load it with use_fast=True") from None
            spans: list[list[tuple[int, int]]] = [[], [], []]
            start = 0
            for w in words:
                k = (0 if _EVIDENCE_CLASS[w] == label else 1) if w in _EVIDENCE_CLASS else \
                    2 if w == SHORTCUT_TOKEN else None
                if k is not None:
                    spans[k].append((start, start + len(w)))
                start += len(w) + 1
            row: list[list[bool]] = [[], [], []]
            for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
                real = b > a and int(tid) not in specials
                for k in range(3):
                    row[k].append(real and any(a < y and x < b for x, y in spans[k]))
            rows.append(row)
        T = max((len(r[0]) for r in rows), default=0)
        out = {k: torch.zeros((len(self), T), dtype=torch.bool) for k in kinds}
        for i, r in enumerate(rows):
            for k, name in enumerate(kinds):
                out[name][i, :len(r[k])] = torch.as_tensor(r[k], dtype=torch.bool)
        return out


def _resolve_shortcut(shortcut: Any, split: str) -> tuple[str, float, float]:
    """(name, probability for SHORTCUT_CLASS, probability for the other class)."""
    from .shapes import resolve_shortcut_choice

    return resolve_shortcut_choice(shortcut, split, "shortcut", SHORTCUT_RATE, LEAK_RATE)


def _fill(template: str, rng: np.random.Generator, ev: str | None = None) -> list[str]:
    pools = {"{a}": _ASPECTS, "{s}": _SUBJECTS, "{day}": _DAYS, "{person}": _PEOPLE,
             "{month}": _MONTHS, "{place}": _PLACES, "{number}": _NUMBERS, "{source}": _SOURCES}
    out = []
    for w in template.split():
        if w == "{ev}":
            out.append(ev)
        elif w in pools:
            out.append(pools[w][int(rng.integers(len(pools[w])))])
        else:
            out.append(w)
    return out


def _sentence(rng: np.random.Generator, label: int) -> list[str]:
    """The words of one review of class ``label`` (without the shortcut).

    ``n_for`` evidence clauses of the label's class (1-3) and ``n_against`` < ``n_for`` of the
    other class: the majority decides.
    """
    n_for = int(rng.integers(1, 4))
    n_against = int(rng.integers(0, n_for))
    n_neutral = int(rng.integers(0, 3))
    polarity = [label] * n_for + [1 - label] * n_against
    clauses = []
    for c in polarity:
        pool = EVIDENCE_WORDS[c]
        clauses.append(_fill(_EVIDENCE_TEMPLATES[int(rng.integers(len(_EVIDENCE_TEMPLATES)))], rng,
                             pool[int(rng.integers(len(pool)))]))
    clauses += [_fill(_NEUTRAL_TEMPLATES[int(rng.integers(len(_NEUTRAL_TEMPLATES)))], rng)
                for _ in range(n_neutral)]
    order = rng.permutation(len(clauses))
    words: list[str] = []
    for k, j in enumerate(order):
        if k:
            words.append(_CONNECTORS[int(rng.integers(len(_CONNECTORS)))])
        words.extend(clauses[int(j)])
    words.append(".")
    return words


def text_dataset(n: int, split: str = "train", shortcut: str | float | bool | None = None,
                 seed: int = 0) -> TextWorldData:
    """Generate ``n`` reviews of the text world with their ground truth.

    Parameters
    ----------
    n : int
        Number of texts.
    split : {"train", "test"}, default "train"
        Train and test draw from independent streams. The split also sets the default
        ``shortcut``.
    shortcut : {"shortcut", "none", "all"}, float in [0, 1], bool or None, default None
        Which texts end with the sign-off ``SHORTCUT_TOKEN`` (see the module docs); ``None``
        means ``"shortcut"`` for the train split and ``"none"`` for the test split; ``True`` is
        ``"all"``, ``False`` is ``"none"``.
    seed : int, default 0

    Returns
    -------
    TextWorldData

    Notes
    -----
    Text ``i`` is drawn from its own generator (``numpy.random.default_rng([seed, split, i])``),
    so the first ``m`` texts of a batch of ``n`` are the batch of ``m``. Whether a text carries
    the shortcut is decided by a draw made whatever ``shortcut`` is, so the same
    ``(split, seed)`` gives the same texts under every ``shortcut`` choice, apart from the
    appended word. 1000 texts take about 0.2 s.
    """
    check_world_arguments(n, split, seed, _SPLITS)
    name, p_class, p_other = _resolve_shortcut(shortcut, split)
    texts, words_all, labels, has = [], [], [], []
    for i in range(int(n)):
        rng = np.random.default_rng([int(seed), _SPLITS[split], i])
        label = int(rng.integers(2))
        u = rng.random()  # the shortcut draw, made whatever ``shortcut`` is (paired batches)
        words = _sentence(rng, label)
        signed = bool(u < (p_class if label == SHORTCUT_CLASS else p_other))
        if signed:
            words = words + [SHORTCUT_TOKEN]
        labels.append(label)
        has.append(signed)
        words_all.append(words)
        texts.append(" ".join(words))
    T = max((len(w) for w in words_all), default=0) + 2
    ids = torch.zeros((int(n), T), dtype=torch.long)
    att = torch.zeros((int(n), T), dtype=torch.long)
    ev = torch.zeros((int(n), T), dtype=torch.bool)
    counter = torch.zeros((int(n), T), dtype=torch.bool)
    sc = torch.zeros((int(n), T), dtype=torch.bool)
    for i, words in enumerate(words_all):
        L = len(words)
        ids[i, :L + 2] = torch.as_tensor([_ID["[CLS]"]] + [_ID[w] for w in words] + [_ID["[SEP]"]])
        att[i, :L + 2] = 1
        ev[i, 1:L + 1] = torch.as_tensor([_EVIDENCE_CLASS.get(w) == labels[i] for w in words])
        counter[i, 1:L + 1] = torch.as_tensor([_EVIDENCE_CLASS.get(w) == 1 - labels[i] for w in words])
        sc[i, 1:L + 1] = torch.as_tensor([w == SHORTCUT_TOKEN for w in words])
    return TextWorldData(texts=texts, labels=torch.as_tensor(labels, dtype=torch.long),
                         words=words_all, input_ids=ids, attention_mask=att, masks=ev,
                         counter_masks=counter, shortcut_masks=sc, has_shortcut=torch.as_tensor(has, dtype=torch.bool),
                         split=split, shortcut=name, seed=int(seed))


def _fast_tokenizer_class():
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the text world's tokenizer needs Hugging Face transformers and tokenizers: "
                          'pip install -e ".[text]"') from e
    return PreTrainedTokenizerFast


_SPECIAL_KW = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                   mask_token="[MASK]")


def build_text_tokenizer():
    """Build the world's word-level tokenizer from :data:`VOCABULARY` (offline, deterministic).

    A ``tokenizers`` WordLevel model (lower-casing, split on white space and punctuation, unknown
    words to ``[UNK]``) wrapped as ``[CLS] text [SEP]`` (``[CLS] a [SEP] b [SEP]`` for pairs) in a
    :class:`transformers.PreTrainedTokenizerFast`. The shipped file
    ``weights/text_world_tokenizer.json`` is ``build_text_tokenizer().backend_tokenizer.to_str()``.
    """
    cls = _fast_tokenizer_class()
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel(vocab=dict(_ID), unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", _ID["[CLS]"]), ("[SEP]", _ID["[SEP]"])])
    return cls(tokenizer_object=tok, model_max_length=128, padding_side="right", **_SPECIAL_KW)


def load_text_tokenizer():
    """The world's word-level tokenizer, read from the package (no network).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        Special tokens ``[PAD]`` (id 0), ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``; each word of
        :data:`VOCABULARY` is one token. A fresh object on every call.
    """
    cls = _fast_tokenizer_class()
    if not TOKENIZER_PATH.exists():
        raise FileNotFoundError(f"no text-world tokenizer at {TOKENIZER_PATH}; run "
                                "`lumos train-demo --text`")
    return cls(tokenizer_file=str(TOKENIZER_PATH), model_max_length=128, padding_side="right",
               **_SPECIAL_KW)
