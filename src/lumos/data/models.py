"""The demo model of the shapes world: a small CNN with global average pooling.

``DemoCNN`` is the architecture class activation maps were made for (Zhou et al., *Learning Deep
Features for Discriminative Localization*, CVPR 2016): convolution blocks, global average pooling,
one linear layer. It has no batch norm and no dropout, so the CAM identity
``logit_c = b_c + mean_{h,w} sum_k w_ck A_k[h, w]`` holds exactly on ``features(x)``, and relevance
propagation needs no canonisation.

>>> from lumos.data import load_demo_model, shapes_dataset
>>> model = load_demo_model()
>>> data = shapes_dataset(100, split="test")
>>> (model(data.images).argmax(1) == data.labels).float().mean()
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

__all__ = ["DemoCNN", "load_demo_model", "demo_model_info", "WEIGHTS_PATH", "INFO_PATH"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_PATH = WEIGHTS_DIR / "demo_cnn.pt"
INFO_PATH = WEIGHTS_DIR / "demo_cnn.json"


class DemoCNN(nn.Module):
    """conv(3→16)-relu-pool, conv(16→32)-relu-pool, conv(32→64)-relu-pool, conv(64→64)-relu, GAP, linear.

    Input ``(batch, 3, 64, 64)`` in ``[0, 1]``; ``features(x)`` is ``(batch, 64, 8, 8)``; output
    ``(batch, n_classes)`` logits.

    Attributes
    ----------
    features : nn.Sequential
        Indices: ``0`` conv, ``1`` relu, ``2`` maxpool, ``3`` conv, ``4`` relu, ``5`` maxpool,
        ``6`` conv, ``7`` relu, ``8`` maxpool, ``9`` conv, ``10`` relu.
    pool : nn.AdaptiveAvgPool2d
        Global average pooling.
    classifier : nn.Linear
        ``64 → n_classes``.
    last_conv : str
        ``"features.9"``, the last ``Conv2d`` module (its output is the pre-activation map).
    last_relu : str
        ``"features.10"``, the ReLU after it; its output is ``features(x)``, the feature maps that
        global average pooling and the classifier see (the CAM layer).
    """

    last_conv = "features.9"
    last_relu = "features.10"

    def __init__(self, n_classes: int = 4):
        super().__init__()
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"n_classes must be a positive int; got {n_classes!r}")
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=False), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=False), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=False), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=False),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def read_record(info_path: Path, retrain: str) -> dict:
    """A shipped model's training record (JSON); a missing file names the command that writes it."""
    if not info_path.exists():
        raise FileNotFoundError(f"no training record at {info_path}; run `{retrain}`")
    return json.loads(info_path.read_text())


def read_state(weights_path: Path, what: str, retrain: str, device: str | torch.device = "cpu") -> dict:
    """A shipped model's state dict, read with ``torch.load(..., weights_only=True)`` (no pickle of
    code); a missing file names the model (``what``) and the command that writes it."""
    if not weights_path.exists():
        raise FileNotFoundError(f"no {what} weights at {weights_path}; run `{retrain}`")
    return torch.load(weights_path, map_location=device, weights_only=True)


def demo_model_info() -> dict:
    """The training record shipped beside the weights (seed, epochs, data sizes, accuracies, time)."""
    return read_record(INFO_PATH, "lumos train-demo")


def load_demo_model(device: str | torch.device = "cpu") -> DemoCNN:
    """The trained :class:`DemoCNN` shipped with lumos, in eval mode on ``device``.

    The weights are a plain state dict read with ``torch.load(..., weights_only=True)`` (no pickle
    of code). ``lumos train-demo`` reproduces them (:func:`lumos.data.train.train_demo_model`).
    """
    state = read_state(WEIGHTS_PATH, "demo", "lumos train-demo", device)
    n_classes = int(state["classifier.weight"].shape[0])
    model = DemoCNN(n_classes=n_classes)
    model.load_state_dict(state)
    from .shapes import CLASS_NAMES

    model.class_names = list(CLASS_NAMES[:n_classes])  # what `lumos explain` prints beside a class index
    return model.to(device).eval()
