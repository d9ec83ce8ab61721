"""Concepts and neurons: what a network has learned, beyond one input's attribution.

* Feature visualisation (:mod:`~lumos.concepts.visualisation`): activation maximisation of
  composable objectives (:mod:`~lumos.concepts.objectives`) through pixel or decorrelated Fourier
  parametrisations (:mod:`~lumos.concepts.param`) and robustness transformations
  (:mod:`~lumos.concepts.transforms`).
* Dataset examples (:mod:`~lumos.concepts.exemplars`): the top-K and bottom-K inputs of a
  data set for classes, units, channels or directions, streamed with bounded memory, with the
  receptive-field crop that excited the unit.
* Embeddings (:mod:`~lumos.concepts.embeddings`): PCA, t-SNE and UMAP of a layer's activations,
  scatter plots and a self-contained HTML view with thumbnails.
* Network dissection (:mod:`~lumos.concepts.dissection`): each unit's top-quantile maps against
  concept masks (IoU), a label per unit and a count per concept; streamed quantiles.
* Unit ablation (:mod:`~lumos.concepts.ablation`): switch units off (zero or mean) and measure
  each class's accuracy and logit drop; concept, class and random units.
* TCAV (:mod:`~lumos.concepts.cavs`): concept activation vectors, TCAV scores, significance
  against random concepts, relative CAVs, CAVs saved as .npz + JSON.

See ``docs/concepts.md``.
"""
from . import objectives
from .exemplars import DatasetExamples, dataset_examples, receptive_field
from .embeddings import Embedding, activations, embed
from .objectives import Objective
from .visualisation import FeatureVisualisation, layer_grid, visualise
from .ablation import AblationResult, ablated, class_units, random_units, unit_ablation
from .dissection import Dissection, StreamingQuantile, dissect
from .cavs import CAV, TCAVResult, compute_cav, relative_cavs, tcav, tcav_score

__all__ = [
    "objectives", "Objective", "visualise", "FeatureVisualisation", "layer_grid",
    "dataset_examples", "DatasetExamples", "receptive_field",
    "activations", "embed", "Embedding",
    "dissect", "Dissection", "StreamingQuantile",
    "unit_ablation", "ablated", "AblationResult", "class_units", "random_units",
    "tcav", "TCAVResult", "CAV", "compute_cav", "relative_cavs", "tcav_score",
]
