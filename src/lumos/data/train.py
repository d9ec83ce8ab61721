"""Reproducible training of the shapes-world demo model (``lumos train-demo``).

Everything random comes from explicit seeds: the data from :func:`shapes_dataset`, weight
initialisation and batch order from one ``torch.Generator``. On CPU with the same thread count the
result is bit-for-bit the same; other thread counts may differ in the last float bits.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .models import DemoCNN, INFO_PATH, WEIGHTS_PATH
from .shapes import WATERMARK_CLASS, shapes_dataset

__all__ = ["train_demo_model", "evaluate_demo_model", "DEFAULTS"]

#: The settings the shipped weights were trained with.
DEFAULTS = dict(seed=0, epochs=8, n_train=4000, n_test=1000, batch_size=32, lr=3e-3)


def _init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """He-uniform weights (He et al., 2015) and zero biases, drawn from ``generator`` so that
    initialisation never touches the global RNG.

    The first convolution's bias starts at ``-0.5 * sum(weights)``: the layer then sees the image
    centred on grey, as if inputs were normalised, while the model still takes ``[0, 1]`` pixels.
    """
    first = True
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu", generator=generator)
            with torch.no_grad():
                if first:
                    m.bias.copy_(-0.5 * m.weight.sum(dim=tuple(range(1, m.weight.dim()))))
                else:
                    m.bias.zero_()
            first = False


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    return torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def evaluate_demo_model(model: nn.Module, n: int = 1000, seed: int = 0) -> dict:
    """Accuracies on the clean and the all-watermarked test split, and the shortcut's pull.

    Both splits hold the same images (same ``seed``), differing only by the corner mark, so the
    comparison is paired.

    Returns
    -------
    dict
        ``clean_accuracy``, ``watermarked_accuracy``; ``class0_rate_clean`` and
        ``class0_rate_watermarked``: the share of images of the other classes predicted as class 0
        without and with the mark; ``shortcut_effect``: their difference.
    """
    was_training = model.training
    model.eval()
    try:
        clean = shapes_dataset(n, split="test", watermark="none", seed=seed)
        marked = shapes_dataset(n, split="test", watermark="all", seed=seed)
        p_clean = _predict(model, clean.images)
        p_marked = _predict(model, marked.images)
    finally:
        model.train(was_training)
    other = clean.labels != WATERMARK_CLASS
    r_clean = (p_clean[other] == WATERMARK_CLASS).float().mean().item()
    r_marked = (p_marked[other] == WATERMARK_CLASS).float().mean().item()
    return {
        "clean_accuracy": (p_clean == clean.labels).float().mean().item(),
        "watermarked_accuracy": (p_marked == marked.labels).float().mean().item(),
        "class0_rate_clean": r_clean,
        "class0_rate_watermarked": r_marked,
        "shortcut_effect": r_marked - r_clean,
        "n_test": n,
        "test_seed": seed,
    }


def train_demo_model(out: str | Path | None = None, seed: int = DEFAULTS["seed"],
                     epochs: int = DEFAULTS["epochs"], n_train: int = DEFAULTS["n_train"],
                     progress: bool | None = True, *, n_test: int = DEFAULTS["n_test"],
                     batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
                     threads: int | None = None) -> tuple[DemoCNN, dict]:
    """Train :class:`DemoCNN` on the shapes world with the watermark shortcut.

    Parameters
    ----------
    out : str, Path or None, default None
        Folder to write ``demo_cnn.pt`` (state dict) and ``demo_cnn.json`` (the report) into.
        ``"package"`` writes the weights shipped with lumos. ``None`` writes nothing.
    seed : int, default 0
        Seeds the training data, the initialisation and the batch order.
    epochs : int, default 8
    n_train : int, default 4000
        Training images (``split="train"``, ``watermark="shortcut"``).
    progress : bool or None, default True
        A progress bar over the epochs (``None``: only on a terminal).
    n_test : int, default 1000
        Test images for the report (clean and watermarked, seed ``seed``).
    batch_size : int, default 32
    lr : float, default 3e-3
        Peak Adam learning rate (Kingma & Ba, 2015) of a one-cycle schedule (Smith & Topin, 2019):
        warm-up over the first 15% of steps, then cosine annealing.
    threads : int or None, default None
        Torch CPU threads during training (restored afterwards); ``None`` keeps the current
        setting. The float result is bit-for-bit reproducible for the same thread count.

    Returns
    -------
    model : DemoCNN
        In eval mode.
    report : dict
        Settings, accuracies (see :func:`evaluate_demo_model`), training time in seconds, thread
        count and versions.
    """
    for name, val in (("seed", seed), ("epochs", epochs), ("n_train", n_train), ("n_test", n_test),
                      ("batch_size", batch_size)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < (0 if name == "seed" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'seed' else 'positive'} int; got {val!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive int or None; got {threads!r}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(out, int(seed), int(epochs), int(n_train), progress, int(n_test), int(batch_size),
                      float(lr))
    finally:
        torch.set_num_threads(old_threads)


def _train(out, seed, epochs, n_train, progress, n_test, batch_size, lr):
    from ..core.execution import progress_bar

    t0 = time.perf_counter()
    cpu0 = time.process_time()
    data = shapes_dataset(int(n_train), split="train", watermark="shortcut", seed=int(seed))
    g = torch.Generator().manual_seed(int(seed))
    model = DemoCNN(n_classes=len(data.class_names))
    _init_weights(model, g)
    # channels-last convolutions train about a quarter faster on CPU; saved weights are made
    # contiguous again below.
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = -(-int(n_train) // int(batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=int(epochs) * steps_per_epoch, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    model.train()
    with progress_bar(int(epochs), "train-demo", progress, unit="epoch") as bar:
        for epoch in range(int(epochs)):
            order = torch.randperm(int(n_train), generator=g)
            total, correct, seen = 0.0, 0, 0
            for i in range(0, int(n_train), int(batch_size)):
                idx = order[i:i + int(batch_size)]
                x = data.images[idx].contiguous(memory_format=torch.channels_last)
                y = data.labels[idx]
                logits = model(x)
                loss = loss_fn(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(idx)
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(idx)
            history.append({"epoch": epoch + 1, "loss": total / seen, "train_accuracy": correct / seen})
            bar.set_postfix(loss=f"{total / seen:.3f}", acc=f"{correct / seen:.3f}")
            bar.update(1)
    train_time = time.perf_counter() - t0
    cpu_time = time.process_time() - cpu0
    model = model.to(memory_format=torch.contiguous_format)
    model.eval()
    metrics = evaluate_demo_model(model, n=int(n_test), seed=int(seed))
    report = {
        "seed": int(seed), "epochs": int(epochs), "n_train": int(n_train), "batch_size": int(batch_size),
        "lr": float(lr), "optimizer": "Adam, one-cycle schedule",
        **metrics,
        "train_time_s": round(train_time, 2), "train_cpu_time_s": round(cpu_time, 2),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "history": history,
    }
    save_weights(model, report, out, WEIGHTS_PATH, INFO_PATH)
    return model, report


def save_weights(model: nn.Module, report: dict, out, weights_path: Path, info_path: Path) -> None:
    """Write a demo model's state dict (contiguous tensors) and its training ``report`` (JSON).

    ``out``: ``None`` writes nothing; ``"package"`` writes ``weights_path``/``info_path`` (the
    shipped files); a folder gets files of the same names. Adds ``report["weights_path"]``.
    """
    if out is None:
        return
    if str(out) == "package":
        w_path, j_path = weights_path, info_path
    else:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        w_path, j_path = folder / weights_path.name, folder / info_path.name
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, w_path)
    j_path.write_text(json.dumps(report, indent=2) + "\n")
    report["weights_path"] = str(w_path)
