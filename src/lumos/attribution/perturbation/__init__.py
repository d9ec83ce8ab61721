"""Perturbation attributions: hide part of the input and watch the explained score.

- :func:`~.occlusion.occlusion`: sliding windows, several sizes, zero/constant/mean/blur/noise fills.
- :func:`~.rise.rise`: random low-resolution masks (Petsiuk, Das & Saenko, 2018).
- :func:`~.meaningful_perturbation.meaningful_perturbation`: learned masks in the deletion and
  preservation games (Fong & Vedaldi, 2017) and extremal perturbations of a given area
  (Fong, Patrick & Vedaldi, 2019).
- :func:`~.feature_ablation.feature_ablation`: ablate groups of features (superpixels, a user
  segmentation, column groups).

All but ``meaningful_perturbation`` need only the model's outputs, so they work on any predict
function as well as on torch modules.
"""
