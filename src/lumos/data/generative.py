"""Generative models of the shapes world: a small conditional VAE, and a hand-written generator.

:class:`ShapesVAE` is a conditional variational autoencoder (Kingma & Welling, *Auto-Encoding
Variational Bayes*, ICLR 2014; conditional form: Sohn et al., NeurIPS 2015) of the shapes world's
silhouettes at 32×32 (the evidence masks average-pooled 2×2, one channel: :func:`vae_images`):
position, size, rotation and class of the shape, without its colour and the striped background.
A minute of CPU training is not enough for a small VAE to draw the coloured, textured images
sharply (measured: its samples of three classes out of four were recognised by the demo
classifier less than 11% of the time); the silhouettes it draws are. Its decoder draws a template
and warps it by an affine pose (scale, rotation, shift) read from the latent and the class, so
rotated thin shapes (the cross's arms) come out sharp. :func:`silhouette_rgb` turns
them into the classifier's input (white shape on grey). The condition is the shape class as a
one-hot vector; the latent has ``latent_dim`` dimensions (8 shipped). Its generator is
``vae.decode(z, c)``: ``z`` of shape ``(batch, latent_dim)``, ``c`` class indices or a float
``(batch, 4)`` condition (a float condition can be attributed to, like the latent).
:func:`train_shapes_vae` trains it reproducibly (``lumos train-demo --vae``, about 160 CPU
seconds on one thread); :func:`load_shapes_vae` reads the shipped weights with ``weights_only=True``.

:class:`ToyShapeGenerator` is a generator with a known latent→property map, written by hand for
tests: latent dimension 0 moves the shape horizontally, dimension 1 sets its size, further dimensions
do nothing; the condition blends a disc and a square. An attribution
of "the mass in the right half" must therefore go to dimension 0, and nothing to dimensions ≥ 3.

>>> from lumos.data.generative import load_shapes_vae
>>> vae = load_shapes_vae()
>>> images = vae.sample([0, 1, 2, 3], seed=0)      # silhouettes of a circle, square, triangle, cross
"""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .shapes import CLASS_NAMES, shapes_dataset
from .models import read_record, read_state
from .train import save_weights

__all__ = ["ShapesVAE", "ToyShapeGenerator", "train_shapes_vae", "load_shapes_vae", "shapes_vae_info",
           "vae_images", "silhouette_rgb", "SilhouetteRGB", "condition_vector", "VAE_SIZE", "WEIGHTS_PATH", "INFO_PATH", "DEFAULTS"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_PATH = WEIGHTS_DIR / "shapes_vae.pt"
INFO_PATH = WEIGHTS_DIR / "shapes_vae.json"
#: Side of the VAE's images (the shapes world's 64 pooled 2×2).
VAE_SIZE = 32
#: The settings the shipped weights were trained with.
DEFAULTS = dict(seed=0, steps=6000, n_train=6000, batch_size=64, lr=2e-3, latent_dim=8, beta=1.0)


def condition_vector(c: Any, n: int, n_classes: int = len(CLASS_NAMES), name: str = "c") -> torch.Tensor:
    """A float ``(n, n_classes)`` condition from class indices (int or one per sample) or a float matrix.

    A float tensor of shape ``(n, n_classes)`` is returned as is (so gradients flow through it);
    class indices become one-hot rows. ValueError naming ``name`` otherwise.
    """
    if isinstance(c, torch.Tensor) and c.is_floating_point():
        if c.dim() != 2 or c.shape != (n, n_classes):
            raise ValueError(f"{name}: a float condition must have shape ({n}, {n_classes}); got {tuple(c.shape)}")
        return c
    if isinstance(c, (bool, np.bool_)):
        raise ValueError(f"{name} must be class indices or a float (batch, {n_classes}) condition, not a bool")
    arr = np.asarray(c.cpu() if isinstance(c, torch.Tensor) else c)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.ndim == 2 and np.issubdtype(arr.dtype, np.floating):
        return condition_vector(torch.as_tensor(arr, dtype=torch.float32), n, n_classes, name)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be a class index, one index per sample, or a float (batch, {n_classes}) "
                         f"condition; got an array of shape {arr.shape} and dtype {arr.dtype}")
    if len(arr) != n:
        raise ValueError(f"{name} has {len(arr)} class indices but there are {n} latent codes")
    if np.any((arr < 0) | (arr >= n_classes)):
        raise ValueError(f"{name}: class indices must lie in [0, {n_classes}); got {sorted(set(arr.tolist()))}")
    return F.one_hot(torch.as_tensor(arr, dtype=torch.long), n_classes).float()


def _check_z(z: Any, latent_dim: int) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32)
    if z.dim() != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"z must have shape (batch, {latent_dim}); got {tuple(z.shape)}")
    return z


class ShapesVAE(nn.Module):
    """Conditional VAE of 32×32 shapes-world images.

    Encoder: three stride-2 convolutions (channels→16→32→64, 32→4 pixels), the flattened map and
    the one-hot condition into a 64-unit layer, then the mean and log-variance of ``q(z | x, c)``.
    Decoder (the generator): ``[z, c]`` → 64 → 64·4·4 → three transposed convolutions draw a
    *template* (logits); a pose head ``[z, c]`` → 64 → 4 gives its log-scale, angle and shift, and
    the template is warped by that affine map (a spatial transformer: Jaderberg et al., *Spatial
    Transformer Networks*, NeurIPS 2015; bilinear sampling) → sigmoid. The pose head starts at
    the identity. Without it (the first shipped version) the decoder had to draw every rotation of
    a cross's thin arms itself and drew blobs: 3.4% of its crosses were recognised, 85.4% with it
    (``docs/multimodal.md``).

    Parameters
    ----------
    latent_dim : int, default 8
    n_classes : int, default 4
    channels : int, default 1
        Image channels (1: silhouettes).
    """

    class_names = list(CLASS_NAMES)

    def __init__(self, latent_dim: int = DEFAULTS["latent_dim"], n_classes: int = len(CLASS_NAMES),
                 channels: int = 1):
        super().__init__()
        for name, v in (("latent_dim", latent_dim), ("n_classes", n_classes), ("channels", channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        self.latent_dim, self.n_classes, self.channels = latent_dim, n_classes, channels
        # the generator's layers first: lumos reads a module's first layer to check input shapes
        self.dec_fc = nn.Sequential(nn.Linear(latent_dim + n_classes, 64), nn.ReLU(),
                                    nn.Linear(64, 64 * 16), nn.ReLU())
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(16, channels, 4, 2, 1))
        # the pose head: log-scale, angle and shift of the template; starts at the identity
        self.pose = nn.Sequential(nn.Linear(latent_dim + n_classes, 64), nn.ReLU(), nn.Linear(64, 4))
        nn.init.zeros_(self.pose[2].weight)
        nn.init.zeros_(self.pose[2].bias)
        self.enc = nn.Sequential(
            nn.Conv2d(channels, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(), nn.Flatten())
        self.enc_fc = nn.Sequential(nn.Linear(64 * 16 + n_classes, 64), nn.ReLU())
        self.mu = nn.Linear(64, latent_dim)
        self.logvar = nn.Linear(64, latent_dim)

    def encode(self, x: torch.Tensor, c: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``q(z | x, c)``; ``x`` of shape ``(batch, channels, 32, 32)`` in [0, 1]."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.channels, VAE_SIZE, VAE_SIZE):
            raise ValueError(f"x must have shape (batch, {self.channels}, {VAE_SIZE}, {VAE_SIZE}); "
                             f"got {tuple(x.shape)}")
        cv = condition_vector(c, len(x), self.n_classes).to(x)
        h = self.enc_fc(torch.cat([self.enc(x), cv], 1))
        return self.mu(h), self.logvar(h)

    def decode_logits(self, z: Any, c: Any) -> torch.Tensor:
        """The generator's logits ``(batch, channels, 32, 32)``: the template drawn by the transposed
        convolutions, warped by the affine pose (scale, rotation, shift) the pose head reads from ``[z, c]``."""
        z = _check_z(z, self.latent_dim)
        cv = condition_vector(c, len(z), self.n_classes).to(z)
        zc = torch.cat([z, cv], 1)
        template = self.dec(self.dec_fc(zc).reshape(len(z), 64, 4, 4))
        p = self.pose(zc)
        scale, angle, tx, ty = torch.exp(p[:, 0]), p[:, 1], p[:, 2], p[:, 3]
        cos, sin = torch.cos(angle), torch.sin(angle)
        # output pixel -> template position: rotate by -angle and shrink by scale about the shift
        theta = torch.stack([torch.stack([cos / scale, sin / scale, -(cos * tx + sin * ty) / scale], 1),
                             torch.stack([-sin / scale, cos / scale, (sin * tx - cos * ty) / scale], 1)], 1)
        grid = F.affine_grid(theta, [len(z), self.channels, VAE_SIZE, VAE_SIZE], align_corners=False)
        return F.grid_sample(template, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def decode(self, z: Any, c: Any) -> torch.Tensor:
        """The generator: images ``(batch, channels, 32, 32)`` in (0, 1) for latent ``z`` and condition ``c``."""
        return torch.sigmoid(self.decode_logits(z, c))

    def forward(self, z: torch.Tensor, c: Any) -> torch.Tensor:
        """Same as :meth:`decode`: a ``ShapesVAE`` is called as the generator ``g(z, c)``."""
        return self.decode(z, c)

    @torch.no_grad()
    def sample(self, c: Sequence[int] | int, seed: int = 0, n: int | None = None) -> torch.Tensor:
        """Images generated from ``z ~ N(0, I)`` drawn with ``seed`` for class indices ``c``.

        ``c``: one index per image, or one index and ``n`` images. The model is left as found.
        """
        arr = np.atleast_1d(np.asarray(c))
        if n is not None:
            if arr.size != 1:
                raise ValueError("n: give one class index with n, or one index per image without it")
            arr = np.full(int(n), int(arr[0]))
        g = torch.Generator().manual_seed(int(seed))
        z = torch.randn(len(arr), self.latent_dim, generator=g)
        was = self.training
        self.eval()
        try:
            return self.decode(z, arr.astype(np.int64))
        finally:
            self.train(was)


class ToyShapeGenerator(nn.Module):
    """A hand-written, differentiable generator whose latent→property map is known by construction.

    The image is one white shape on black, ``(batch, 1, size, size)``:

    - ``z[:, 0]`` moves the shape horizontally: centre column ``size/2 + z0 * size/4`` (row fixed
      at the middle);
    - ``z[:, 1]`` sets its size: half-extent ``size * (0.15 + 0.04 * z1)`` in both directions;
    - further dimensions are ignored (their attribution must be zero);
    - the condition ``c`` (``(batch, 2)``: disc, square) blends the distance functions of a disc
      and a square, so a one-hot condition draws one of them.

    Edges are soft (a sigmoid of the signed distance over ``softness`` pixels), so gradients exist.
    There are no parameters; the module is for tests of latent attribution.
    """

    n_classes = 2
    class_names = ["disc", "square"]

    def __init__(self, latent_dim: int = 4, size: int = 32, softness: float = 1.0):
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 2:
            raise ValueError(f"latent_dim must be an int >= 2; got {latent_dim!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 8:
            raise ValueError(f"size must be an int >= 8; got {size!r}")
        self.latent_dim, self.size, self.softness = latent_dim, size, float(softness)
        grid = torch.arange(size, dtype=torch.float32) + 0.5
        self.register_buffer("cols", grid[None, None, :].clone(), persistent=False)
        self.register_buffer("rows", grid[None, :, None].clone(), persistent=False)

    def forward(self, z: Any, c: Any) -> torch.Tensor:
        z = _check_z(z, self.latent_dim)
        cv = condition_vector(c, len(z), self.n_classes).to(z)
        s = self.size
        cx = (s / 2 + z[:, 0] * s / 4)[:, None, None]
        half = (s * (0.15 + 0.04 * z[:, 1]))[:, None, None]
        dx = (self.cols.to(z) - cx) / half
        dy = (self.rows.to(z) - s / 2) / half
        disc = torch.sqrt(dx ** 2 + dy ** 2 + 1e-12)
        square = torch.maximum(dx.abs(), dy.abs())
        dist = cv[:, 0, None, None] * disc + cv[:, 1, None, None] * square
        return torch.sigmoid((1.0 - dist) * half / self.softness)[:, None]


def vae_images(masks: torch.Tensor) -> torch.Tensor:
    """The VAE's training images: the shapes' evidence masks ``(batch, 64, 64)`` as silhouettes
    ``(batch, 1, 32, 32)`` in [0, 1] (average-pooled 2×2)."""
    return F.avg_pool2d(masks[:, None].float(), 2)


def silhouette_rgb(x: torch.Tensor) -> torch.Tensor:
    """Silhouettes ``(batch, 1, H, W)`` as RGB images a shapes-world classifier reads: a white shape
    on grey (``0.5 + 0.5 x`` in each channel; differentiable). The shipped ``DemoCNN`` recognises
    the test split's true silhouettes drawn this way 98.8% of the time (400 images, at 64×64)."""
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"x must be silhouettes of shape (batch, 1, H, W); got {tuple(x.shape)}")
    return 0.5 + 0.5 * x.expand(-1, 3, -1, -1)


class SilhouetteRGB(nn.Module):
    """:func:`silhouette_rgb` as a module (a fixed 1×1 convolution, weights 0.5, biases 0.5, no
    trainable parameters): put it before a classifier, e.g. ``ResizedClassifier(cnn,
    transform=SilhouetteRGB())``, so that lumos sees a one-channel model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight.fill_(0.5)
            self.conv.bias.fill_(0.5)
        self.conv.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"x must be silhouettes of shape (batch, 1, H, W); got {tuple(x.shape)}")
        return self.conv(x)


def shapes_vae_info() -> dict:
    """The training record shipped beside the VAE's weights."""
    return read_record(INFO_PATH, "lumos train-demo --vae")


def load_shapes_vae(device: str | torch.device = "cpu") -> ShapesVAE:
    """The trained :class:`ShapesVAE` shipped with lumos (eval mode), read with ``weights_only=True``."""
    state = read_state(WEIGHTS_PATH, "VAE", "lumos train-demo --vae --out package", device)
    info = shapes_vae_info()
    model = ShapesVAE(latent_dim=int(info.get("latent_dim", DEFAULTS["latent_dim"])),
                      channels=int(info.get("channels", 1)))
    model.load_state_dict(state)
    return model.to(device).eval()


def train_shapes_vae(out: str | Path | None = None, seed: int = DEFAULTS["seed"], steps: int = DEFAULTS["steps"],
                     threads: int | None = 1, progress: bool | None = True, *, n_train: int = DEFAULTS["n_train"],
                     batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
                     latent_dim: int = DEFAULTS["latent_dim"], beta: float = DEFAULTS["beta"]
                     ) -> tuple[ShapesVAE, dict]:
    """Train :class:`ShapesVAE` on the clean shapes world (no watermark), reproducibly.

    Loss per image: the binary cross-entropy of the reconstructed silhouette summed over pixels
    (computed on the decoder's logits) plus ``beta`` times the KL divergence of ``q(z | x, c)`` from ``N(0, I)``; Adam with a cosine-annealed
    learning rate. Data, initialisation, batch order and the reparameterisation noise all come
    from ``seed``.

    Parameters
    ----------
    out : str, Path or None, default None
        Folder for ``shapes_vae.pt``/``.json``; ``"package"`` writes the shipped weights; ``None``
        writes nothing.
    seed : int, default 0
    steps : int, default 6000
        Optimiser steps.
    threads : int or None, default 1
        Torch CPU threads during training (restored afterwards); ``None`` keeps the setting. The
        result is bit-for-bit reproducible for the same thread count.
    progress : bool or None, default True
    n_train, batch_size, lr, latent_dim, beta
        Training images, batch size, peak learning rate, latent dimensions, KL weight.

    Returns
    -------
    model : ShapesVAE
        In eval mode.
    report : dict
        Settings, final losses, time, versions.
    """
    from ..core.validation import check_number

    for name, val in (("steps", steps), ("n_train", n_train), ("batch_size", batch_size),
                      ("latent_dim", latent_dim)):
        check_number(val, name, low=1, integer=True)
    check_number(seed, "seed", low=0, integer=True)
    check_number(lr, "lr", low=0, low_open=True)
    check_number(beta, "beta", low=0)
    from ..core.execution import torch_threads

    if threads is not None:
        check_number(threads, "threads", low=1, integer=True)
    with torch_threads(None if threads is None else int(threads)):
        return _train(out, int(seed), int(steps), progress, int(n_train), int(batch_size), float(lr),
                      int(latent_dim), float(beta))


def _train(out, seed, steps, progress, n_train, batch_size, lr, latent_dim, beta):
    from ..core.execution import progress_bar, seeded_global_rng

    t0, cpu0 = time.perf_counter(), time.process_time()
    data = shapes_dataset(n_train, split="train", watermark="none", seed=seed)
    x_all = vae_images(data.masks)
    y_all = data.labels
    # nn's default initialisation draws from the global generator: seeded for the model, the
    # caller's state restored after
    with seeded_global_rng(seed):
        model = ShapesVAE(latent_dim=latent_dim)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    history = []
    model.train()
    order, pos = torch.randperm(n_train, generator=g), 0
    run_rec = run_kl = 0.0
    with progress_bar(steps, "train-demo --vae", progress, unit="step") as bar:
        for step in range(steps):
            if pos + batch_size > n_train:
                order, pos = torch.randperm(n_train, generator=g), 0
            idx = order[pos:pos + batch_size]
            pos += batch_size
            x, y = x_all[idx], y_all[idx]
            mu, logvar = model.encode(x, y)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g)
            rec = F.binary_cross_entropy_with_logits(model.decode_logits(z, y), x, reduction="sum") / len(x)
            kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum() / len(x)
            loss = rec + beta * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            run_rec += rec.item()
            run_kl += kl.item()
            if (step + 1) % 250 == 0 or step + 1 == steps:
                k = (step % 250) + 1
                history.append({"step": step + 1, "reconstruction": run_rec / k, "kl": run_kl / k})
                bar.set_postfix(rec=f"{run_rec / k:.1f}", kl=f"{run_kl / k:.1f}")
                run_rec = run_kl = 0.0
            bar.update(1)
    model.eval()
    report = {
        "seed": seed, "steps": steps, "n_train": n_train, "batch_size": batch_size, "lr": lr,
        "latent_dim": latent_dim, "channels": 1, "beta": beta, "image_size": VAE_SIZE,
        "decoder": "transposed convolutions to a template, warped by an affine pose head (spatial transformer)",
        "loss": "binary cross-entropy on the logits (summed over pixels) + beta * KL",
        "optimizer": "Adam, cosine-annealed", "data": "shapes_dataset(split='train', watermark='none').masks, pooled 2x2 (silhouettes)",
        "train_time_s": round(time.perf_counter() - t0, 2), "train_cpu_time_s": round(time.process_time() - cpu0, 2),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "history": history,
    }
    save_weights(model, report, out, WEIGHTS_PATH, INFO_PATH)
    return model, report
