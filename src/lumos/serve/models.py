"""The models a ``lumos serve`` app explains: the demo models and a user's, several at once.

A :class:`ServedModel` is one model with what the app needs to explain it: its kind of input
(``"image"``, ``"table"`` or ``"text"``), class and feature names, the methods and metrics that fit
it, and their affordable default parameters. :class:`ModelRegistry` holds them by id; demo models
are loaded on first use (under a lock, once). No torch import at module import time.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["ServedModel", "ModelRegistry", "DEMO_MODELS", "demo_model", "user_model", "served",
           "IMAGE_METHODS", "TABLE_TORCH_METHODS", "TABLE_BLACKBOX_METHODS", "KINDS"]

KINDS = ("image", "table", "text")

# Methods offered per kind of input: these first, in this order (each was run on the demo model of
# its kind), then any other registered method that fits (a method added to lumos later shows up
# without a change here; one that fails on a model reports its own error in the result).
IMAGE_METHODS = ("saliency", "gradient_x_input", "integrated_gradients", "smoothgrad", "smoothgrad_sq",
                 "vargrad", "gradcam", "gradcam_pp", "layercam", "scorecam", "cam", "guided_gradcam",
                 "guided_backprop", "deconvnet", "deeplift", "lrp", "occlusion", "rise",
                 "meaningful_perturbation", "kernel_shap", "permutation_shap", "lime", "deep_shap",
                 "gradient_shap")
TABLE_TORCH_METHODS = ("saliency", "gradient_x_input", "integrated_gradients", "smoothgrad", "deeplift", "lrp",
                       "occlusion", "kernel_shap", "permutation_shap", "exact_shapley", "lime", "deep_shap",
                       "gradient_shap")
TABLE_BLACKBOX_METHODS = ("kernel_shap", "permutation_shap", "exact_shapley", "lime")
# registered methods that do not fit a kind: they need a text, a tree ensemble, a convolutional
# layer or an image grid, return pairs instead of one value per feature, or remove features by
# writing numbers into a DataFrame that holds strings
_TREES = {"tree_shap", "tree_shap_interactions", "exact_shapley_interactions"}
NOT_FOR = {
    "image": {"crop_similarity", "exact_shapley"} | _TREES,
    "table_torch": {"cam", "gradcam", "gradcam_pp", "guided_gradcam", "layercam", "scorecam", "crop_similarity",
                    "meaningful_perturbation", "rise"} | _TREES,
    "table_blackbox": {"crop_similarity", "occlusion", "rise", "feature_ablation", "meaningful_perturbation"} | _TREES,
}
# methods that need a reference set (``background=``): offered only when the model has one
NEEDS_BACKGROUND = {"deep_shap", "gradient_shap", "kernel_shap", "permutation_shap", "exact_shapley", "lime"}
IMAGE_NEEDS_BACKGROUND = {"deep_shap", "gradient_shap"}  # the others mask images with their own fill

# Cheap defaults for an interactive page (the methods' own defaults are for single careful use):
# lumos.metrics.compare's affordable settings, with these changes (seeds fixed, fewer RISE masks).
METHOD_PARAMS: dict[str, dict] = {
    "rise": {"n_masks": 500, "seed": 0},
    "kernel_shap": {"seed": 0},
    "permutation_shap": {"seed": 0},
    "lime": {"seed": 0},
    "gradient_shap": {"seed": 0},
}


def default_params(method: str) -> dict:
    """The app's default parameters of ``method`` (see :data:`METHOD_PARAMS`)."""
    from ..metrics.comparison import COMPARE_METHOD_PARAMS

    return {**COMPARE_METHOD_PARAMS.get(method, {}), **METHOD_PARAMS.get(method, {})}


# Metric name -> parameters, per kind of input (fast ones: a few model calls per map).
METRICS: dict[str, dict[str, dict]] = {
    "image": {"deletion": {"n_steps": 16}, "insertion": {"n_steps": 16}, "sparseness": {}},
    "table_torch": {"deletion": {}, "insertion": {}, "sparseness": {}},
    # the faithfulness metrics cannot remove string columns of a DataFrame: complexity only
    "table_blackbox": {"sparseness": {}, "entropy": {}},
    "text": {"deletion": {}, "sparseness": {}},
}

DEFAULT_METHODS = {"image": ("saliency", "integrated_gradients", "gradcam"),
                   "table_torch": ("saliency", "gradient_x_input", "integrated_gradients"),
                   "table_blackbox": ("kernel_shap", "permutation_shap", "lime"),
                   "text": ("saliency", "integrated_gradients", "occlusion")}


@dataclass
class ServedModel:
    """One model of the app.

    Parameters
    ----------
    id : str
        Its key in the registry and URLs (letters, digits, ``-`` and ``_``).
    name : str
        Shown on the pages.
    kind : {"image", "table", "text"}
    model : object
        A ``torch.nn.Module`` (any kind) or a predict function / scikit-learn estimator (tables).
    class_names, feature_names : list of str, optional
    tokenizer : optional
        Text models: the Hugging Face tokenizer.
    background : optional
        Reference rows/images for the methods that need them.
    input_size : (H, W), optional
        Image models: uploads are resized to this size (default: kept as uploaded).
    channels : {1, 3}
        Image models: the channels the model takes.
    explain_params : dict
        Passed to every method (e.g. ``{"output": "decision_function"}`` for a scikit-learn model).
    single_output : bool
        The explained output is one score (no class to choose): the page offers no target.
    output_name : str, optional
        What that one score is, as the result names it ("log-odds of repaying").
    example : str
        A sample input shown in the form (a CSV header and row, or a sentence).
    source : {"demo", "user"}
    loader : callable, optional
        Called once, on first use, to fill ``model`` and the rest (the demo models).
    """

    id: str
    name: str
    kind: str
    model: Any = None
    class_names: list[str] | None = None
    feature_names: list[str] | None = None
    tokenizer: Any = None
    background: Any = None
    input_size: tuple[int, int] | None = None
    channels: int = 3
    explain_params: dict = field(default_factory=dict)
    single_output: bool = False
    output_name: str | None = None
    example: str = ""
    source: str = "user"
    description: str = ""
    loader: Callable[["ServedModel"], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}; got {self.kind!r}")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.id):
            raise ValueError(f"model id must be 1-64 letters, digits, '-' or '_'; got {self.id!r}")

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def ensure_loaded(self) -> "ServedModel":
        """Load the model on first use (once, also when several requests ask at the same time)."""
        if self.model is None:
            with self._lock:
                if self.model is None and self.loader is not None:
                    self.loader(self)
        if self.model is None:
            raise ValueError(f"model {self.id!r} could not be loaded")
        return self

    @property
    def is_torch(self) -> bool:
        import sys

        torch = sys.modules.get("torch")
        return torch is not None and isinstance(self.model, torch.nn.Module)

    @property
    def flavour(self) -> str:
        """The key of :data:`METRICS` / :data:`DEFAULT_METHODS`."""
        if self.kind == "table":
            return "table_torch" if self.is_torch else "table_blackbox"
        return self.kind

    def methods(self) -> list[str]:
        """The registered methods that fit this model, in page order."""
        from ..core.registry import methods as registered

        rows = list(registered())
        names = {m.name for m in rows}
        if self.kind == "text":
            from ..text.adapter import TEXT_METHODS

            # rules methods need a rule for every operation: BERT's layer norm has none
            return [m for m in TEXT_METHODS if m not in ("lrp", "deeplift") and m in names]
        first = {"image": IMAGE_METHODS, "table_torch": TABLE_TORCH_METHODS,
                 "table_blackbox": TABLE_BLACKBOX_METHODS}[self.flavour]
        fits = [m.name for m in rows if m.name not in NOT_FOR[self.flavour]
                and (self.is_torch or m.models == "any")]
        needs = IMAGE_NEEDS_BACKGROUND if self.kind == "image" else NEEDS_BACKGROUND
        ordered = [m for m in first if m in fits] + sorted(m for m in fits if m not in first)
        return [m for m in ordered if m not in needs or self.background is not None]

    def default_methods(self) -> list[str]:
        offered = self.methods()
        return [m for m in DEFAULT_METHODS[self.flavour] if m in offered] or offered[:3]

    def metrics(self) -> dict[str, dict]:
        return dict(METRICS[self.flavour])

    def method_params(self, method: str) -> dict:
        """The parameters the app passes to ``method`` unless the user overrides them."""
        params = default_params(method)
        if method in NEEDS_BACKGROUND and self.background is not None:
            params["background"] = self.background
        if self.kind in ("table", "text") and method == "occlusion":
            # one feature / token at a time, as lumos' text occlusion does by default (the image
            # defaults are 8 wide: longer than a short text)
            params.update(window=1, stride=1)
        if self.kind == "table" and not self.is_torch:
            params.update(self.explain_params)
        if self.kind == "text":
            params["tokenizer"] = self.tokenizer
        return params

    def describe(self) -> dict:
        """The JSON of ``GET /api/models`` (MODEL in SERVE_API)."""
        out = {"id": self.id, "name": self.name, "kind": self.kind, "source": self.source,
               "loaded": self.loaded, "description": self.description,
               "class_names": self.class_names, "feature_names": self.feature_names,
               "targets": None if self.single_output else self.class_names}
        if self.loaded:
            out.update(methods=self.methods(), default_methods=self.default_methods(),
                       metrics=list(self.metrics()))
        else:
            out.update(methods=None, default_methods=None, metrics=None)
        return out


# --------------------------------------------------------------------------- demo models
def _load_shapes(m: ServedModel) -> None:
    from ..data import load_demo_model, shapes_dataset

    model = load_demo_model()
    m.class_names = list(model.class_names)
    m.background = shapes_dataset(8, split="train", seed=11).images  # for deep_shap / gradient_shap
    m.model = model


def _load_credit(m: ServedModel) -> None:
    from threadpoolctl import threadpool_limits

    from ..agnostic._demo import _fit_credit_model
    from ..data.credit import credit_dataset

    world = credit_dataset(1000, seed=0)
    with threadpool_limits(1):
        model = _fit_credit_model(world.X.iloc[:800], world.y[:800])
    m.feature_names = list(world.feature_names)
    m.class_names = ["does not repay", "repays"]  # y = 1: repaid
    m.background = world.X.iloc[:25].reset_index(drop=True)
    row = world.X.iloc[[800]]
    m.example = row.to_csv(index=False).strip()
    m.model = model


def _load_text(m: ServedModel) -> None:
    from ..data import load_text_classifier

    model, tok = load_text_classifier()
    m.class_names = list(model.class_names)
    m.tokenizer = tok
    m.model = model


def _text_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


# id -> (make, available)
DEMO_MODELS: dict[str, tuple[Callable[[], ServedModel], Callable[[], bool]]] = {
    "shapes": (lambda: ServedModel(
        "shapes", "Shapes world CNN (demo)", "image", source="demo", input_size=(64, 64),
        description="The shipped DemoCNN: 64x64 RGB images of four shapes; background of 8 training images.",
        loader=_load_shapes), lambda: True),
    "credit": (lambda: ServedModel(
        "credit", "Credit world scorer (demo)", "table", source="demo",
        explain_params={"output": "decision_function"}, single_output=True,
        output_name="the log-odds of repaying (decision_function)",
        description="A gradient-boosting pipeline fitted on the synthetic credit world (1000 applicants); "
                    "explains the log-odds of repaying against 25 background applicants.",
        loader=_load_credit), lambda: True),
    "text": (lambda: ServedModel(
        "text", "Text world classifier (demo)", "text", source="demo",
        example="the plot was dull but the acting was wonderful",
        description="The 2-layer BERT trained on the text world (negative / positive).",
        loader=_load_text), _text_available),
}


def demo_model(name: str) -> ServedModel:
    """A fresh (not yet loaded) demo model by id: ``"shapes"``, ``"credit"`` or ``"text"``."""
    from ..core.validation import check_choice

    check_choice(name, "demo", list(DEMO_MODELS))
    make, available = DEMO_MODELS[name]
    if not available():
        raise ValueError(f"demo: the {name!r} demo model needs the 'text' extra (pip install 'lumos[text]')")
    return make()


# --------------------------------------------------------------------------- user models
def _infer(model: Any) -> tuple[str, dict]:
    """(kind, extra fields) of a user's torch module from its first layer."""
    import torch
    from torch import nn

    if not isinstance(model, nn.Module):
        raise ValueError("kind: only torch modules have their kind inferred; give kind='table' for a "
                         "predict function")
    if callable(getattr(model, "get_input_embeddings", None)):
        raise ValueError("kind: text models need their tokenizer: give kind='text' and tokenizer=... "
                         "(lumos serve: --kind text --tokenizer DIR)")
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            return "image", {"channels": int(mod.in_channels)}
        if isinstance(mod, nn.Linear):
            return "table", {"n_features": int(mod.in_features)}
        if isinstance(mod, (nn.Conv1d, nn.Conv3d, nn.RNNBase, nn.Embedding)):
            break
    del torch
    raise ValueError(f"kind: cannot tell whether {type(model).__name__} takes images or table rows "
                     "(its first layer is neither Conv2d nor Linear); give kind='image' or kind='table'")


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:64]
    return s or "model"


def served(model: Any, *, id: str, name: str | None = None, kind: str | None = None,
           class_names: Sequence[str] | None = None, feature_names: Sequence[str] | None = None,
           background: Any = None, input_size: Sequence[int] | None = None, tokenizer: Any = None,
           explain_params: dict | None = None, source: str = "user", description: str = "") -> ServedModel:
    """A :class:`ServedModel` for a model object (kind inferred for torch modules when not given)."""
    from ..core.io import class_names_of

    extra: dict = {}
    if kind is None:
        kind, extra = _infer(model)
    elif kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)} or None; got {kind!r}")
    if kind == "image" and "channels" not in extra:
        try:
            _, extra = _infer(model)
        except ValueError:
            extra = {}
    if kind == "text" and tokenizer is None:
        raise ValueError("tokenizer: a text model is served with its tokenizer")
    names = [str(c) for c in class_names] if class_names is not None else class_names_of(model)
    feats = [str(f) for f in feature_names] if feature_names is not None else getattr(model, "feature_names", None)
    if kind == "table" and feats is None and "n_features" in extra:
        feats = [f"x{j}" for j in range(extra["n_features"])]
    if input_size is None:
        input_size = getattr(model, "input_size", None)
    m = ServedModel(_slug(id), str(name or id), kind, model=model, class_names=names,
                    feature_names=None if feats is None else [str(f) for f in feats], tokenizer=tokenizer,
                    background=background, input_size=None if input_size is None else
                    (int(input_size[-2]), int(input_size[-1])),
                    channels=int(extra.get("channels", 3)), explain_params=dict(explain_params or {}),
                    source=source, description=description)
    if kind == "table" and m.feature_names:
        m.example = ",".join(m.feature_names) + "\n" + ",".join("0" for _ in m.feature_names)
    if kind == "image" and m.channels not in (1, 3):
        raise ValueError(f"image models take 1 or 3 channels; this one takes {m.channels}")
    return m


def user_model(factory: str, weights: str | None = None, *, kind: str | None = None, id: str,
               name: str | None = None, size: Sequence[int] | None = None, tokenizer: str | None = None,
               tokenizer_name: str = "tokenizer") -> ServedModel:
    """A user's model from ``package.module:factory`` and a state-dict file, loaded as ``lumos explain``
    does (:func:`lumos.core.io.load_user_model`: ``weights_only=True``, never unpickled). ``size``
    (H, W): image uploads are resized to it (as ``lumos explain --size``).

    Text models (``kind="text"``) are loaded as ``lumos explain --text`` loads them
    (:func:`lumos.core.io.load_text_model`): ``tokenizer`` is the folder of a Hugging Face
    tokenizer, read offline, or the factory returns ``(model, tokenizer)`` (then ``kind`` may be
    left out). ``tokenizer_name`` names the tokenizer in messages (``"--tokenizer"`` on the command line).
    """
    from ..core.io import load_text_model, load_user_model

    if size is not None:
        if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size):
            raise ValueError(f"size must be two positive ints (H, W); got {size!r}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)} or None; got {kind!r}")
    if tokenizer and kind != "text":
        raise ValueError(f"{tokenizer_name}: a tokenizer folder goes with kind 'text'; got kind {kind or 'auto'!r}")
    if kind == "text" and size is not None:
        raise ValueError("size: resizing is for image models, not kind 'text'")
    tok = None
    if kind == "text":
        model, tok = load_text_model(factory, weights, tokenizer or None, tokenizer_name=tokenizer_name)
    else:
        model = load_user_model(factory, weights, None)
        if isinstance(model, tuple):  # the factory returned (model, tokenizer): a text model
            if kind is not None:
                raise ValueError(f"kind: {factory} returns (model, tokenizer), a text model; got kind {kind!r}")
            (model, tok), kind = model, "text"
    return served(model, id=id, name=name or factory, kind=kind, input_size=size, tokenizer=tok,
                  description=f"{factory}" + (" with weights from an uploaded file" if weights else "")
                  + (" and its tokenizer" if tok is not None else ""))


class ModelRegistry:
    """The app's models by id (thread-safe; several models are open at once)."""

    def __init__(self, limit: int = 32):
        self._models: dict[str, ServedModel] = {}
        self._lock = threading.Lock()
        self.limit = limit
        self._n_user = 0

    def add(self, model: ServedModel) -> ServedModel:
        with self._lock:
            if model.id in self._models:
                raise ValueError(f"a model with id {model.id!r} is already open")
            if len(self._models) >= self.limit:
                raise ValueError(f"at most {self.limit} models can be open at once")
            self._models[model.id] = model
        return model

    def next_user_id(self) -> str:
        with self._lock:
            while True:
                self._n_user += 1
                candidate = f"user{self._n_user}"
                if candidate not in self._models:
                    return candidate

    def get(self, model_id: str) -> ServedModel:
        with self._lock:
            m = self._models.get(model_id)
        if m is None:
            raise KeyError(model_id)
        return m

    def __iter__(self):
        with self._lock:
            return iter(list(self._models.values()))

    def __len__(self) -> int:
        return len(self._models)
