"""Sparse dictionaries: activation caches, sparse autoencoders and their metrics (issue 17).

* Activation caches (:mod:`~lumos.dictionary.cache`): a layer's activations over a data set, on
  disk in checksummed memory-mapped shards with a manifest, resumable, read in shuffled batches.
* Sparse autoencoders (:mod:`~lumos.dictionary.sae`): ReLU + L1, TopK, BatchTopK and JumpReLU;
  geometric-median decoder bias; dead-feature resampling or the auxiliary-k loss; saved without
  pickle.
* Training (:mod:`~lumos.dictionary.train`): Adam with warm-ups, checkpoints, seeded.
* Metrics (:mod:`~lumos.dictionary.metrics`): L0, L1, MSE, explained variance about the mean,
  cosine, dead/dense fraction, density histogram, downstream loss recovered by splicing.
* Views (:mod:`~lumos.dictionary.dashboard`, :mod:`~lumos.dictionary.attribution`): feature
  dashboards as self-contained HTML; a target reading a feature (any method explains it by the
  input) and the output explained by the features (gradient x activation, ablation).
* :mod:`~lumos.dictionary.softmax_linear` (Softmax Linear Units) and :mod:`~lumos.dictionary.superposition`
  (the toy model of superposition and its phase picture).

See ``docs/dictionary.md``.
"""
from .cache import ActivationCache, CorruptShardError, cache_activations, flatten_positions
from .metrics import (LossRecovered, SAEMetrics, cosine_similarity, dead_fraction, dense_fraction,
                      density_histogram, evaluate, explained_variance, feature_density, l0, l1,
                      loss_recovered, mse, splice)
from .sae import KINDS, SAE, SAEOutput, geometric_median, resample_dead
from .train import TrainResult, train_sae
from .attribution import FeatureTarget, feature_attribution, feature_target
from .dashboard import FeatureDashboards, feature_dashboards
from .softmax_linear import SoLU, solu
from .superposition import PhaseDiagram, ToyModel, phase_diagram, train_toy_model

__all__ = [
    "ActivationCache", "CorruptShardError", "cache_activations", "flatten_positions",
    "SAE", "SAEOutput", "KINDS", "geometric_median", "resample_dead",
    "TrainResult", "train_sae",
    "SAEMetrics", "evaluate", "l0", "l1", "mse", "explained_variance", "cosine_similarity",
    "feature_density", "dead_fraction", "dense_fraction", "density_histogram",
    "LossRecovered", "loss_recovered", "splice",
    "FeatureTarget", "feature_target", "feature_attribution", "FeatureDashboards", "feature_dashboards",
    "SoLU", "solu", "ToyModel", "train_toy_model", "PhaseDiagram", "phase_diagram",
]
