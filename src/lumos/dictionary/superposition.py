"""The toy model of superposition (Elhage et al., "Toy Models of Superposition", 2022).

``n`` features ``x_i`` are each active with probability ``1 - S`` (the *sparsity* ``S``), then
uniform on ``[0, 1]``, and zero otherwise. A model with ``m < n`` hidden dimensions embeds them,
``h = W x`` (``W`` is ``(m, n)``), and reads them back through a ReLU with the same weights,
``x' = ReLU(Wᵀ W x + b)``. It is trained on the importance-weighted squared error
``Σ_i I_i (x_i - x'_i)²`` with ``I_i = r**i``.

What the trained ``W`` shows, measured per feature ``i``:

* ``‖W_i‖`` (the norm of column ``i``): about 1 when the feature is represented, about 0 when it is
  ignored. A feature counts as represented when ``‖W_i‖ > 0.5`` (:data:`REPRESENTED`).
* the superposition measure ``Σ_{j≠i} (Ŵ_i · W_j)²`` (``Ŵ_i = W_i / ‖W_i‖``): 0 when the feature
  has a dimension of its own, large when other features share its direction.

Dense features (``S = 0``) give what PCA would: the ``m`` most important features get orthogonal,
dedicated directions and the others are ignored. Sparse features are stored in superposition:
more than ``m`` features are represented, sharing directions, and the ReLU (with a negative bias)
filters the interference.

:func:`phase_diagram` reproduces the paper's phase picture for ``n = 2``, ``m = 1``: feature 0 has
importance 1, feature 1 a relative importance ``r``; both have density ``1 - S`` (our choice of axis:
the density of every feature). Each cell is labelled by the fate of feature 1: *ignored* (only
feature 0 is represented), *dedicated* (feature 1 has the dimension, feature 0 is ignored) or
*superposed* (both are represented, antipodally, in the one dimension).

Every instance of a grid trains in one batched pass (instances are an extra axis), from an explicit
seed: the same seed gives the same weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..core.execution import torch_generator
from ..core.validation import check_number
from ..display._common import ShortRepr

__all__ = ["ToyModel", "train_toy_model", "toy_batch", "PhaseDiagram", "phase_diagram", "PHASES",
           "REPRESENTED", "feature_norms", "superposition_measure"]

#: ``‖W_i‖`` above which feature ``i`` counts as represented.
REPRESENTED = 0.5

#: The phases of feature 1 in the ``n = 2, m = 1`` picture, in the order of their codes 0, 1, 2.
PHASES = ("ignored", "dedicated", "superposed")


def feature_norms(W: Any) -> np.ndarray:
    """``‖W_i‖`` per feature: ``W`` is ``(m, n)`` or ``(instances, m, n)``; returns ``(..., n)``."""
    W = np.asarray(W, dtype=np.float64)
    return np.linalg.norm(W, axis=-2)


def superposition_measure(W: Any) -> np.ndarray:
    """``Σ_{j≠i} (Ŵ_i · W_j)²`` per feature ``i`` (``Ŵ_i = W_i / ‖W_i‖``; 0 for a zero column).

    ``W`` is ``(m, n)`` or ``(instances, m, n)``; returns ``(..., n)``.
    """
    W = np.asarray(W, dtype=np.float64)
    norms = np.linalg.norm(W, axis=-2, keepdims=True)
    unit = np.divide(W, norms, out=np.zeros_like(W), where=norms > 0)
    dots = np.swapaxes(unit, -1, -2) @ W  # (..., n, n): Ŵ_i · W_j
    sq = dots ** 2
    return sq.sum(-1) - np.diagonal(sq, axis1=-2, axis2=-1)


@dataclass(repr=False)
class ToyModel(ShortRepr):
    """Trained toy models (one per instance): ``x' = ReLU(Wᵀ W x + b)``.

    Attributes
    ----------
    W : ndarray (instances, m, n)
    b : ndarray (instances, n)
    sparsity : ndarray (instances,)
        ``S``: a feature is zero with probability ``S``.
    importance : ndarray (instances, n)
    loss : ndarray (instances,)
        The importance-weighted loss (mean over a batch of the sum over features) at the end of
        training, on a fresh batch.
    seed, n_steps : int
    """

    W: np.ndarray
    b: np.ndarray
    sparsity: np.ndarray
    importance: np.ndarray
    loss: np.ndarray
    seed: int
    n_steps: int
    params: dict = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return self.W.shape[-1]

    @property
    def n_hidden(self) -> int:
        return self.W.shape[-2]

    @property
    def norms(self) -> np.ndarray:
        """``(instances, n)``: ``‖W_i‖``."""
        return feature_norms(self.W)

    @property
    def superposition(self) -> np.ndarray:
        """``(instances, n)``: ``Σ_{j≠i} (Ŵ_i · W_j)²``."""
        return superposition_measure(self.W)

    def represented(self, threshold: float = REPRESENTED) -> np.ndarray:
        """``(instances, n)`` bool: ``‖W_i‖ > threshold``."""
        return self.norms > threshold

    def n_represented(self, threshold: float = REPRESENTED) -> np.ndarray:
        """``(instances,)``: how many features are represented (more than ``m``: superposition)."""
        return self.represented(threshold).sum(-1)

    def forward(self, x: Any, instance: int = 0) -> np.ndarray:
        """``ReLU(Wᵀ W x + b)`` of instance ``instance`` on rows ``x`` ``(batch, n)``."""
        W, b = self.W[instance], self.b[instance]
        x = np.asarray(x, dtype=np.float64)
        return np.maximum(x @ W.T @ W + b, 0.0)

    def plot(self, instance: int = 0, axes=None):
        """The paper's two panels for one instance: ``WᵀW`` with the bias beside it, and ``‖W_i‖``
        per feature coloured by the superposition measure. Returns the two axes."""
        import matplotlib.pyplot as plt
        from matplotlib import colormaps
        from matplotlib.colors import Normalize

        if axes is None:
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [1.1, 1]},
                                     layout="constrained")
        ax0, ax1 = axes
        n = self.n_features
        gram = self.W[instance].T @ self.W[instance]
        lim = max(float(np.abs(gram).max()), float(np.abs(self.b[instance]).max()), 1e-9)
        im = ax0.imshow(np.c_[gram, np.full(n, np.nan), self.b[instance]], cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax0.set_xticks(list(range(n)) + [n + 1], [str(i) for i in range(n)] + ["b"], fontsize=8)
        ax0.set_yticks(range(n), [str(i) for i in range(n)], fontsize=8)
        ax0.set_xlabel("feature j (and the bias b)")
        ax0.set_ylabel("feature i")
        ax0.set_title("WᵀW and b", fontsize=10)
        ax0.figure.colorbar(im, ax=ax0, shrink=0.8, label="weight")
        sup = self.superposition[instance]
        norm = Normalize(0.0, max(1.0, float(sup.max())))
        cmap = colormaps["viridis"]
        ax1.barh(range(n), self.norms[instance], color=cmap(norm(sup)))
        ax1.axvline(REPRESENTED, color="0.4", lw=0.8, ls="--")
        ax1.set_yticks(range(n), [f"{i} (I={self.importance[instance, i]:.2g})" for i in range(n)], fontsize=8)
        ax1.invert_yaxis()
        ax1.set_xlabel("‖W_i‖ (dashed: represented above 0.5)")
        ax1.set_title(f"S = {self.sparsity[instance]:.3g}: {int(self.n_represented()[instance])} of {n} "
                      f"features in {self.n_hidden} dimensions", fontsize=10)
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        ax1.figure.colorbar(sm, ax=ax1, shrink=0.8, label="Σ_j≠i (Ŵ_i·W_j)²  (superposition)")
        return ax0, ax1


def toy_batch(n_rows: int, sparsity: Any, n_features: int, generator: torch.Generator,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sparse feature vectors ``(instances, n_rows, n_features)``: each entry uniform on ``[0, 1]``
    with probability ``1 - S`` of its instance, else 0."""
    s = torch.as_tensor(np.asarray(sparsity, dtype=np.float64), dtype=dtype).reshape(-1, 1, 1)
    k = s.shape[0]
    values = torch.rand(k, n_rows, n_features, generator=generator, dtype=dtype)
    on = torch.rand(k, n_rows, n_features, generator=generator, dtype=dtype) >= s
    return values * on


def _importance(importance: Any, n_features: int, k: int) -> np.ndarray:
    if np.isscalar(importance):
        r = check_number(importance, "importance", low=0, low_open=True)
        return np.tile(r ** np.arange(n_features, dtype=np.float64), (k, 1))
    imp = np.asarray(importance, dtype=np.float64)
    if imp.shape == (n_features,):
        imp = np.tile(imp, (k, 1))
    if imp.shape != (k, n_features):
        raise ValueError(f"importance must be a ratio r (I_i = r**i), one value per feature ({n_features},) "
                         f"or per instance and feature ({k}, {n_features}); got shape {imp.shape}")
    if not np.all(np.isfinite(imp)) or np.any(imp < 0):
        raise ValueError("importance: values must be finite and non-negative")
    return imp


def train_toy_model(n_features: int = 5, n_hidden: int = 2, sparsity: float | Sequence[float] = 0.0,
                    importance: float | Sequence = 0.9, *, n_steps: int = 3000, batch_size: int = 1024,
                    lr: float = 1e-2, n_init: int = 1, seed: int = 0) -> ToyModel:
    """Train toy models of superposition, one per sparsity (and importance) in one batched pass.

    Parameters
    ----------
    n_features, n_hidden : int, default 5, 2
        ``n`` features in ``m`` hidden dimensions.
    sparsity : float or sequence of float, default 0.0
        ``S`` in ``[0, 1)``: one instance per value.
    importance : float, (n,) or (instances, n), default 0.9
        A ratio ``r`` gives ``I_i = r**i``; or the importances themselves.
    n_steps : int, default 3000
        Adam steps, each on a fresh batch.
    batch_size : int, default 1024
    lr : float, default 1e-2
        Adam's learning rate.
    n_init : int, default 1
        Initialisations trained per instance; the one with the lowest final loss is kept (guards
        against the rare local minimum).
    seed : int, default 0
        Seeds the initialisation (Xavier normal ``W``, zero ``b``) and the data.

    Returns
    -------
    ToyModel
    """
    n = int(check_number(n_features, "n_features", low=1, integer=True))
    m = int(check_number(n_hidden, "n_hidden", low=1, integer=True))
    n_steps = int(check_number(n_steps, "n_steps", low=1, integer=True))
    batch_size = int(check_number(batch_size, "batch_size", low=1, integer=True))
    n_init = int(check_number(n_init, "n_init", low=1, integer=True))
    lr = check_number(lr, "lr", low=0, low_open=True)
    seed = int(check_number(seed, "seed", integer=True))
    s = np.atleast_1d(np.asarray(sparsity, dtype=np.float64))
    if s.ndim != 1 or not np.all((s >= 0) & (s < 1)):
        raise ValueError(f"sparsity must be a number or a sequence of numbers in [0, 1); got {sparsity!r}")
    imp = _importance(importance, n, len(s))
    k = len(s)
    # every initialisation is one more instance
    s_all, imp_all = np.repeat(s, n_init), np.repeat(imp, n_init, axis=0)
    g = torch_generator(seed)
    with torch.inference_mode(False), torch.enable_grad():
        std = (2.0 / (m + n)) ** 0.5
        W = (torch.randn(k * n_init, m, n, generator=g) * std).requires_grad_()
        b = torch.zeros(k * n_init, n, requires_grad=True)
        I = torch.as_tensor(imp_all, dtype=torch.float32)[:, None, :]
        opt = torch.optim.Adam([W, b], lr=lr)

        def loss_of(x):
            out = torch.relu(torch.bmm(x, W.transpose(1, 2) @ W) + b[:, None, :])  # x Wᵀ W + b
            return (I * (x - out) ** 2).sum(-1).mean(-1)  # (instances,)

        for _ in range(n_steps):
            x = toy_batch(batch_size, s_all, n, g)
            loss = loss_of(x)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
        with torch.no_grad():
            final = loss_of(toy_batch(max(batch_size, 4096), s_all, n, g)).numpy().astype(np.float64)
    best = final.reshape(k, n_init).argmin(1) + np.arange(k) * n_init
    return ToyModel(W=W.detach().numpy().astype(np.float64)[best], b=b.detach().numpy().astype(np.float64)[best],
                    sparsity=s, importance=imp, loss=final[best], seed=seed, n_steps=n_steps,
                    params={"n_features": n, "n_hidden": m, "batch_size": batch_size, "lr": lr, "n_init": n_init})


@dataclass(repr=False)
class PhaseDiagram(ShortRepr):
    """The ``n = 2, m = 1`` phase picture (:func:`phase_diagram`).

    Attributes
    ----------
    density : ndarray (d,)
        Feature density ``1 - S`` (the x axis).
    relative_importance : ndarray (r,)
        Importance of feature 1 relative to feature 0 (the y axis).
    phase : ndarray (r, d) of int
        Index into :data:`PHASES`: the fate of feature 1 (-1: neither feature represented).
    norms : ndarray (r, d, 2)
        ``‖W_0‖, ‖W_1‖`` per cell.
    superposition : ndarray (r, d, 2)
    loss : ndarray (r, d)
    model : ToyModel
        Every cell's model (instances in row-major order of ``phase``).
    """

    density: np.ndarray
    relative_importance: np.ndarray
    phase: np.ndarray
    norms: np.ndarray
    superposition: np.ndarray
    loss: np.ndarray
    model: ToyModel

    def counts(self) -> dict:
        """``{phase name: number of cells}``."""
        return {name: int((self.phase == i).sum()) for i, name in enumerate(PHASES)}

    def plot(self, ax=None):
        """The phase picture: feature density (log) × relative importance (log), one colour per
        phase with a legend. Returns the axes."""
        import matplotlib.pyplot as plt
        from matplotlib.colors import BoundaryNorm, ListedColormap
        from matplotlib.patches import Patch

        if ax is None:
            _, ax = plt.subplots(figsize=(6.2, 4.6), layout="constrained")
        colours = ["#bdbdbd", "#1f77b4", "#d62728"]  # ignored, dedicated, superposed
        cmap = ListedColormap(["white"] + colours)
        shown = np.where(self.phase < 0, -1, self.phase)
        edges_x = _log_edges(self.density)
        edges_y = _log_edges(self.relative_importance)
        ax.pcolormesh(edges_x, edges_y, shown, cmap=cmap, norm=BoundaryNorm([-1.5, -0.5, 0.5, 1.5, 2.5], 4),
                      edgecolors="white", linewidth=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("feature density 1 − S (both features)")
        ax.set_ylabel("relative importance of feature 1 (feature 0: 1)")
        ax.set_title("n = 2 features in m = 1 dimension: the fate of feature 1", fontsize=10)
        handles = [Patch(color=c, label=lab) for c, lab in zip(colours, (
            "ignored (‖W₁‖ ≤ 0.5)", "dedicated (‖W₁‖ > 0.5, ‖W₀‖ ≤ 0.5)", "superposed (both > 0.5)"))]
        if (self.phase < 0).any():
            handles.append(Patch(facecolor="white", edgecolor="0.5", label="neither represented"))
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False,
                  ncol=2)
        return ax


def _log_edges(centres: np.ndarray) -> np.ndarray:
    c = np.log(np.asarray(centres, dtype=np.float64))
    if len(c) == 1:
        return np.exp(np.array([c[0] - 0.5, c[0] + 0.5]))
    mid = (c[1:] + c[:-1]) / 2
    return np.exp(np.r_[2 * c[0] - mid[0], mid, 2 * c[-1] - mid[-1]])


def phase_diagram(density: Sequence[float] | None = None, relative_importance: Sequence[float] | None = None,
                  *, n_steps: int = 2000, batch_size: int = 512, lr: float = 3e-2, n_init: int = 2,
                  seed: int = 0) -> PhaseDiagram:
    """The phase picture of ``n = 2`` features in ``m = 1`` dimension (Elhage et al. 2022).

    Parameters
    ----------
    density : sequence of float in (0, 1], optional
        Feature densities ``1 - S`` (default: 7 values, log-spaced from 0.01 to 1).
    relative_importance : sequence of positive float, optional
        Importance of feature 1 (feature 0 has 1); default 7 values log-spaced from 0.1 to 10.
    n_steps, batch_size, lr, n_init, seed
        As :func:`train_toy_model` (every cell trains in the same batched pass).

    Returns
    -------
    PhaseDiagram
    """
    d = np.asarray(np.logspace(-2, 0, 7) if density is None else density, dtype=np.float64).ravel()
    r = np.asarray(np.logspace(-1, 1, 7) if relative_importance is None else relative_importance,
                   dtype=np.float64).ravel()
    if d.size == 0 or not np.all((d > 0) & (d <= 1)):
        raise ValueError(f"density must hold values in (0, 1]; got {density!r}")
    if r.size == 0 or not np.all(np.isfinite(r) & (r > 0)):
        raise ValueError(f"relative_importance must hold positive numbers; got {relative_importance!r}")
    rr, dd = np.meshgrid(r, d, indexing="ij")  # (r, d)
    imp = np.stack([np.ones(rr.size), rr.ravel()], 1)
    model = train_toy_model(2, 1, 1.0 - dd.ravel(), imp, n_steps=n_steps, batch_size=batch_size, lr=lr,
                            n_init=n_init, seed=seed)
    norms = model.norms.reshape(len(r), len(d), 2)
    rep = norms > REPRESENTED
    phase = np.full((len(r), len(d)), -1, dtype=np.int64)
    phase[rep[..., 0] & ~rep[..., 1]] = 0
    phase[~rep[..., 0] & rep[..., 1]] = 1
    phase[rep[..., 0] & rep[..., 1]] = 2
    return PhaseDiagram(density=d, relative_importance=r, phase=phase, norms=norms,
                        superposition=model.superposition.reshape(len(r), len(d), 2),
                        loss=model.loss.reshape(len(r), len(d)), model=model)
