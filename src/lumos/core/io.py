"""Loading a user's model and inputs from files, safely.

The command line (``lumos explain``, ``lumos layers``, ``lumos compare``) and any script that
starts from files use these: a model from ``package.module:factory`` plus a state-dict file, or a
TorchScript file; inputs from an image file, a ``.pt`` tensor or a ``.npy`` array.

Nothing is ever unpickled: ``.pt`` files are read with ``torch.load(..., weights_only=True)`` and
``.npy`` files with ``allow_pickle=False``. A file that would need to run code to load, or that is
not what it claims to be, raises :class:`LoadError` (a ``ValueError``) that names the argument and
the file, never a deep torch traceback.

Path checks (:func:`check_file`) and text parsing (:func:`parse_target`) import neither torch nor
NumPy, so that a command line can report a missing file or a bad value at once.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["LoadError", "check_file", "parse_target", "load_user_model", "load_tokenizer", "load_text_model",
           "load_input", "class_names_of"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class LoadError(ValueError):
    """A model or input file that cannot be loaded safely (wrong format, corrupt, or pickled code)."""


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, synced, then renamed:
    a crash at any point leaves either the old file or the new one, never half a file."""
    import os
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def sha256_file(path: str | Path, offset: int = 0) -> str:
    """SHA-256 (hex) of a file's bytes from ``offset`` on, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(offset)
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_file(path: str | Path, name: str) -> Path:
    """``path`` as a :class:`~pathlib.Path` to an existing regular file.

    Parameters
    ----------
    path : str or Path
    name : str
        The argument's name for the message (``"--input"``, ``"weights"``).

    Raises
    ------
    FileNotFoundError
        Naming ``name`` and the path, when it does not exist or is a folder.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{name} {str(path)!r} does not exist")
    if not p.is_file():
        raise FileNotFoundError(f"{name} {str(path)!r} is not a file")
    return p


def parse_target(text: str | None, name: str = "--target"):
    """A target given as text: ``None``/``"predicted"``, an int, or a comma list of ints.

    Raises
    ------
    ValueError
        Naming ``name``, for anything else.
    """
    if text is None or text == "predicted":
        return text
    try:
        if "," in text:
            return [int(t) for t in text.split(",")]
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an int, a comma list of ints or 'predicted'; got {text!r}") from None


def _torch_load(path: Path, name: str):
    """``torch.load(weights_only=True)`` with the reasons it refuses a file put in one clear error."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message suggests weights_only=False: exactly what must not be done with a file
        # that wants to run code. Keep only the name of what it asked for.
        # keep only torch's line naming what the file asked for ("unsupported GLOBAL posix.system ...")
        detail = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line.upper()
                       and "unsupported" in line.lower()), "")
        if not detail:  # not a pickle of objects at all: bytes the unpickler cannot read
            raise LoadError(f"{name} {str(path)!r} is not a readable torch file (refused by the "
                            f"weights-only unpickler)") from None
        raise LoadError(
            f"{name} {str(path)!r} holds pickled Python objects, not plain tensors ({detail}). lumos "
            f"never unpickles code: save the weights with torch.save(model.state_dict(), path) and "
            f"the inputs with torch.save(tensor, path)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise LoadError(f"{name} {str(path)!r} is not a readable torch file ({first})") from None


def load_user_model(spec: str | None = None, weights: str | Path | None = None,
                    torchscript: str | Path | None = None):
    """A user's model, in eval mode on the CPU.

    Parameters
    ----------
    spec : str, optional
        ``"package.module:factory"``: ``factory()`` returns a ``torch.nn.Module``. The current
        folder is searched first, so a script beside the command works.
    weights : str or Path, optional
        A state-dict file for the factory's model (``torch.save(model.state_dict(), path)``, or a
        dict with a ``"state_dict"`` entry), read with ``weights_only=True``.
    torchscript : str or Path, optional
        A TorchScript file (``torch.jit.save``), instead of ``spec``.

    Returns
    -------
    torch.nn.Module
        Or ``(module, tokenizer)`` when the factory returns that pair (a text model; the weights
        go into the module).

    Raises
    ------
    FileNotFoundError
        A named file does not exist (checked before torch is imported).
    LoadError
        A file that is not a state dict / TorchScript archive, that holds pickled code, or whose
        keys do not fit the factory's model.
    ValueError
        ``spec`` is not ``package.module:factory``, or cannot be imported.
    """
    if torchscript:
        path = check_file(torchscript, "torchscript")
        import warnings

        import torch

        try:
            with warnings.catch_warnings():  # torch deprecates jit.load; the user chose TorchScript
                warnings.filterwarnings("ignore", r".*torch\.jit\.load.* is deprecated", DeprecationWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, ValueError, OSError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise LoadError(f"torchscript {str(path)!r} is not a TorchScript archive ({first})") from None
        return model.eval()
    if not spec or ":" not in spec:
        raise ValueError(f"model must be 'package.module:factory' (or give a TorchScript file); got {spec!r}")
    wpath = check_file(weights, "weights") if weights else None
    mod_name, attr = spec.split(":", 1)
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load model {spec!r}: {err}") from None
    model = factory()
    if isinstance(model, tuple) and len(model) == 2:  # (model, tokenizer): the weights go into the model
        return _load_weights(model[0], wpath, spec), model[1]
    return _load_weights(model, wpath, spec)


def _load_weights(model, wpath: Path | None, spec: str):
    """``model`` with the state dict of ``wpath`` loaded (``weights_only=True``), in eval mode."""
    if wpath is not None:
        state = _torch_load(wpath, "weights")
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise LoadError(f"weights {str(wpath)!r} must hold a state dict; got {type(state).__name__}")
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise LoadError(f"weights {str(wpath)!r} do not fit the model of {spec!r}: "
                            f"{' '.join(str(err).split())[:400]}") from None
    # a torch module goes to eval mode; other models (estimators, predict functions) come as they are
    return model.eval() if hasattr(model, "load_state_dict") else model


def load_tokenizer(path: str | Path, name: str = "--tokenizer"):
    """A Hugging Face tokenizer from a local folder, read offline (``local_files_only=True``; a name
    that is not a folder is refused, never looked up on the Hub; ``trust_remote_code=False``).

    Raises
    ------
    FileNotFoundError
        Naming ``name``, when ``path`` is not a folder.
    LoadError
        Naming ``name``, when the folder holds no tokenizer transformers can read.
    """
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{name}: no such folder: {path}")
    from transformers import AutoTokenizer

    try:
        # code shipped in the folder (an ``auto_map`` tokenizer class) is never run
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as err:
        if "trust_remote_code" in str(err):  # its message suggests running the folder's code: never
            raise LoadError(f"{name} {str(path)!r} holds custom tokenizer code (an auto_map class); lumos "
                            "never runs code from a tokenizer folder: save a standard tokenizer with "
                            "save_pretrained") from None
        first = " ".join(str(err).split())[:300] or type(err).__name__
        raise LoadError(f"{name} {str(path)!r} is not a readable Hugging Face tokenizer folder ({first})") from None


def load_text_model(spec: str, weights: str | Path | None = None, tokenizer: str | Path | None = None, *,
                    tokenizer_name: str = "--tokenizer"):
    """A user's text model and its tokenizer: ``(model, tokenizer)``.

    Parameters
    ----------
    spec, weights
        As :func:`load_user_model`; the factory returns a module, or ``(module, tokenizer)``.
    tokenizer : str or Path, optional
        A Hugging Face tokenizer folder (:func:`load_tokenizer`); required unless the factory
        returns its tokenizer, and used instead of it when given.
    tokenizer_name : str
        The argument's name for messages.

    Raises
    ------
    ValueError
        No tokenizer: neither a folder nor a factory that returns one.
    FileNotFoundError, LoadError
        As :func:`load_user_model` and :func:`load_tokenizer`.
    """
    tok = load_tokenizer(tokenizer, tokenizer_name) if tokenizer else None  # its errors before the model is built
    loaded = load_user_model(spec, weights, None)
    model, own = loaded if isinstance(loaded, tuple) else (loaded, None)
    if tok is None and own is None:
        raise ValueError(f"{tokenizer_name}: a text model needs its tokenizer: give the folder of a Hugging Face "
                         f"tokenizer, or let {spec} return (model, tokenizer)")
    return model, tok if tok is not None else own


def load_input(path: str | Path, size: Sequence[int] | None = None, name: str = "input"):
    """Inputs from a file, as a float32 tensor.

    Parameters
    ----------
    path : str or Path
        An image (PNG, JPEG, ...) → ``(1, 3, H, W)`` in ``[0, 1]``; a ``.pt`` file holding one
        tensor, or a ``.npy`` array → that tensor as saved.
    size : (H, W), optional
        Resize image inputs (bilinear).
    name : str, default "input"
        The argument's name for messages.

    Raises
    ------
    FileNotFoundError, LoadError
    """
    p = check_file(path, name)
    suffix = p.suffix.lower()
    if suffix not in (".pt", ".pth", ".npy") + IMAGE_SUFFIXES:
        raise LoadError(f"{name} {str(path)!r}: expected an image ({', '.join(IMAGE_SUFFIXES)}), "
                        f"a .pt tensor or a .npy array")
    import numpy as np
    import torch

    if suffix in (".pt", ".pth"):
        t = _torch_load(p, name)
        if not isinstance(t, torch.Tensor):
            raise LoadError(f"{name} {str(path)!r} must hold one tensor; got {type(t).__name__}")
        return t.float()
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as err:  # object arrays need pickle; corrupt headers
            raise LoadError(f"{name} {str(path)!r} is not a plain .npy array ({err})") from None
        if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
            raise LoadError(f"{name} {str(path)!r} must hold numbers; got dtype {arr.dtype}")
        return torch.from_numpy(np.ascontiguousarray(arr)).float()
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(p).convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise LoadError(f"{name} {str(path)!r} is not a readable image ({err})") from None
    if size:
        im = im.resize((int(size[-1]), int(size[0])), Image.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def class_names_of(model: Any) -> list[str] | None:
    """The model's class names where it carries them, else ``None``.

    Looks at ``class_names``, ``classes`` (scikit-learn, torchvision-style) and a Hugging Face
    ``config.id2label``.
    """
    for attr in ("class_names", "classes"):
        names = getattr(model, attr, None)
        if names is not None and not callable(names) and not isinstance(names, (str, bytes)):
            try:
                return [str(n) for n in names]
            except TypeError:
                pass
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if isinstance(id2label, dict) and id2label:
        try:
            return [str(id2label[i]) for i in range(len(id2label))]
        except KeyError:
            return None
    return None
