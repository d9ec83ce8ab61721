"""Influential training examples: TracIn over checkpoints and influence functions.

Which training examples made the model predict what it predicts on a test input? Two answers:

* **TracIn** (Pruthi, Liu, Kale & Sundararajan, *Estimating Training Data Influence by Tracing
  Gradient Descent*, NeurIPS 2020), the TracInCP form over saved checkpoints:
  ``score(z, z') = Σ_c η_c ∇ℓ(θ_c, z) · ∇ℓ(θ_c, z')``, the first-order effect on the test loss of
  the gradient steps taken on ``z``. ``projection_dim=k`` replaces each gradient by ``g P`` with a
  seeded Gaussian (Johnson-Lindenstrauss) projection ``P`` of shape ``(p, k)`` and entries of
  variance ``1/k``, so that ``E[(gP)(g'P)ᵀ] = g g'ᵀ``: ``k`` numbers per example instead of ``p``.
* **Influence functions** (Koh & Liang, *Understanding Black-box Predictions via Influence
  Functions*, ICML 2017): ``score(z, z') = ∇ℓ(θ, z')ᵀ (H + λI)⁻¹ ∇ℓ(θ, z)`` with ``H`` the Hessian
  of the mean training loss at the trained parameters and ``λ`` the ``damping`` (the weight of
  an L2 penalty ``λ/2 |θ|²`` in the training objective, or a damping for non-convex models).
  ``method="exact"`` builds ``H`` (small models), ``"lissa"`` solves by the stochastic
  Neumann-series recursion of Agarwal, Bullins & Hazan (2017) with Hessian-vector products,
  ``"arnoldi"`` (Schioppa, Zablotskaia, Vilar & Sokolov, *Scaling Up Influence Functions*, AAAI
  2022) inverts ``H`` on its top eigenvectors found by Arnoldi iteration.

**Sign convention** (both methods): a positive score marks a *proponent*, a training example
whose weight lowers the test loss (removing it from training raises the test loss by about
``score / n`` for influence functions); a negative score an *opponent*. Koh & Liang's
``I_up,loss`` is the negative of this score. **Self-influence** ``score(z, z)`` is large for
examples the model finds hard to fit: mislabelled points rank first.

The model is left exactly as found: checkpoints are never loaded into it. Parameters are handed
to ``torch.func.functional_call``; the model runs in eval mode inside a
:class:`~lumos.core.torch_model.ModelGuard`. Per-example gradients come from ``torch.func``
(``vmap`` of ``grad``), with a per-example loop for models ``vmap`` cannot trace; a result does not
depend on ``batch_size``.

>>> from lumos.examples import tracin, influence_functions, self_influence
>>> infl = tracin(model, ["ep1.pt", "ep2.pt", "ep3.pt"], (x_train, y_train), x_test,
...               learning_rates=[0.1, 0.05, 0.01])
>>> infl.proponents(5)[0], infl.opponents(5)[0]     # training rows, for test input 0
>>> self_influence(model, (x_train, y_train), checkpoints=["ep1.pt", "ep3.pt"]).argsort()[::-1][:10]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["tracin", "influence_functions", "self_influence", "Influence", "per_example_gradients"]

_IF_METHODS = ("exact", "lissa", "arnoldi")
_SELF_METHODS = ("tracin",) + _IF_METHODS
# an exact Hessian above this many parameters needs too much memory/time: use lissa or arnoldi
_EXACT_MAX_PARAMS = 5000
# up to this many parameters the exact Hessian is built from Hessian-vector products, one per row
_LOOP_HESSIAN_MAX = 256


# ------------------------------------------------------------------------------------ arguments
def _default_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


def _data(data: Any, model: nn.Module, name: str, labels_optional: bool = False):
    """``(x, y)`` tensors from a pair (or, with ``labels_optional``, bare inputs: y = None)."""
    from ..core.torch_model import as_tensor, model_device, model_dtype

    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    elif labels_optional:
        x, y = data, None
    else:
        raise TypeError(f"{name} must be a pair (inputs, labels); got {type(data).__name__}")
    x = as_tensor(x, model_device(model), name=f"{name} inputs", dtype=model_dtype(model))
    if y is None:
        return x, None
    y = torch.as_tensor(np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y))
    if y.ndim == 0 or len(y) != len(x):
        raise ValueError(f"{name}: {len(x)} inputs but labels of shape {tuple(y.shape)}; one label per input")
    if y.is_floating_point():
        y = y.to(model_dtype(model) or torch.float32)
    return x, y.to(model_device(model))


def _select_params(model: nn.Module, params: Any) -> list[str]:
    """Names of the parameters whose gradients are used (``None``: every trainable parameter)."""
    named = dict(model.named_parameters())
    if not named:
        raise ValueError("model has no parameters: there is nothing to take gradients of")
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad] or list(named)
    elif params == "last":
        owners = [m for m, mod in model.named_modules() if any(True for _ in mod.parameters(recurse=False))]
        last = owners[-1]
        names = [n for n in named if n.rsplit(".", 1)[0] == last or (last == "" and "." not in n)]
    else:
        wanted = [params] if isinstance(params, str) else list(params)
        names = []
        for w in wanted:
            if not isinstance(w, str):
                raise TypeError(f"params must be None, 'last', or parameter/module names; got {w!r}")
            hit = [n for n in named if n == w or n.startswith(w + ".")]
            if not hit:
                import difflib

                close = difflib.get_close_matches(w, list(named) + [n.rsplit(".", 1)[0] for n in named], n=3)
                raise ValueError(f"params: the model has no parameter or module {w!r}"
                                 + (f"; did you mean {', '.join(map(repr, dict.fromkeys(close)))}?" if close else ""))
            names += [n for n in hit if n not in names]
    return names


def _load(checkpoint: Any, model: nn.Module, i: int) -> dict:
    """A state dict from a mapping or a path (``torch.load(..., weights_only=True)``)."""
    from ..core.torch_model import model_device

    if isinstance(checkpoint, (str, Path)):
        if not Path(checkpoint).exists():
            raise FileNotFoundError(f"checkpoints[{i}]: no file {str(checkpoint)!r}")
        checkpoint = torch.load(checkpoint, map_location=model_device(model), weights_only=True)
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise TypeError(f"checkpoints[{i}] must be a state dict (name -> tensor) or a path to one saved with "
                        f"torch.save(model.state_dict(), path); got {type(checkpoint).__name__}")
    return dict(checkpoint)


class _Functional:
    """The model as a pure function of (selected parameters, the rest) for one checkpoint."""

    def __init__(self, model: nn.Module, names: list[str], state: Mapping[str, torch.Tensor] | None,
                 loss_fn: Callable, where: str, per_example: str = "vmap"):
        from ..core.torch_model import model_device, model_dtype

        self.model, self.names, self.loss_fn, self.where = model, names, loss_fn, where
        dev, dt = model_device(model), model_dtype(model)
        own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        state = own if state is None else state
        missing = [n for n in names if n not in state]
        if missing:
            raise ValueError(f"{where}: the checkpoint lacks parameters {missing[:4]}"
                             f"{' ...' if len(missing) > 4 else ''} (is it a state dict of this model?)")
        for n in names:
            if tuple(state[n].shape) != tuple(own[n].shape):
                raise ValueError(f"{where}: parameter {n!r} has shape {tuple(state[n].shape)} in the checkpoint "
                                 f"but {tuple(own[n].shape)} in the model")

        def conv(t):
            t = t.detach().to(dev)
            return t.to(dt) if (t.is_floating_point() and dt is not None) else t

        self.sel = {n: conv(state[n]) for n in names}
        self.rest = {n: conv(state.get(n, t)) for n, t in own.items() if n not in self.sel}
        self.shapes = [self.sel[n].shape for n in names]
        self.sizes = [self.sel[n].numel() for n in names]
        self.theta = torch.cat([self.sel[n].reshape(-1) for n in names])
        self._vmap_ok = per_example == "vmap"
        self._reduction: str | None = None

    @property
    def p(self) -> int:
        return int(self.theta.numel())

    def unflatten(self, theta: torch.Tensor) -> dict:
        parts = torch.split(theta, self.sizes)
        return {n: t.reshape(s) for n, t, s in zip(self.names, parts, self.shapes)}

    def outputs(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call

        out = functional_call(self.model, {**self.rest, **self.unflatten(theta)}, (x,))
        if not isinstance(out, torch.Tensor):
            out = out.logits if hasattr(out, "logits") else out[0]
        return out

    def sample_loss(self, theta: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        """One example's loss (the model sees a batch of one)."""
        return self.loss_fn(self.outputs(theta, xi.unsqueeze(0)), yi.unsqueeze(0)).sum()

    def loss_sum(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sum of the examples' losses, from one batched forward pass (eval mode: rows are
        independent). ``loss_fn``'s reduction (none, sum or mean) is found once by comparing a
        two-row loss with its rows' losses, so that each example counts once; an unknown one
        falls back to the loss row by row."""
        out = self.outputs(theta, x)
        if self._reduction is None:
            self._reduction = _reduction_of(self.loss_fn, out.detach(), y)
        if self._reduction == "rows":
            return torch.stack([self.loss_fn(out[i:i + 1], y[i:i + 1]).sum() for i in range(len(x))]).sum()
        batch = self.loss_fn(out, y)
        return batch.sum() * (len(x) if self._reduction == "mean" else 1)

    def grads(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example gradients ``(len(x), p)`` in float64."""
        from torch.func import grad, vmap

        from ..core.torch_model import check_finite

        g = None
        if self._vmap_ok:
            try:
                g = vmap(grad(self.sample_loss), in_dims=(None, 0, 0))(self.theta, x, y)
            except (RuntimeError, NotImplementedError, ValueError):
                self._vmap_ok = False  # e.g. an operation without a batching rule: one example at a time
        if g is None:
            rows = []
            for xi, yi in zip(x, y):
                th = self.theta.clone().requires_grad_(True)
                with torch.enable_grad():
                    (gi,) = torch.autograd.grad(self.sample_loss(th, xi, yi), th, allow_unused=True)
                rows.append(torch.zeros_like(th) if gi is None else gi)
            g = torch.stack(rows)
        check_finite(g, f"the per-example loss gradients ({self.where})")
        return g.detach().to(torch.float64)


def _reduction_of(loss_fn: Callable, out: torch.Tensor, y: torch.Tensor) -> str:
    """"none", "sum" or "mean" if ``loss_fn`` on a batch is that of its rows' losses; else "rows"."""
    if len(out) < 2:
        return "rows"
    with torch.no_grad():
        both = loss_fn(out[:2], y[:2])
        rows = torch.stack([loss_fn(out[i:i + 1], y[i:i + 1]).sum() for i in range(2)]).to(torch.float64)
    if both.shape == (2,) and torch.allclose(both.to(torch.float64), rows, rtol=1e-5, atol=0):
        return "none"
    if both.numel() != 1:
        return "rows"
    total, b = rows.sum(), float(both.to(torch.float64))
    if total == 0:
        return "rows"  # a zero total cannot tell a sum from a mean
    if abs(b - total) <= 1e-5 * abs(total):
        return "sum"
    if abs(b - total / 2) <= 1e-5 * abs(total):
        return "mean"
    return "rows"


def per_example_gradients(model: nn.Module, data: Any, *, loss_fn: Callable | None = None,
                          params: Any = None, checkpoint: Any = None,
                          batch_size: int | None = None, per_example: str = "vmap") -> np.ndarray:
    """Gradients of each example's loss with respect to the (selected) parameters, ``(n, p)``.

    Parameters
    ----------
    model : torch.nn.Module
    data : (inputs, labels)
    loss_fn : callable, optional
        ``loss_fn(output, labels) -> scalar`` on a batch of one (mean or sum reduction, e.g.
        ``nn.CrossEntropyLoss()``); default cross-entropy on integer labels.
    params : None, "last", str or list of str
        ``None``: every trainable parameter; ``"last"``: the last module with parameters (the
        classifier); names of parameters or modules (every parameter under them).
    checkpoint : state dict or path, optional
        Parameters to differentiate at (the model's own by default); the model is not changed.
    batch_size : int, optional
    per_example : {"vmap", "loop"}, default "vmap"
        ``vmap``: ``torch.func.vmap`` of ``grad`` over each batch (falls back to the loop for a model
        it cannot trace); ``loop``: one backward pass per example, without torch.func (whose first
        use in a process costs a few seconds of start-up).

    Returns
    -------
    ndarray of float64, (n, p), parameters in ``model.named_parameters()`` order.
    """
    _check_per_example(per_example)
    with _session(model) as m:
        names = _select_params(m, params)
        x, y = _data(data, m, "data")
        f = _Functional(m, names, None if checkpoint is None else _load(checkpoint, m, 0),
                        loss_fn or _default_loss, "the model", per_example)
        bs = _bs(batch_size, x, f.p)
        return torch.cat([f.grads(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]).cpu().numpy()


class _session:
    """ModelGuard + eval mode for the whole computation; the model is restored on exit."""

    def __init__(self, model: Any):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model

    def __enter__(self) -> nn.Module:
        from ..core.torch_model import ModelGuard

        self.guard = ModelGuard(self.model)
        self.guard.__enter__()
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        self.guard.__exit__(*exc)


def _check_per_example(per_example: str) -> None:
    from ..core.validation import check_choice

    check_choice(per_example, "per_example", ("vmap", "loop"))


def _bs(batch_size: int | None, x: torch.Tensor, p: int) -> int:
    from ..core.execution import check_batch_size

    # a row costs its input and its gradient (float64 after conversion)
    return check_batch_size(batch_size, row_bytes=x[0].numel() * x.element_size() + 8 * p)


def _predicted(model: nn.Module, x: torch.Tensor, bs: int) -> torch.Tensor:
    from ..core.torch_model import check_finite, forward

    with torch.no_grad():
        out = torch.cat([forward(model, x[i:i + bs], name="test inputs") for i in range(0, len(x), bs)])
    check_finite(out, "the test inputs")
    if out.ndim != 2:
        raise ValueError("test labels: give them explicitly (test=(inputs, labels)); the predicted class "
                         f"needs a (batch, classes) output, the model returned shape {tuple(out.shape)}")
    return out.argmax(1)


def _checkpoints(checkpoints: Any, learning_rates: Any) -> tuple[list, list[float]]:
    from ..core.validation import check_number

    if isinstance(checkpoints, (str, Path, Mapping)):
        checkpoints = [checkpoints]
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("checkpoints must hold at least one state dict or path")
    if isinstance(learning_rates, (int, float, np.integer, np.floating)) and not isinstance(learning_rates, bool):
        lrs = [check_number(learning_rates, "learning_rates")] * len(checkpoints)
    else:
        lrs = [check_number(v, f"learning_rates[{i}]") for i, v in enumerate(learning_rates)]
        if len(lrs) != len(checkpoints):
            raise ValueError(f"learning_rates has {len(lrs)} values for {len(checkpoints)} checkpoints")
    return checkpoints, lrs


def _projection(p: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(p, k, generator=gen, dtype=torch.float64) / np.sqrt(k)


# -------------------------------------------------------------------------------------- results
@dataclass
class Influence:
    """Influence of every training example on every test example.

    Attributes
    ----------
    scores : ndarray of float64, (n_test, n_train)
        Positive: a proponent (its weight lowers the test loss); negative: an opponent.
    method : str
        ``"tracin"``, ``"tracin_projected"``, ``"exact"``, ``"lissa"`` or ``"arnoldi"``.
    test_labels : ndarray
        The labels the test losses were taken at (given, or the model's predictions).
    params : dict
        The settings used.
    meta : dict
        ``n_params`` (gradient dimension), and per method: ``eigenvalues`` (arnoldi),
        ``scale`` (lissa), ``min_eigenvalue`` (exact).
    """

    scores: np.ndarray
    method: str
    test_labels: np.ndarray
    params: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def proponents(self, k: int = 5) -> np.ndarray:
        """``(n_test, k)`` training indices with the largest scores, strongest first."""
        return np.argsort(-self.scores, axis=1, kind="stable")[:, :k]

    def opponents(self, k: int = 5) -> np.ndarray:
        """``(n_test, k)`` training indices with the most negative scores, strongest first."""
        return np.argsort(self.scores, axis=1, kind="stable")[:, :k]

    def plot(self, train_images: Any, test_images: Any, index: int = 0, k: int = 5, train_labels: Any = None,
             class_names: Sequence[str] | None = None, highlight: Any = None):
        """The test image with its ``k`` strongest proponents (top row) and opponents (bottom row),
        each titled with its training index, label and score. ``highlight`` (a boolean per
        training example, e.g. "carries the watermark") frames those examples in orange.
        Returns the figure."""
        from ._pictures import example_grid

        def title(i):
            lab = "" if train_labels is None else f" {_label(train_labels[i], class_names)}"
            return f"#{i}{lab}\n{self.scores[index, i]:+.3g}"

        def colour(i, base):
            return "tab:orange" if highlight is not None and bool(highlight[i]) else base

        test_t = f"test, loss at\n{_label(self.test_labels[index], class_names)}"
        rows = []
        for name, idx, base in (("proponents", self.proponents(k)[index], "tab:green"),
                                ("opponents", self.opponents(k)[index], "tab:red")):
            idx = [int(i) for i in idx]
            rows.append((name, [test_images[index]] + [train_images[i] for i in idx],
                         [test_t] + [title(i) for i in idx], [None] + [colour(i, base) for i in idx]))
        return example_grid(rows, suptitle=f"{self.method}: training examples that most support (top) "
                                           "and oppose (bottom) the test prediction")


def _label(v, class_names):
    v = int(v) if np.ndim(v) == 0 and float(v) == int(v) else v
    return class_names[v] if class_names is not None and isinstance(v, int) else str(v)


# --------------------------------------------------------------------------------------- TracIn
def tracin(model: nn.Module, checkpoints: Any, train: Any, test: Any, *, learning_rates: Any = 1.0,
           loss_fn: Callable | None = None, params: Any = None, projection_dim: int | None = None,
           batch_size: int | None = None, seed: int = 0,
           per_example: str = "vmap") -> Influence:
    """TracIn-CP influence of each training example on each test example (Pruthi et al. 2020).

    Parameters
    ----------
    model : torch.nn.Module
        The architecture (and the final parameters, which give the predicted test labels). Its
        parameters are never changed.
    checkpoints : sequence of state dicts or paths
        Parameters saved during training (``torch.save(model.state_dict(), path)``); paths are
        read with ``torch.load(..., weights_only=True)``. Entries missing from a checkpoint are
        taken from the model.
    train : (inputs, labels)
    test : (inputs, labels) or inputs
        Without labels, each test example's loss is taken at the class the model predicts.
    learning_rates : float or sequence of float, default 1.0
        The learning rate in effect at each checkpoint (η_c).
    loss_fn : callable, optional
        ``loss_fn(output, labels) -> scalar`` on a batch of one; default cross-entropy.
    params : None, "last", str or list of str
        Whose gradients: every trainable parameter (default), the last module with parameters, or
        the named parameters/modules.
    projection_dim : int, optional
        Project every gradient to this many dimensions with a seeded Gaussian JL matrix (one per
        checkpoint): faster dot products, an unbiased estimate of the scores.
    batch_size : int, optional
        Training examples per gradient batch; the scores do not depend on it.
    seed : int, default 0
        Seeds the projections.
    per_example : {"vmap", "loop"}, default "vmap"
        How per-example gradients are taken (see :func:`per_example_gradients`).

    Returns
    -------
    Influence
    """
    from ..core.execution import torch_generator
    from ..core.validation import check_number

    _check_per_example(per_example)
    if projection_dim is not None:
        projection_dim = check_number(projection_dim, "projection_dim", low=1, integer=True)
    checkpoints, lrs = _checkpoints(checkpoints, learning_rates)
    loss_fn = loss_fn or _default_loss
    with _session(model) as m:
        names = _select_params(m, params)
        xt, yt = _data(train, m, "train")
        xs, ys = _data(test, m, "test", labels_optional=True)
        p = sum(dict(m.named_parameters())[n].numel() for n in names)
        bs = _bs(batch_size, xt, p)
        if ys is None:
            ys = _predicted(m, xs, bs)
        gen = torch_generator(seed)
        scores = torch.zeros(len(xs), len(xt), dtype=torch.float64)
        for c, (cp, lr) in enumerate(zip(checkpoints, lrs)):
            f = _Functional(m, names, _load(cp, m, c), loss_fn, f"checkpoints[{c}]", per_example)
            proj = _projection(f.p, projection_dim, gen) if projection_dim else None
            gt = torch.cat([f.grads(xs[i:i + bs], ys[i:i + bs]) for i in range(0, len(xs), bs)]).cpu()
            if proj is not None:
                gt = gt @ proj
            for i in range(0, len(xt), bs):
                g = f.grads(xt[i:i + bs], yt[i:i + bs]).cpu()
                if proj is not None:
                    g = g @ proj
                scores[:, i:i + bs] += lr * (gt @ g.T)
    return Influence(scores.numpy(), "tracin_projected" if projection_dim else "tracin", ys.cpu().numpy(),
                     params=dict(learning_rates=lrs, params=params, projection_dim=projection_dim, seed=seed,
                                 n_checkpoints=len(checkpoints)),
                     meta={"n_params": p})


# -------------------------------------------------------------------------- influence functions
class _Hessian:
    """The damped Hessian of the mean training loss, as a matrix or through products."""

    def __init__(self, f: _Functional, x: torch.Tensor, y: torch.Tensor, bs: int, damping: float):
        self.f, self.x, self.y, self.bs, self.damping = f, x, y, bs, damping

    def matrix(self) -> torch.Tensor:
        """``H + λI`` as a (p, p) float64 matrix: products with the unit vectors for small ``p``
        (no torch.func start-up), ``torch.func.hessian`` (vectorised) above."""
        f = self.f
        eye = torch.eye(f.p, dtype=torch.float64)
        if f.p <= _LOOP_HESSIAN_MAX:
            h = self.product(eye) - self.damping * eye
        else:
            from torch.func import hessian

            h = torch.zeros(f.p, f.p, dtype=torch.float64)
            for i in range(0, len(self.x), self.bs):
                xb, yb = self.x[i:i + self.bs], self.y[i:i + self.bs]
                h += hessian(lambda th: f.loss_sum(th, xb, yb))(f.theta).detach().to(torch.float64).cpu()
            h = h / len(self.x)
        return (h + h.T) / 2 + self.damping * eye

    def product(self, v: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``(H_rows + λI) v`` for a matrix ``v`` (r, p); ``rows`` picks a sample of training points.

        Hessian-vector products by double backward (Pearlmutter 1994): one gradient graph per
        batch, one backward pass per vector.
        """
        f = self.f
        x, y = (self.x, self.y) if rows is None else (self.x[rows], self.y[rows])
        vv = v.to(f.theta.dtype)
        out = torch.zeros_like(v, dtype=torch.float64)
        for i in range(0, len(x), self.bs):
            th = f.theta.clone().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(f.loss_sum(th, x[i:i + self.bs], y[i:i + self.bs]), th,
                                           create_graph=True)
                for r in range(len(vv)):
                    (hv,) = torch.autograd.grad(g, th, vv[r], retain_graph=r + 1 < len(vv), allow_unused=True)
                    if hv is not None:
                        out[r] += hv.detach().to(torch.float64)
        return out / len(x) + self.damping * v


def _inverse(method: str, hess: _Hessian, opts: dict, gen: torch.Generator, meta: dict) -> Callable:
    """A function ``V (r, p) -> V (H + λI)⁻¹`` for the chosen method."""
    p = hess.f.p
    if method == "exact":
        if p > _EXACT_MAX_PARAMS:
            raise ValueError(f"method='exact' builds the {p} x {p} Hessian; above {_EXACT_MAX_PARAMS} parameters "
                             "use method='lissa' or 'arnoldi', or fewer parameters (params='last')")
        h = hess.matrix()
        evals, evecs = torch.linalg.eigh(h)
        meta["min_eigenvalue"] = float(evals[0])
        if evals[0] <= 0:
            raise ValueError(f"the Hessian plus damping is not positive definite (smallest eigenvalue "
                             f"{float(evals[0]):.3g}): the model is not at a minimum of a convex loss; raise "
                             f"damping above {abs(float(evals[0])):.3g}")
        inv = (evecs / evals) @ evecs.T
        return lambda v: v @ inv
    if method == "arnoldi":
        n_iter = min(opts["n_iter"], p)
        top_k = min(opts["top_k"], n_iter)
        q = torch.zeros(n_iter + 1, p, dtype=torch.float64)
        hm = torch.zeros(n_iter + 1, n_iter, dtype=torch.float64)
        start = torch.randn(p, generator=gen, dtype=torch.float64)
        q[0] = start / start.norm()
        used = n_iter
        for j in range(n_iter):
            w = hess.product(q[j:j + 1])[0] - hess.damping * q[j]  # H alone; damping added at inversion
            for i in range(j + 1):  # modified Gram-Schmidt, twice for stability
                hm[i, j] = q[i] @ w
                w = w - hm[i, j] * q[i]
            for i in range(j + 1):
                c = q[i] @ w
                hm[i, j] += c
                w = w - c * q[i]
            hm[j + 1, j] = w.norm()
            if hm[j + 1, j] <= 1e-12 * max(1.0, float(hm[:j + 1, :j + 1].abs().max())):
                used = j + 1  # an invariant subspace: exact on it
                break
            q[j + 1] = w / hm[j + 1, j]
        small = hm[:used, :used]
        evals, u = torch.linalg.eigh((small + small.T) / 2)
        keep = torch.argsort(evals.abs(), descending=True)[:top_k]
        evals, vecs = evals[keep], (u[:, keep].T @ q[:used])  # (k, p) eigenvectors of H
        meta["eigenvalues"] = evals.numpy().copy()
        denom = evals + hess.damping
        if (denom <= 0).any():
            raise ValueError(f"Arnoldi found eigenvalues {evals[denom <= 0].numpy()} <= -damping: the "
                             "Hessian is not positive definite there; raise damping")
        return lambda v: ((v @ vecs.T) / denom) @ vecs
    # LiSSA: h_j = v + (I - (H + λI)/scale) h_{j-1};  (H + λI)^-1 v ≈ h_J / scale
    scale = opts["scale"]
    if scale is None:
        # 1.5 x the largest eigenvalue of H + λI, by power iteration (convergence needs scale > λ_max / 2)
        z = torch.randn(1, p, generator=gen, dtype=torch.float64)
        lam = 0.0
        for _ in range(20):
            hz = hess.product(z / z.norm())
            lam = float(hz.norm())
            z = hz
        scale = 1.5 * lam if lam > 0 else 1.0
    meta["scale"] = float(scale)
    n_iter, samples = opts["n_iter"], opts["hvp_samples"]
    n = len(hess.x)

    def solve(v: torch.Tensor) -> torch.Tensor:
        h = v.clone()
        for _ in range(n_iter):
            rows = None if samples is None else torch.randperm(n, generator=gen)[:samples]
            h = v + h - hess.product(h, rows) / scale
        if not torch.isfinite(h).all() or h.abs().max() > 1e12 * max(1.0, float(v.abs().max())):
            raise ValueError(f"LiSSA diverged (scale {scale:.3g}): the recursion converges only when every "
                             "eigenvalue of H + damping lies in (0, 2 scale); raise damping (a non-convex "
                             "model's negative curvature) or scale")
        return h / scale

    return solve


def _if_scores(model, train, test, method, damping, loss_fn, params, batch_size, seed, opts, self_only,
               per_example="vmap"):
    from ..core.execution import torch_generator
    from ..core.validation import check_choice, check_number

    check_choice(method, "method", _IF_METHODS)
    damping = check_number(damping, "damping", low=0)
    loss_fn = loss_fn or _default_loss
    with _session(model) as m:
        names = _select_params(m, params)
        xt, yt = _data(train, m, "train")
        f = _Functional(m, names, None, loss_fn, "the model", per_example)
        bs = _bs(batch_size, xt, f.p)
        gen = torch_generator(seed)
        meta = {"n_params": f.p}
        inv = _inverse(method, _Hessian(f, xt, yt, bs, damping), opts, gen, meta)
        if self_only:
            out = torch.cat([(lambda g: (inv(g) * g).sum(1))(f.grads(xt[i:i + bs], yt[i:i + bs]).cpu())
                             for i in range(0, len(xt), bs)])
            return out.numpy(), None, meta
        xs, ys = _data(test, m, "test", labels_optional=True)
        if ys is None:
            ys = _predicted(m, xs, bs)
        gt = inv(torch.cat([f.grads(xs[i:i + bs], ys[i:i + bs]) for i in range(0, len(xs), bs)]).cpu())
        scores = torch.cat([gt @ f.grads(xt[i:i + bs], yt[i:i + bs]).cpu().T for i in range(0, len(xt), bs)], 1)
        return scores.numpy(), ys.cpu().numpy(), meta


def influence_functions(model: nn.Module, train: Any, test: Any, *, method: str = "exact",
                        damping: float = 0.0, loss_fn: Callable | None = None, params: Any = None,
                        n_iter: int | None = None, top_k: int = 50, scale: float | None = None,
                        hvp_samples: int | None = None, batch_size: int | None = None,
                        seed: int = 0, per_example: str = "vmap") -> Influence:
    """Influence functions (Koh & Liang 2017) at the model's current (trained) parameters.

    ``scores[t, i] = ∇ℓ(test t)ᵀ (H + λI)⁻¹ ∇ℓ(train i)``, ``H`` the Hessian of the *mean* training
    loss. Removing training example ``i`` changes test ``t``'s loss by about ``scores[t, i] / n``.

    Parameters
    ----------
    model : torch.nn.Module
        Trained to (near) a minimum of the mean loss (+ ``damping/2 |θ|²``).
    train : (inputs, labels)
        The training set that defines ``H``.
    test : (inputs, labels) or inputs
        Without labels: the class the model predicts.
    method : {"exact", "lissa", "arnoldi"}, default "exact"
        ``exact``: the full Hessian (up to 5,000 parameters), solved through its eigendecomposition;
        ``lissa``: ``n_iter`` (default 100) steps of the LiSSA recursion, Hessian-vector products on
        ``hvp_samples`` training points drawn per step (all of them by default, deterministic);
        ``arnoldi``: ``n_iter`` (default 100) Arnoldi steps, inversion on the ``top_k`` eigenvalues
        of largest magnitude.
    damping : float, default 0
        λ added to the Hessian: the L2 penalty weight of the training objective, or a damping
        that makes a non-convex model's Hessian invertible.
    loss_fn : callable, optional
        ``loss_fn(output, labels) -> scalar`` on a batch of one; default cross-entropy.
    params : None, "last", str or list of str
        The parameters the Hessian and gradients are taken in (the others held fixed).
    n_iter, top_k, scale, hvp_samples
        Settings of ``lissa`` (``scale`` ≥ the largest eigenvalue of ``H + λI`` for convergence; by
        default 1.5 x a power-iteration estimate) and ``arnoldi``.
    batch_size : int, optional
    seed : int, default 0
        Seeds Arnoldi's start vector, LiSSA's power iteration and samples.
    per_example : {"vmap", "loop"}, default "vmap"
        How the per-example gradients are taken (see :func:`per_example_gradients`).

    Returns
    -------
    Influence
    """
    opts = _if_opts(n_iter, top_k, scale, hvp_samples)
    _check_per_example(per_example)
    scores, ys, meta = _if_scores(model, train, test, method, damping, loss_fn, params, batch_size, seed, opts,
                                  self_only=False, per_example=per_example)
    return Influence(scores, method, ys, params=dict(damping=damping, params=params, seed=seed, **opts), meta=meta)


def _if_opts(n_iter, top_k, scale, hvp_samples) -> dict:
    from ..core.validation import check_number

    return dict(n_iter=100 if n_iter is None else check_number(n_iter, "n_iter", low=1, integer=True),
                top_k=check_number(top_k, "top_k", low=1, integer=True),
                scale=None if scale is None else check_number(scale, "scale", low=0, low_open=True),
                hvp_samples=None if hvp_samples is None else check_number(hvp_samples, "hvp_samples", low=1,
                                                                          integer=True))


def self_influence(model: nn.Module, train: Any, *, method: str = "tracin", checkpoints: Any = None,
                   learning_rates: Any = 1.0, damping: float = 0.0, loss_fn: Callable | None = None,
                   params: Any = None, projection_dim: int | None = None, n_iter: int | None = None,
                   top_k: int = 50, scale: float | None = None, hvp_samples: int | None = None,
                   batch_size: int | None = None, seed: int = 0, per_example: str = "vmap") -> np.ndarray:
    """The influence of each training example on itself, ``(n_train,)``: high for examples the model
    finds hard to fit, so ``argsort(-self_influence(...))`` ranks suspicious (mislabelled) points first.

    ``method="tracin"`` (default; needs ``checkpoints``): ``Σ_c η_c |∇ℓ(θ_c, z)|²``, streamed with
    memory for one batch of gradients (``learning_rates``, ``params``, ``projection_dim``, ``seed``
    and ``per_example`` as in :func:`tracin`). ``"exact"``, ``"lissa"``, ``"arnoldi"``:
    ``∇ℓᵀ(H + λI)⁻¹∇ℓ`` at the model's parameters (``damping``, ``n_iter``, ``top_k``, ``scale``,
    ``hvp_samples`` as in :func:`influence_functions`; LiSSA then solves one system per training
    example, which costs ``n_iter`` Hessian-vector products for each).

    Returns
    -------
    ndarray of float64, (n_train,)
    """
    from ..core.execution import torch_generator
    from ..core.validation import check_choice, check_number

    check_choice(method, "method", _SELF_METHODS)
    _check_per_example(per_example)
    if method != "tracin":
        if checkpoints is not None:
            raise ValueError(f"checkpoints: method={method!r} works at the model's parameters; checkpoints are "
                             "for method='tracin'")
        opts = _if_opts(n_iter, top_k, scale, hvp_samples)
        return _if_scores(model, train, None, method, damping, loss_fn, params, batch_size, seed, opts,
                          self_only=True, per_example=per_example)[0]
    if checkpoints is None:
        raise ValueError("checkpoints: method='tracin' needs the checkpoints saved during training")
    if projection_dim is not None:
        projection_dim = check_number(projection_dim, "projection_dim", low=1, integer=True)
    checkpoints, lrs = _checkpoints(checkpoints, learning_rates)
    with _session(model) as m:
        names = _select_params(m, params)
        xt, yt = _data(train, m, "train")
        p = sum(dict(m.named_parameters())[n].numel() for n in names)
        bs = _bs(batch_size, xt, p)
        gen = torch_generator(seed)
        out = torch.zeros(len(xt), dtype=torch.float64)
        for c, (cp, lr) in enumerate(zip(checkpoints, lrs)):
            f = _Functional(m, names, _load(cp, m, c), loss_fn or _default_loss, f"checkpoints[{c}]",
                            per_example)
            proj = _projection(f.p, projection_dim, gen) if projection_dim else None
            for i in range(0, len(xt), bs):
                g = f.grads(xt[i:i + bs], yt[i:i + bs]).cpu()
                if proj is not None:
                    g = g @ proj
                out[i:i + bs] += lr * (g * g).sum(1)
    return out.numpy()
