"""Sparse autoencoders: a dictionary of feature directions learned from a layer's activations.

One class, :class:`SAE`, with four activation functions (``kind``):

* ``"relu"``: ReLU codes with an L1 penalty and unit-norm decoder directions ("Towards
  Monosemanticity", Bricken et al. 2023). After each optimiser step the decoder directions are put
  back on the unit sphere (:meth:`SAE.normalize_decoder_`), and before it the gradient component
  parallel to each direction is removed (:meth:`SAE.remove_parallel_grad_`), so that the L1 penalty
  cannot be dodged by shrinking codes and growing directions.
* ``"topk"``: the ``k`` largest pre-activations of each row are kept (after a ReLU), the others set
  to 0; no sparsity penalty (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"). Dead
  features are revived by the auxiliary-k loss (``aux_k``).
* ``"batchtopk"``: the ``k * batch`` largest of the whole batch are kept in training (Bussmann et
  al. 2024); in evaluation a threshold estimated during training (a running mean of the smallest
  kept activation) decides per row, so a row's codes never depend on the other rows.
* ``"jumprelu"``: ``z * H(z - theta)`` with a learned threshold per feature and an L0 penalty; the
  threshold learns through a straight-through estimator with a rectangle kernel of width
  ``bandwidth`` (Rajamanoharan et al. 2024, "Jumping ahead").

Conventions (as in SAELens): ``W_enc`` is ``(d_in, n_features)``, ``W_dec`` is ``(n_features,
d_in)``: row ``i`` of ``W_dec`` is feature ``i``'s direction. Codes are ``f = act(((x - b_dec) @
W_enc) + b_enc)``, reconstructions ``f @ W_dec + b_dec``. With ``normalize="scale"`` the input is
multiplied by a constant (set from data by :meth:`SAE.fit_normalization`) so that its mean squared
norm is ``d_in``; reconstructions are returned in the input's own units.

Saved without pickle: ``.npz`` (weights) + JSON (configuration) in one ``.npz`` file, or
safetensors when the path ends in ``.safetensors`` and the package is installed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.execution import torch_generator
from ..core.validation import check_choice, check_number

__all__ = ["SAE", "SAEOutput", "KINDS", "geometric_median", "resample_dead"]

KINDS = ("relu", "topk", "batchtopk", "jumprelu")
_FORMAT = "lumos.dictionary.SAE/1"


@dataclass
class SAEOutput:
    """What :meth:`SAE.forward` returns: the reconstruction, the codes and the pre-activations."""

    recon: torch.Tensor
    codes: torch.Tensor
    pre: torch.Tensor


def _rect(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """``z * H(z - theta)``; d/dz = H(z - theta), d/dtheta = -(theta/eps) K((z - theta)/eps)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        gz = g * (z > theta).to(z.dtype)
        gt = -(theta / eps) * _rect((z - theta) / eps) * g
        return gz, gt.reshape(-1, theta.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    """``H(z - theta)``; no gradient to z, d/dtheta = -(1/eps) K((z - theta)/eps)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        gt = -(1.0 / eps) * _rect((z - theta) / eps) * g
        return None, gt.reshape(-1, theta.shape[-1]).sum(0), None


def geometric_median(x: torch.Tensor, n_iter: int = 100, tol: float = 1e-7) -> torch.Tensor:
    """The geometric median of the rows of ``x`` (Weiszfeld's algorithm, float64).

    Minimises ``sum_i ||x_i - m||``; starts at the mean and stops when a step moves ``m`` by less
    than ``tol`` times its scale. Rows at distance 0 from the estimate are given a tiny distance
    (the usual safeguard), which keeps the iteration defined.
    """
    x = torch.as_tensor(x).detach().to(torch.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty (rows, dims) array; got shape {tuple(x.shape)}")
    m = x.mean(0)
    scale = float(x.abs().max()) or 1.0
    for _ in range(int(n_iter)):
        d = torch.linalg.vector_norm(x - m, dim=1).clamp_min(1e-12 * scale)
        w = 1.0 / d
        new = (w[:, None] * x).sum(0) / w.sum()
        moved = float(torch.linalg.vector_norm(new - m))
        m = new
        if moved <= tol * scale:
            break
    return m


class SAE(nn.Module):
    """A sparse autoencoder ``x -> f -> x_hat`` over vectors of ``d_in`` numbers.

    Parameters
    ----------
    d_in : int
        Width of the activations (channels of a conv map, the model width of a transformer).
    n_features : int
        Dictionary size (``n_features > d_in``: an overcomplete dictionary).
    kind : {"relu", "topk", "batchtopk", "jumprelu"}, default "relu"
        Activation function and sparsity mechanism (see the module docs).
    k : int, optional
        Active features per row for ``topk``/``batchtopk`` (required there).
    l1_coef : float, default 1.0
        Weight of the L1 penalty ``sum_i |f_i| * ||W_dec[i]||`` (``relu``).
    l0_coef : float, default 1e-3
        Weight of the L0 penalty (``jumprelu``).
    threshold : float, default 1e-3
        Initial JumpReLU threshold (every feature).
    bandwidth : float, default 1e-3
        Width of the straight-through rectangle kernel (``jumprelu``).
    aux_k : int, optional
        Dead features used by the auxiliary-k loss (``topk``/``batchtopk``); default ``d_in // 2``;
        0 switches the loss off.
    aux_coef : float, default 1/32
        Weight of the auxiliary-k loss (Gao et al. 2024).
    normalize : {None, "scale"}, default None
        ``"scale"``: multiply inputs by a constant so their mean squared norm is ``d_in`` (set by
        :meth:`fit_normalization`, which :func:`~lumos.dictionary.train.train_sae` calls).
    seed : int, default 0
        Seed of the initialisation (encoder = decoder transposed, random unit directions).
    dtype : torch.dtype, default torch.float32

    Attributes
    ----------
    W_enc, b_enc, W_dec, b_dec : nn.Parameter
        ``(d_in, n_features)``, ``(n_features,)``, ``(n_features, d_in)``, ``(d_in,)``.
    log_threshold : nn.Parameter
        ``(n_features,)`` (``jumprelu`` only): ``theta = exp(log_threshold)``.
    steps_since_fired : torch.Tensor
        Buffer ``(n_features,)``: rows seen since each feature last fired in training (dead-feature
        detection; updated by :meth:`update_fired`).
    """

    def __init__(self, d_in: int, n_features: int, kind: str = "relu", *, k: int | None = None,
                 l1_coef: float = 1.0, l0_coef: float = 1e-3, threshold: float = 1e-3,
                 bandwidth: float = 1e-3, aux_k: int | None = None, aux_coef: float = 1 / 32,
                 normalize: str | None = None, seed: int = 0, dtype: torch.dtype = torch.float32):
        super().__init__()
        d_in = check_number(d_in, "d_in", low=1, integer=True)
        n_features = check_number(n_features, "n_features", low=1, integer=True)
        kind = check_choice(kind, "kind", KINDS)
        if kind in ("topk", "batchtopk"):
            if k is None:
                raise ValueError(f"k: kind={kind!r} needs k, the number of active features per row")
            k = check_number(k, "k", low=1, high=n_features, integer=True)
        elif k is not None:
            raise ValueError(f"k: only kind 'topk' or 'batchtopk' takes k; got kind={kind!r}")
        if normalize is not None:
            normalize = check_choice(normalize, "normalize", ("scale",))
        self.d_in, self.n_features, self.kind, self.k = d_in, n_features, kind, k
        self.l1_coef = check_number(l1_coef, "l1_coef", low=0)
        self.l0_coef = check_number(l0_coef, "l0_coef", low=0)
        self.bandwidth = check_number(bandwidth, "bandwidth", low=0, low_open=True)
        threshold = check_number(threshold, "threshold", low=0, low_open=True)
        self.aux_k = (d_in // 2 if aux_k is None else check_number(aux_k, "aux_k", low=0, integer=True))
        self.aux_k = min(self.aux_k, n_features)
        self.aux_coef = check_number(aux_coef, "aux_coef", low=0)
        self.normalize = normalize
        self.seed = check_number(seed, "seed", integer=True)
        self._init_threshold = threshold

        g = torch_generator(self.seed)
        w = torch.randn(n_features, d_in, generator=g, dtype=torch.float64)
        w = w / torch.linalg.vector_norm(w, dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w.to(dtype))
        self.W_enc = nn.Parameter(w.T.contiguous().to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(n_features, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        if kind == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((n_features,), math.log(threshold), dtype=dtype))
        self.register_buffer("input_scale", torch.ones((), dtype=dtype))
        self.register_buffer("steps_since_fired", torch.zeros(n_features, dtype=torch.int64))
        # batchtopk: the threshold used at evaluation (running mean of the smallest kept code)
        self.register_buffer("eval_threshold", torch.zeros((), dtype=dtype))
        self.register_buffer("eval_threshold_count", torch.zeros((), dtype=torch.int64))

    # ------------------------------------------------------------------ configuration, I/O
    @property
    def config(self) -> dict:
        """The constructor arguments (JSON-able): ``SAE(**config)`` rebuilds the architecture."""
        return {"d_in": self.d_in, "n_features": self.n_features, "kind": self.kind, "k": self.k,
                "l1_coef": self.l1_coef, "l0_coef": self.l0_coef, "threshold": self._init_threshold,
                "bandwidth": self.bandwidth, "aux_k": self.aux_k, "aux_coef": self.aux_coef,
                "normalize": self.normalize, "seed": self.seed,
                "dtype": str(self.W_dec.dtype).replace("torch.", "")}

    def extra_repr(self) -> str:
        extra = f", k={self.k}" if self.k else ""
        return f"d_in={self.d_in}, n_features={self.n_features}, kind={self.kind!r}{extra}"

    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        """Save weights and configuration without pickle.

        ``*.safetensors`` (when the ``safetensors`` package is installed): the tensors, with the
        configuration as JSON in the file's metadata. Otherwise ``.npz``: one array per tensor and
        the configuration as a JSON string in ``__config__`` (read back without ``allow_pickle``).
        ``meta`` (JSON-able) is stored beside the configuration (training record, layer, model).
        """
        path = Path(path)
        header = json.dumps({"format": _FORMAT, "config": self.config, "meta": meta or {}})
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import save_file
            except ImportError as e:  # pragma: no cover - safetensors is optional
                raise ImportError("saving to .safetensors needs the safetensors package "
                                  "(pip install safetensors); or save to .npz") from e
            save_file(tensors, str(path), metadata={"lumos": header})
            return path
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays = {k: v.numpy() for k, v in tensors.items()}
        arrays["__config__"] = np.frombuffer(header.encode(), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "SAE":
        """An :class:`SAE` saved by :meth:`save` (``.npz`` or ``.safetensors``); ``.meta`` holds its meta."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"path: no SAE file at {path}")
        if path.suffix == ".safetensors":
            try:
                from safetensors import safe_open
            except ImportError as e:  # pragma: no cover - safetensors is optional
                raise ImportError("reading a .safetensors SAE needs the safetensors package "
                                  "(pip install safetensors)") from e

            with safe_open(str(path), framework="pt") as f:
                header = json.loads((f.metadata() or {}).get("lumos", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        else:
            with np.load(path, allow_pickle=False) as z:
                if "__config__" not in z.files:
                    raise ValueError(f"path: {path} is not an SAE saved by lumos (no __config__)")
                header = json.loads(bytes(z["__config__"]).decode())
                tensors = {k: torch.from_numpy(z[k].copy()) for k in z.files if k != "__config__"}
        if header.get("format") != _FORMAT:
            raise ValueError(f"path: {path} is not an SAE saved by lumos (format {header.get('format')!r})")
        cfg = dict(header["config"])
        cfg["dtype"] = getattr(torch, cfg.get("dtype", "float32"))
        sae = cls(**cfg)
        sae.load_state_dict(tensors)
        sae.meta = header.get("meta", {})
        return sae.to(device)

    # ------------------------------------------------------------------ the map
    def _in(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        if x.ndim < 1 or x.shape[-1] != self.d_in:
            raise ValueError(f"x: expected activations with last axis {self.d_in}; got shape {tuple(x.shape)}")
        return x.to(device=self.W_dec.device, dtype=self.W_dec.dtype) * self.input_scale

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``(x * scale - b_dec) @ W_enc + b_enc``, shape ``(..., n_features)``."""
        return (self._in(x) - self.b_dec) @ self.W_enc + self.b_enc

    @property
    def threshold(self) -> torch.Tensor:
        """JumpReLU thresholds ``exp(log_threshold)`` (``jumprelu`` only)."""
        return self.log_threshold.exp()

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """Codes from pre-activations (the kind's activation function)."""
        if self.kind == "relu":
            return torch.relu(pre)
        if self.kind == "jumprelu":
            return _JumpReLU.apply(pre, self.threshold, self.bandwidth)
        if self.kind == "topk":
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        # batchtopk
        if self.training:
            flat = pre.reshape(-1, self.n_features)
            n_keep = min(self.k * len(flat), flat.numel())
            top = torch.relu(flat).flatten().topk(n_keep)
            codes = torch.zeros(flat.numel(), dtype=pre.dtype, device=pre.device)
            codes = codes.scatter(0, top.indices, top.values).reshape(pre.shape)
            kept = top.values[top.values > 0]
            if len(kept):
                with torch.no_grad():  # running mean of the smallest kept code
                    n = self.eval_threshold_count
                    self.eval_threshold.mul_(n / (n + 1)).add_(kept.min().detach() / (n + 1))
                    self.eval_threshold_count.add_(1)
            # the kept codes are the pre-activations themselves (their gradient flows)
            return torch.where(codes != 0, pre, torch.zeros_like(pre))
        return pre * (pre > self.eval_threshold).to(pre.dtype) * (pre > 0).to(pre.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (codes) of ``x``: shape ``(..., n_features)``."""
        return self.activate(self.pre_activations(x))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Reconstructions ``(codes @ W_dec + b_dec) / scale`` in the input's units."""
        return (codes @ self.W_dec + self.b_dec) / self.input_scale

    def forward(self, x: torch.Tensor) -> SAEOutput:
        pre = self.pre_activations(x)
        codes = self.activate(pre)
        return SAEOutput(self.decode(codes), codes, pre)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``."""
        return self.decode(self.encode(x))

    # ------------------------------------------------------------------ training pieces
    def dead_mask(self, dead_after: int) -> torch.Tensor:
        """Features that have not fired in the last ``dead_after`` training rows."""
        return self.steps_since_fired >= int(dead_after)

    @torch.no_grad()
    def update_fired(self, codes: torch.Tensor) -> None:
        """Count rows since each feature last fired (called on every training batch)."""
        fired = (codes.reshape(-1, self.n_features) != 0).any(0)
        self.steps_since_fired.add_(codes.reshape(-1, self.n_features).shape[0])
        self.steps_since_fired[fired] = 0

    def loss(self, x: torch.Tensor, sparsity_scale: float = 1.0, dead: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, float], SAEOutput]:
        """The training loss of a batch ``(rows, d_in)`` and its parts.

        ``mse`` is the squared error summed over dimensions, averaged over rows, in the normalised
        units (scale 1 without ``normalize``). ``sparsity`` is the L1 (relu) or L0 (jumprelu) term
        times its coefficient and ``sparsity_scale`` (the L1 warm-up). ``aux`` is the auxiliary-k
        loss of ``topk``/``batchtopk`` over the features in ``dead``.
        """
        out = self.forward(x)
        xs = self._in(x)
        rs = out.recon * self.input_scale
        err = rs - xs
        mse = err.pow(2).sum(-1).mean()
        parts = {"mse": float(mse.detach())}
        total = mse
        if self.kind == "relu":
            l1 = (out.codes.abs() * torch.linalg.vector_norm(self.W_dec, dim=1)).sum(-1).mean()
            sp = self.l1_coef * sparsity_scale * l1
            total = total + sp
            parts["sparsity"] = float(sp.detach())
        elif self.kind == "jumprelu":
            l0 = _Step.apply(out.pre, self.threshold, self.bandwidth).sum(-1).mean()
            sp = self.l0_coef * sparsity_scale * l0
            total = total + sp
            parts["sparsity"] = float(sp.detach())
        elif dead is not None and self.aux_k > 0 and self.aux_coef > 0 and bool(dead.any()):
            n_dead = int(dead.sum())
            k_aux = min(self.aux_k, n_dead)
            pre_dead = torch.where(dead, out.pre, torch.full_like(out.pre, -torch.inf))
            top = pre_dead.topk(k_aux, dim=-1)
            aux_codes = torch.zeros_like(out.pre).scatter(-1, top.indices, torch.relu(top.values))
            e_hat = aux_codes @ self.W_dec
            resid = (xs - rs).detach()
            aux = (e_hat - resid).pow(2).sum(-1).mean() / resid.pow(2).sum(-1).mean().clamp_min(1e-12)
            aux = self.aux_coef * aux
            total = total + aux
            parts["aux"] = float(aux.detach())
        parts["loss"] = float(total.detach())
        return total, parts, out

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Put every decoder direction (row of ``W_dec``) back on the unit sphere."""
        self.W_dec.div_(torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Remove from ``W_dec.grad`` its component along each (unit) decoder direction."""
        g = self.W_dec.grad
        if g is None:
            return
        d = self.W_dec / torch.linalg.vector_norm(self.W_dec, dim=1, keepdim=True).clamp_min(1e-12)
        g.sub_((g * d).sum(1, keepdim=True) * d)

    @torch.no_grad()
    def fit_normalization(self, x: torch.Tensor) -> None:
        """Set ``input_scale`` so that the mean squared norm of ``x * scale`` is ``d_in`` (``normalize="scale"``)."""
        if self.normalize != "scale":
            return
        x = torch.as_tensor(x).to(torch.float64)
        ms = float(x.pow(2).sum(-1).mean())
        self.input_scale.fill_(math.sqrt(self.d_in / ms) if ms > 0 else 1.0)

    @torch.no_grad()
    def init_decoder_bias(self, x: torch.Tensor, method: str = "geometric_median") -> None:
        """Set ``b_dec`` to the geometric median (Weiszfeld) or the mean of the rows of ``x`` (normalised units)."""
        method = check_choice(method, "method", ("geometric_median", "mean"))
        xs = self._in(x).to(torch.float64)
        m = geometric_median(xs) if method == "geometric_median" else xs.mean(0)
        self.b_dec.copy_(m.to(self.b_dec.dtype))


@torch.no_grad()
def resample_dead(sae: SAE, x: torch.Tensor, dead: torch.Tensor, *, seed: int = 0,
                  optimizer: torch.optim.Optimizer | None = None, encoder_scale: float = 0.2) -> int:
    """Re-initialise dead features from inputs the SAE reconstructs badly (Bricken et al. 2023).

    Rows of ``x`` are drawn with probability proportional to their squared reconstruction loss;
    each dead feature's decoder direction becomes its row (minus ``b_dec``, normalised), its encoder
    column the same direction scaled to ``encoder_scale`` times the mean encoder norm of the alive
    features, its encoder bias 0. The optimiser's moments of those entries are reset. Returns the
    number of features resampled.
    """
    dead = torch.as_tensor(dead, dtype=torch.bool, device=sae.W_dec.device)
    n_dead = int(dead.sum())
    if n_dead == 0:
        return 0
    xs = sae._in(x)
    loss = (sae.reconstruct(x) * sae.input_scale - xs).pow(2).sum(-1).to(torch.float64)
    p = loss.pow(2)
    g = torch_generator(seed)
    if float(p.sum()) <= 0:
        p = torch.ones_like(p)
    pick = torch.multinomial((p / p.sum()).cpu(), n_dead, replacement=True, generator=g)  # independent draws
    dirs = xs[pick.to(xs.device)] - sae.b_dec
    dirs = dirs / torch.linalg.vector_norm(dirs, dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    enc_norm = (torch.linalg.vector_norm(sae.W_enc[:, alive], dim=0).mean() if bool(alive.any())
                else torch.ones((), dtype=sae.W_enc.dtype, device=sae.W_enc.device))
    idx = dead.nonzero().flatten()
    sae.W_dec[idx] = dirs
    sae.W_enc[:, idx] = dirs.T * enc_norm * encoder_scale
    sae.b_enc[idx] = 0
    sae.steps_since_fired[idx] = 0
    if optimizer is not None:
        for p_, sl in ((sae.W_dec, (idx,)), (sae.W_enc, (slice(None), idx)), (sae.b_enc, (idx,))):
            state = optimizer.state.get(p_, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][sl] = 0
    return n_dead
