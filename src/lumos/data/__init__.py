"""Demo worlds: synthetic datasets with pixel-exact ground truth, and small trained models.

The shapes world (:func:`shapes_dataset`) and its demo CNN (:func:`load_demo_model`), and the text
world (:func:`text_dataset`) with its small text models (:func:`load_text_classifier`,
:func:`load_tiny_lm`, :func:`load_minilm`, :func:`load_minilm_classifier`; they need the ``text``
extra) are described in ``docs/demo-world.md``.
"""
from .models import DemoCNN, demo_model_info, load_demo_model
from .shapes import CLASS_NAMES, ShapesData, shapes_dataset
from .text_models import load_minilm, load_minilm_classifier, load_text_classifier, load_tiny_lm
from .text_world import TextWorldData, text_dataset


def train_demo_model(*args, **kwargs):
    """Train the demo CNN reproducibly; see :func:`lumos.data.train.train_demo_model`."""
    from .train import train_demo_model as _train

    return _train(*args, **kwargs)


__all__ = ["shapes_dataset", "ShapesData", "CLASS_NAMES", "DemoCNN", "load_demo_model",
           "demo_model_info", "train_demo_model", "text_dataset", "TextWorldData", "load_text_classifier",
           "load_tiny_lm", "load_minilm", "load_minilm_classifier"]
