"""Classifier Fréchet distance: how far a set of samples is from real images, in feature space.

What is measured: fit a Gaussian to each set's features (mean ``mu``, covariance ``S``, the
unbiased sample covariance) and take the squared Fréchet (2-Wasserstein) distance between the
two Gaussians::

  d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})

vqzoo reports it as the **classifier Fréchet distance in the 128-d penultimate features of
vqzoo's own small MNIST/Fashion-MNIST classifier** (:mod:`vqzoo.training.classifier`). It is
*not* FID: FID uses the 2048-d pool features of an ImageNet-trained Inception-v3, so the numbers
here are not comparable with published FIDs (nor between datasets, nor between classifier
weights: the pinned classifier files are part of the definition of the number).

Like FID, it is biased upward for small sets (the sampled covariance is noisy): compare numbers
computed on the same number of images, thousands rather than hundreds.

Numerics: everything is float64. ``Tr (S_a S_b)^{1/2}`` is computed as the sum of the square
roots of the eigenvalues of the symmetric positive semi-definite ``S_a^{1/2} S_b S_a^{1/2}``
(which has the same eigenvalues as ``S_a S_b``), with ``S_a^{1/2}`` from a symmetric
eigendecomposition; round-off negative eigenvalues are clipped to 0. This is exact for singular
covariances (e.g. feature dimensions that are always 0 after the ReLU), where the usual
``scipy.linalg.sqrtm(S_a @ S_b)`` needs an ad-hoc diagonal offset, and needs no scipy.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def feature_moments(features: Any) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance of a feature set.

  Args:
    features: ``[N, D]``, ``N >= 2``.

  Returns:
    ``mu`` ``[D]`` and ``cov`` ``[D, D]``, float64.
  """
  x = np.asarray(features, dtype=np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f"features: expected [N, D] with N >= 2, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError("features: expected finite numbers, found NaN or Inf")
  return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues -> 0)."""
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_from_moments(mu_a: Any, cov_a: Any, mu_b: Any, cov_b: Any) -> float:
  """Squared Fréchet distance between ``N(mu_a, cov_a)`` and ``N(mu_b, cov_b)``.

  Args:
    mu_a: ``[D]``.
    cov_a: ``[D, D]`` symmetric PSD.
    mu_b: ``[D]``.
    cov_b: ``[D, D]`` symmetric PSD.

  Returns:
    ``||mu_a - mu_b||^2 + Tr(cov_a + cov_b - 2 (cov_a cov_b)^{1/2})``, >= 0.
  """
  mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
  cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
  d = mu_a.shape[0]
  if mu_a.shape != (d,) or mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
    raise ValueError(f"expected means [D] and covariances [D, D] of one D, got {mu_a.shape}, "
                     f"{cov_a.shape}, {mu_b.shape}, {cov_b.shape}")
  root_a = _psd_sqrt(cov_a)
  middle = root_a @ cov_b @ root_a
  cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)))
  value = float(np.sum(np.square(mu_a - mu_b)) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)
  return max(value, 0.0)  # round-off can leave a tiny negative number for identical sets


def frechet_distance(features_a: Any, features_b: Any) -> float:
  """Squared Fréchet distance between Gaussians fitted to two feature sets.

  Args:
    features_a: ``[N_a, D]``, ``N_a >= 2``.
    features_b: ``[N_b, D]``, ``N_b >= 2``.

  Returns:
    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})`` in float64 (returned as a Python
    float); 0 for a set against itself, symmetric in its arguments.
  """
  return frechet_distance_from_moments(*feature_moments(features_a), *feature_moments(features_b))


def classifier_frechet_distance(images_a: Any, images_b: Any, dataset: str,
                                params: Any = None) -> float:
  """The classifier Fréchet distance between two image sets (not FID; see the module docstring).

  Args:
    images_a: ``[N_a, H, W, C]`` uint8, or float in [0, 1] (e.g. samples): ``[N, 28, 28(, 1)]``
      for the grey datasets, ``[N, 32, 32, 3]`` for ``cifar10``.
    images_b: ``[N_b, H, W, C]`` likewise (e.g. the dataset's test split).
    dataset: whose shipped classifier gives the features: ``"mnist"``, ``"fashion_mnist"`` or
      ``"cifar10"``.
    params: classifier parameters to use instead of the shipped ones.

  Returns:
    :func:`frechet_distance` of the two sets' 128-d classifier features.
  """
  from vqzoo.training import classifier
  if params is None:
    params = classifier.load_classifier(dataset)
  return frechet_distance(classifier.features(params, images_a),
                          classifier.features(params, images_b))
