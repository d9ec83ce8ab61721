"""The image–text world: two shapes per image, captions from the ground truth, and a small dual encoder.

Each 64×64 image holds two objects of the shapes world (:mod:`lumos.data.shapes`) on its textured
background, in two different quadrants, with different shapes and different named colours. The
captions are generated from that ground truth ("a small red circle at the top left and a large
blue square at the bottom right"; phrases such as "red circle" describe one object), and every
object has its pixel-exact mask, so a similarity map for "red circle" is scored by how much of it
lies on the circle.

The dual encoder (:class:`ImageTextModel`) has a small CNN image tower and a bag-of-words text
tower (``embedding = W @ counts + b`` over the caption vocabulary), trained contrastively with the
symmetric InfoNCE loss of CLIP (Radford et al., 2021, "Learning Transferable Visual Models From
Natural Language Supervision") by ``lumos train-demo --image-text``.

>>> from lumos.data.image_text import image_text_dataset, load_image_text_model
>>> data = image_text_dataset(8, split="test")
>>> model = load_image_text_model()
>>> sims = model.similarity(data.images, data.captions)     # (8, 8) cosine similarities
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ._checks import check_world_arguments
from .shapes import CLASS_NAMES, IMAGE_SIZE, _backgrounds, render_masks
from .models import read_record, read_state
from .train import save_weights

__all__ = ["ImageTextData", "image_text_dataset", "ImageTextModel", "BagOfWords", "COLOURS", "POSITIONS",
           "VOCABULARY", "phrase", "caption_matches", "load_image_text_model", "image_text_model_info",
           "train_image_text_model", "evaluate_retrieval", "WEIGHTS_PATH", "INFO_PATH", "DEFAULTS"]

#: Named colours (RGB in [0, 1]) of the objects.
COLOURS = {"red": (0.95, 0.1, 0.1), "green": (0.1, 0.8, 0.15), "blue": (0.1, 0.2, 0.95),
           "yellow": (0.95, 0.9, 0.1)}
#: Quadrant names, index = 2 * (row half) + (column half).
POSITIONS = ["top left", "top right", "bottom left", "bottom right"]
SIZES = {"small": (6.5, 8.5), "large": (11.0, 13.0)}
#: The caption vocabulary of the bag-of-words text tower.
VOCABULARY = (["a", "and", "at", "the"] + list(SIZES) + list(COLOURS) + list(CLASS_NAMES)
              + ["top", "bottom", "left", "right"])
_COLOUR_NAMES = list(COLOURS)
_SIZE_NAMES = list(SIZES)
_SPLITS = {"train": 10, "test": 11}

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_PATH = WEIGHTS_DIR / "image_text.pt"
INFO_PATH = WEIGHTS_DIR / "image_text.json"


@dataclass
class ImageTextData:
    """A batch of the image–text world.

    Attributes
    ----------
    images : Tensor, (n, 3, 64, 64) float32 in [0, 1]
    captions : list of str
        The full caption of each image (both objects, every attribute).
    shape, colour, position, size : ndarray of int, (n, 2)
        Per object: index into ``CLASS_NAMES``, ``COLOURS``, ``POSITIONS``, ``SIZES``.
    masks : Tensor, (n, 2, 64, 64) bool
        The pixels of each object.
    """

    images: torch.Tensor
    captions: list
    shape: np.ndarray
    colour: np.ndarray
    position: np.ndarray
    size: np.ndarray
    masks: torch.Tensor
    params: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index) -> "ImageTextData":
        if isinstance(index, (int, np.integer)):
            index = slice(int(index), int(index) + 1 if int(index) != -1 else None)
        idx = np.arange(len(self))[index]
        t = torch.as_tensor(idx)
        return ImageTextData(self.images[t], [self.captions[i] for i in idx], self.shape[idx], self.colour[idx],
                             self.position[idx], self.size[idx], self.masks[t],
                             {k: v[idx] for k, v in self.params.items()})

    def object_of(self, i: int, query: str) -> int | None:
        """Which object (0 or 1) of image ``i`` the phrase ``query`` describes, ``None`` if not exactly one."""
        hits = [k for k in range(2) if _object_matches(self, i, k, _parse(query))]
        return hits[0] if len(hits) == 1 else None


def phrase(shape: int, colour: int | None = None, position: int | None = None, size: int | None = None,
           article: bool = True) -> str:
    """A phrase for one object, e.g. ``phrase(0, 0, 1, 0) == "a small red circle at the top right"``."""
    words = (["a"] if article else []) + ([_SIZE_NAMES[size]] if size is not None else [])
    words += ([_COLOUR_NAMES[colour]] if colour is not None else []) + [CLASS_NAMES[shape]]
    if position is not None:
        words += ["at", "the", POSITIONS[position]]
    return " ".join(words)


def _parse(text: str) -> list[dict]:
    """Structured reading of a caption: one dict of attribute indices per object phrase."""
    out = []
    for part in text.lower().split(" and "):
        w = part.split()
        d: dict = {}
        for name, table in (("size", _SIZE_NAMES), ("colour", _COLOUR_NAMES), ("shape", CLASS_NAMES)):
            found = [table.index(t) for t in w if t in table]
            if found:
                d[name] = found[0]
        v = "top" if "top" in w else "bottom" if "bottom" in w else None
        h = "left" if "left" in w else "right" if "right" in w else None
        if v and h:
            d["position"] = POSITIONS.index(f"{v} {h}")
        out.append(d)
    return out


def _object_matches(data: ImageTextData, i: int, k: int, attrs: list[dict]) -> bool:
    if len(attrs) != 1:
        return False
    table = {"shape": data.shape, "colour": data.colour, "position": data.position, "size": data.size}
    return all(int(table[a][i, k]) == v for a, v in attrs[0].items())


def caption_matches(data: ImageTextData, captions: Sequence[str]) -> np.ndarray:
    """``(len(captions), len(data))`` bool: caption ``c`` is true of image ``j`` (each of its
    object phrases describes a different object of the image)."""
    attrs = [_parse(c) for c in captions]
    vals = np.stack([data.shape, data.colour, data.position, data.size], -1)  # (n, 2, 4)
    names = ["shape", "colour", "position", "size"]
    out = np.zeros((len(captions), len(data)), bool)
    for c, objs in enumerate(attrs):
        fits = []
        for d in objs:  # (n, 2): object k of image j fits the phrase
            ok = np.ones(vals.shape[:2], bool)
            for a, v in d.items():
                ok &= vals[:, :, names.index(a)] == v
            fits.append(ok)
        if len(fits) == 1:
            out[c] = fits[0].any(1)
        elif len(fits) == 2:
            out[c] = (fits[0][:, 0] & fits[1][:, 1]) | (fits[0][:, 1] & fits[1][:, 0])
    return out


def image_text_dataset(n: int, split: str = "train", seed: int = 0) -> ImageTextData:
    """``n`` images of two objects each, with captions and per-object masks.

    The two objects have different shapes, different colours and lie in different quadrants
    (centre within 2 px of the quadrant's centre), so every phrase naming a colour, a shape or a
    position describes at most one object of an image. Same ``(n, split, seed)``, same data.
    """
    check_world_arguments(n, split, seed, _SPLITS, positive=True)
    n = int(n)
    gen = np.random.default_rng(np.random.SeedSequence([int(seed), _SPLITS[split]]))
    shape = np.stack([gen.permutation(4)[:2] for _ in range(n)])
    colour = np.stack([gen.permutation(4)[:2] for _ in range(n)])
    position = np.stack([gen.permutation(4)[:2] for _ in range(n)])
    size = gen.integers(0, 2, (n, 2))
    lo = np.array([SIZES[s][0] for s in _SIZE_NAMES])[size]
    hi = np.array([SIZES[s][1] for s in _SIZE_NAMES])[size]
    radius = lo + gen.random((n, 2)) * (hi - lo)
    angle = gen.uniform(-np.pi / 8, np.pi / 8, (n, 2))
    q = IMAGE_SIZE // 2
    centre = np.stack([(position // 2) * q + q / 2 - 0.5, (position % 2) * q + q / 2 - 0.5], -1)
    centre = centre + gen.uniform(-2.0, 2.0, (n, 2, 2))
    bg, _, _ = _backgrounds(gen, n)
    masks = render_masks(shape.reshape(-1), centre.reshape(-1, 2), radius.reshape(-1),
                         angle.reshape(-1)).reshape(n, 2, IMAGE_SIZE, IMAGE_SIZE)
    rgb = np.asarray([COLOURS[c] for c in _COLOUR_NAMES], np.float32)[colour]  # (n, 2, 3)
    img = bg
    for k in range(2):
        img = np.where(masks[:, k, None], rgb[:, k, :, None, None], img)
    captions = [" and ".join(phrase(shape[i, k], colour[i, k], position[i, k], size[i, k]) for k in range(2))
                for i in range(n)]
    return ImageTextData(torch.from_numpy(np.ascontiguousarray(img, np.float32)), captions, shape, colour,
                         position, size, torch.from_numpy(masks),
                         {"centre": centre, "radius": radius, "angle": angle})


# ---------------------------------------------------------------------------- the dual encoder
class BagOfWords(nn.Module):
    """Text tower: ``embedding = W @ counts + b``, counts of the caption words over ``VOCABULARY``.

    Its input is the count vector ``(batch, len(VOCABULARY))`` (:meth:`ImageTextModel.tokenize`),
    so every attribution method explains the words of a caption as features.
    """

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(vocab_size, dim)

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return self.proj(counts)


class ImageTower(nn.Module):
    """conv(3→16, stride 2)-relu, conv(16→32, stride 2)-relu, conv(32→64, stride 2)-relu,
    conv(64→64)-relu (its output ``features.7``, 8×8, is the Grad-CAM layer), 4×4 average pool, linear to
    ``dim``."""

    cam_layer = "features.7"

    def __init__(self, dim: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(64 * 16, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x - 0.5)).flatten(1))


class ImageTextModel(nn.Module):
    """A CLIP-like dual encoder of the image–text world.

    Attributes
    ----------
    image_encoder : ImageTower
        ``(batch, 3, 64, 64) -> (batch, dim)``; explain it with a similarity target.
    text_encoder : BagOfWords
        ``(batch, len(VOCABULARY)) counts -> (batch, dim)``.
    logit_scale : Parameter
        Log of the inverse temperature of the contrastive loss.
    """

    def __init__(self, dim: int = 32):
        super().__init__()
        self.image_encoder = ImageTower(dim)
        self.text_encoder = BagOfWords(len(VOCABULARY), dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))
        self.vocabulary = list(VOCABULARY)

    def tokenize(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Word counts ``(len(texts), len(VOCABULARY))``; an unknown word is a ValueError naming it."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"texts must be a string or a list of strings; got {type(texts).__name__}")
        index = {w: i for i, w in enumerate(self.vocabulary)}
        out = torch.zeros(len(texts), len(self.vocabulary))
        for r, t in enumerate(texts):
            for w in t.lower().split():
                if w not in index:
                    raise ValueError(f"texts: {w!r} is not in the caption vocabulary ({', '.join(self.vocabulary)})")
                out[r, index[w]] += 1
        return out.to(self.logit_scale.device)

    def encode_text(self, texts: Sequence[str] | str) -> torch.Tensor:
        """Text embeddings ``(len(texts), dim)`` (not normalised)."""
        return self.text_encoder(self.tokenize(texts))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``(batch, dim)`` (not normalised)."""
        return self.image_encoder(images)

    @torch.no_grad()
    def similarity(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarities ``(len(images), len(texts))``."""
        a = nn.functional.normalize(self.encode_image(images), dim=1)
        b = nn.functional.normalize(self.encode_text(texts), dim=1)
        return a @ b.T

    def forward(self, images: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Scaled similarity logits ``(batch_images, batch_texts)``."""
        a = nn.functional.normalize(self.image_encoder(images), dim=1)
        b = nn.functional.normalize(self.text_encoder(counts), dim=1)
        return self.logit_scale.exp() * a @ b.T


def image_text_model_info() -> dict:
    """The training record shipped beside the weights."""
    return read_record(INFO_PATH, "lumos train-demo --image-text")


def load_image_text_model(device: str | torch.device = "cpu") -> ImageTextModel:
    """The trained :class:`ImageTextModel` shipped with lumos (eval mode), read with ``weights_only=True``."""
    state = read_state(WEIGHTS_PATH, "image–text", "lumos train-demo --image-text", device)
    model = ImageTextModel(dim=int(state["text_encoder.proj.weight"].shape[0]))
    model.load_state_dict(state)
    return model.to(device).eval()


# ---------------------------------------------------------------------------- training
#: The settings the shipped weights were trained with.
DEFAULTS = dict(seed=0, epochs=15, n_train=3000, n_test=500, batch_size=64, lr=3e-3, dim=32)


def _training_captions(data: ImageTextData, idx: np.ndarray, gen: np.random.Generator) -> list[str]:
    """One random caption per image: the full caption, one object's phrase with a random subset of
    its attributes (shape always), or both objects' phrases."""
    out = []
    for i in idx:
        parts = []
        kind = gen.integers(0, 3)
        objs = [gen.integers(0, 2)] if kind < 2 else [0, 1]
        for k in objs:
            keep = gen.random(3) < (1.0 if kind == 0 else 0.5)
            parts.append(phrase(data.shape[i, k], data.colour[i, k] if keep[0] else None,
                                data.position[i, k] if keep[1] else None, data.size[i, k] if keep[2] else None))
        out.append(" and ".join(parts))
    return out


def _crop_views(data: ImageTextData, images: torch.Tensor, idx: np.ndarray, captions: list[str],
                gen: np.random.Generator, p: float = 0.5) -> tuple[torch.Tensor, list[str]]:
    """Random resized crops, as CLIP is trained with: with probability ``p`` an image is replaced by
    a square crop (side 0.4-0.8 of the image) holding one whole object, resized to 64×64, and its
    caption by the "colour shape" phrases of the objects the crop holds whole (no position or size
    words: a crop moves and magnifies its objects). An encoder trained so scores crops sensibly,
    which crop-similarity saliency relies on."""
    out = images[torch.as_tensor(idx)].clone()
    caps = list(captions)
    L = IMAGE_SIZE
    for r, i in enumerate(idx):
        if gen.random() >= p:
            continue
        k = int(gen.integers(0, 2))
        rows, cols = np.nonzero(data.masks[i, k].numpy())
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        side = max(int(gen.integers(int(0.4 * L), int(0.8 * L) + 1)), r1 - r0, c1 - c0)
        top = int(gen.integers(max(0, r1 - side), min(r0, L - side) + 1))
        left = int(gen.integers(max(0, c1 - side), min(c0, L - side) + 1))
        crop = images[int(i), :, top:top + side, left:left + side][None]
        out[r] = nn.functional.interpolate(crop, size=(L, L), mode="bilinear", align_corners=False)[0]
        inside = [j for j in range(2)
                  if bool(data.masks[i, j, top:top + side, left:left + side].sum() == data.masks[i, j].sum())]
        caps[r] = " and ".join(phrase(data.shape[i, j], data.colour[i, j]) for j in inside)
    return out, caps


def _contrastive_loss(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) with soft targets: each row's target spreads over the items its
    caption is true of (the partner and any other image the caption also describes). With unique
    captions this is CLIP's loss exactly."""
    li = -(match / match.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    lt = -(match.T / match.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
    return (li + lt) / 2


@torch.no_grad()
def evaluate_retrieval(model: ImageTextModel, n: int = 500, seed: int = 0) -> dict:
    """Retrieval accuracy on ``n`` test images with their full captions, and phrase accuracy.

    ``image_to_text_top1``: the image's own caption scores highest among the ``n`` captions;
    ``text_to_image_top1`` the other way; ``image_to_text_top5``; ``phrase_accuracy``: for a
    "colour shape" phrase of one object (each image, each object), the image scores it higher
    than a phrase of a colour and a shape that are not in the image; ``binding_accuracy``: higher
    than the same shape with the colour of the image's other object (a bag-of-words text tower
    gives both phrases of an image the same words in total, so this stays near chance, 0.5).
    """
    was = model.training
    model.eval()
    try:
        data = image_text_dataset(n, split="test", seed=seed)
        s = model.similarity(data.images, data.captions)
        eye = torch.arange(n)
        res = {"image_to_text_top1": (s.argmax(1) == eye).float().mean().item(),
               "text_to_image_top1": (s.argmax(0) == eye).float().mean().item(),
               "image_to_text_top5": (s.topk(5, 1).indices == eye[:, None]).any(1).float().mean().item()}
        # one object's "colour shape" against a phrase whose colour and shape the image lacks
        # (phrase_accuracy) and against the same shape with the colour of the image's other
        # object (binding_accuracy: a bag-of-words text tower cannot bind colour to shape)
        good, absent, swapped = [], [], []
        for k in range(2):
            for i in range(n):
                good.append(phrase(data.shape[i, k], data.colour[i, k], article=False))
                absent.append(phrase(int(np.setdiff1d(np.arange(4), data.shape[i])[0]),
                                     int(np.setdiff1d(np.arange(4), data.colour[i])[0]), article=False))
                swapped.append(phrase(data.shape[i, k], data.colour[i, 1 - k], article=False))
        rows, cols = torch.arange(2 * n) % n, torch.arange(2 * n)
        sg = model.similarity(data.images, good)[rows, cols]
        res["phrase_accuracy"] = (sg > model.similarity(data.images, absent)[rows, cols]).float().mean().item()
        res["binding_accuracy"] = (sg > model.similarity(data.images, swapped)[rows, cols]).float().mean().item()
        res["n_test"] = n
    finally:
        model.train(was)
    return res


def train_image_text_model(out: str | Path | None = None, seed: int = DEFAULTS["seed"],
                           epochs: int = DEFAULTS["epochs"], n_train: int = DEFAULTS["n_train"],
                           progress: bool | None = True, *, n_test: int = DEFAULTS["n_test"],
                           batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
                           dim: int = DEFAULTS["dim"], threads: int | None = None) -> tuple[ImageTextModel, dict]:
    """Train :class:`ImageTextModel` contrastively on the image–text world (``lumos train-demo --image-text``).

    Parameters
    ----------
    out : str, Path or None
        Folder for ``image_text.pt`` / ``image_text.json``; ``"package"`` replaces the shipped
        weights; ``None`` writes nothing.
    seed : int, default 0
        Seeds the data, the initialisation, the batch order and the training captions.
    epochs, n_train, n_test, batch_size, lr, dim
        Training settings (Adam, one-cycle schedule); ``dim`` the embedding size.
    threads : int or None
        Torch CPU threads during training (restored afterwards).

    Returns
    -------
    model : ImageTextModel (eval mode); report : dict (settings, retrieval accuracies, time).
    """
    from ..core.execution import progress_bar

    for name, val in (("seed", seed), ("epochs", epochs), ("n_train", n_train), ("n_test", n_test),
                      ("batch_size", batch_size), ("dim", dim)):
        if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < (0 if name == "seed" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'seed' else 'positive'} int; got {val!r}")
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        t0 = time.perf_counter()
        data = image_text_dataset(int(n_train), split="train", seed=int(seed))
        g = torch.Generator().manual_seed(int(seed))
        gen = np.random.default_rng(int(seed))
        model = ImageTextModel(dim=int(dim))
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu", generator=g)
                nn.init.zeros_(m.bias)
        # channels-last convolutions train faster on CPU; the saved state dict is made contiguous
        model = model.to(memory_format=torch.channels_last)
        images = data.images.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps = -(-int(n_train) // int(batch_size))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=int(epochs) * steps, pct_start=0.15)
        history = []
        model.train()
        with progress_bar(int(epochs), "train-demo --image-text", progress, unit="epoch") as bar:
            for epoch in range(int(epochs)):
                order = torch.randperm(int(n_train), generator=g).numpy()
                total = 0.0
                for i in range(0, int(n_train), int(batch_size)):
                    idx = order[i:i + int(batch_size)]
                    caps = _training_captions(data, idx, gen)
                    views, caps = _crop_views(data, images, idx, caps, gen)
                    match = torch.as_tensor(caption_matches(data[idx], caps), dtype=torch.float32).T  # images × texts
                    match.fill_diagonal_(1.0)
                    logits = model(views.contiguous(memory_format=torch.channels_last), model.tokenize(caps))
                    loss = _contrastive_loss(logits, match)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    with torch.no_grad():
                        model.logit_scale.clamp_(0.0, float(np.log(100.0)))
                    total += loss.item() * len(idx)
                history.append({"epoch": epoch + 1, "loss": total / int(n_train)})
                bar.set_postfix(loss=f"{total / int(n_train):.3f}")
                bar.update(1)
        train_time = time.perf_counter() - t0
        model = model.to(memory_format=torch.contiguous_format)
        model.eval()
        metrics = evaluate_retrieval(model, n=int(n_test), seed=int(seed))
        report = {"seed": int(seed), "epochs": int(epochs), "n_train": int(n_train), "batch_size": int(batch_size),
                  "lr": float(lr), "dim": int(dim), "loss": "symmetric InfoNCE (CLIP), soft targets for captions "
                  "true of several images of the batch", **metrics, "train_time_s": round(train_time, 2),
                  "threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__,
                  "python": platform.python_version(), "history": history}
    finally:
        torch.set_num_threads(old)
    save_weights(model, report, out, WEIGHTS_PATH, INFO_PATH)
    return model, report
