"""A full-model likelihood bound in bits per dimension, as reported for VQ-VAE on CIFAR-10.

The encoder's posterior ``q(z | x)`` puts all its mass on the nearest codes ``z(x)``, so its
entropy is 0 and (van den Oord et al. 2017, "Neural Discrete Representation Learning",
sections 3.1 and 4.1)::

  -log2 p(x) <= -log2 p(z(x)) - log2 p(x | z(x))

The first term is the prior's code length (:meth:`vqzoo.PretrainedVQVAE.prior_bits`; a model
without a prior gets the uniform prior's ``positions x log2 K``, the paper's ``log K`` KL
term). The second is the decoder's negative log-likelihood under a *discretised Gaussian*:
each pixel value ``k / 255`` (``k`` in 0..255) owns the bin ``[(k - 1/2) / 255,
(k + 1/2) / 255]``, with the two end bins extended to ``-inf`` and ``+inf`` so the 256
probabilities of a pixel sum to 1; the Gaussian's mean is the (clipped) reconstruction and its
standard deviation ``sigma`` one scalar fitted on the training split (:func:`fit_sigma`).
Dividing by ``H * W * C`` gives bits per dimension, the unit of the paper's CIFAR-10 figure of
4.67 bits/dim (:data:`PAPER_CIFAR10_BITS_PER_DIM`).

  from vqzoo.training.data import load_images, load_labels
  sigma = fit_sigma(model, load_images("cifar10", "train"))
  likelihood_bound(model, load_images("cifar10", "test"), sigma)["bits_per_dim"]

A decoder trained by MSE alone was never asked to model its own error: one shared ``sigma``
for every pixel of every image, and a mean that is the blurry average of the plausible
images, give a looser bound than a decoder trained on a likelihood (the paper's figure).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from vqzoo.images import as_image_batch

PAPER_CIFAR10_BITS_PER_DIM = 4.67  # van den Oord et al. 2017, section 4.1
_LOG2 = math.log(2.0)


def pixel_levels(images: Any, image_shape) -> np.ndarray:
  """Images -> ``[N, H, W, C]`` uint8 pixel levels ``k`` in 0..255.

  Args:
    images: uint8 ``[N, H, W(, C)]``, or floats in [0, 1] on the ``k / 255`` grid.
    image_shape: ``(H, W, C)``.

  Raises:
    ValueError: wrong shape, or values that are not 256 discrete levels (a discrete
      likelihood needs discrete data).
  """
  x = as_image_batch(images, image_shape)
  if np.issubdtype(x.dtype, np.integer):
    if x.min() < 0 or x.max() > 255:
      raise ValueError("images: integer pixels must be in 0-255")
    return x.astype(np.uint8)
  scaled = np.asarray(x, np.float64) * 255.0
  levels = np.rint(scaled)
  if not (np.all(np.isfinite(scaled)) and np.max(np.abs(scaled - levels)) < 1e-3
          and levels.min() >= 0 and levels.max() <= 255):
    raise ValueError("images: a discretised likelihood needs pixels on the k/255 grid of "
                     "[0, 1] (or uint8); got other float values")
  return levels.astype(np.uint8)


@jax.jit
def _decoder_bits(levels: jax.Array, mean: jax.Array, sigma: jax.Array) -> jax.Array:
  """``[N]`` ``-log2 p(x | mean, sigma)`` summed over the pixels of each image."""
  k = levels.astype(jnp.float32)
  lo = jnp.where(k == 0, -jnp.inf, ((k - 0.5) / 255.0 - mean) / sigma)
  hi = jnp.where(k == 255, jnp.inf, ((k + 0.5) / 255.0 - mean) / sigma)
  # Phi(hi) - Phi(lo) in the lower tail, where log_ndtr is accurate: reflect bins above 0.
  flip = lo + hi > 0
  a, b = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
  log_b = log_ndtr(b)
  log_p = log_b + jnp.log1p(-jnp.exp(log_ndtr(a) - log_b))
  return -jnp.sum(log_p, axis=tuple(range(1, levels.ndim))) / _LOG2


def decoder_bits(images: Any, mean: Any, sigma: float) -> np.ndarray:
  """Each image's ``-log2 p(x | mean)`` under the discretised Gaussian of the module docstring.

  Args:
    images: ``[N, H, W, C]`` uint8 (or floats on the ``k / 255`` grid).
    mean: ``[N, H, W, C]`` float, the decoder's output (e.g. reconstructions in [0, 1]).
    sigma: the Gaussian's standard deviation, in [0, 1] pixel units (> 0).

  Returns:
    ``[N]`` float64 bits per image.
  """
  mean = np.asarray(mean, np.float32)
  if mean.ndim != 4:
    raise ValueError(f"mean: expected [N, H, W, C], got shape {mean.shape}")
  levels = pixel_levels(images, mean.shape[1:])
  if len(levels) != len(mean):
    raise ValueError(f"mean: {len(mean)} images for {len(levels)} images; expected one mean "
                     "per image")
  if not (np.isfinite(sigma) and sigma > 0):
    raise ValueError(f"sigma: expected a positive finite float, got {sigma}")
  return np.asarray(_decoder_bits(levels, mean, jnp.float32(sigma)), np.float64)


def fit_sigma(model: Any, train_images: Any, batch_size: int = 1000) -> float:
  """The decoder Gaussian's standard deviation: the square root of the training split's MSE.

  That is the maximum-likelihood variance of a Gaussian around the reconstructions; with
  ``sigma`` many bins wide (about 10 for a CIFAR-10 model) the discretised optimum is the same
  to within a fraction of a percent.

  Args:
    model: a :class:`vqzoo.PretrainedVQVAE`.
    train_images: ``[N, H, W, C]`` uint8, the training split.
    batch_size: images per compiled call.
  """
  from vqzoo.training.metrics import evaluate
  return math.sqrt(evaluate(model.config, model.params, model.state, train_images,
                            batch_size=batch_size)["mse"])


def _prior_bits(model: Any, codes: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
  if model.prior is None:  # the uniform prior
    k = model.config.quantizer.num_embeddings
    return np.full(len(codes), math.prod(model.config.codes_shape) * math.log2(k))
  return model.prior_bits(codes, labels)


def likelihood_bound(model: Any, images: Any, sigma: float, labels: Any = None,
                     batch_size: int = 500) -> dict[str, Any]:
  """The bound ``prior bits + decoder bits`` per image and per dimension.

  Args:
    model: a :class:`vqzoo.PretrainedVQVAE`; its prior gives the code lengths (none: the
      uniform prior).
    images: ``[N, H, W, C]`` uint8 (or floats on the ``k / 255`` grid), e.g. the test split.
    sigma: from :func:`fit_sigma` on the training split.
    labels: ``[N]`` classes for a class-conditional prior (a bound on ``-log2 p(x | y)``);
      ``None`` gives the marginal over uniformly weighted classes (a bound on
      ``-log2 p(x)``, the paper's quantity).
    batch_size: images per call.

  Returns:
    ``prior_bits``, ``decoder_bits`` and their sum ``total_bits`` (means over the images, in
    bits per image), ``bits_per_dim`` (``total_bits / (H * W * C)``), ``sigma``, ``prior``
    (``"uniform"`` or the prior's kind), ``conditional``, ``num_images``, and
    ``paper_cifar10_bits_per_dim`` for comparison.
  """
  levels = pixel_levels(images, model.config.image_shape)
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != (len(levels),):
      raise ValueError(f"labels: expected shape [{len(levels)}], got {labels.shape}")
  if batch_size < 1:
    raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
  prior_total = decoder_total = 0.0
  for start in range(0, len(levels), batch_size):
    chunk = levels[start:start + batch_size]
    codes = model.encode(chunk)
    label = None if labels is None else labels[start:start + batch_size]
    prior_total += float(np.sum(_prior_bits(model, codes, label)))
    decoder_total += float(np.sum(decoder_bits(chunk, model.decode(codes), sigma)))
  n, dims = len(levels), math.prod(model.config.image_shape)
  per_image = (prior_total + decoder_total) / n
  return {
      "prior_bits": prior_total / n,
      "decoder_bits": decoder_total / n,
      "total_bits": per_image,
      "bits_per_dim": per_image / dims,
      "sigma": float(sigma),
      "prior": "uniform" if model.prior is None else model.prior.kind,
      "conditional": labels is not None,
      "num_images": int(n),
      "paper_cifar10_bits_per_dim": PAPER_CIFAR10_BITS_PER_DIM,
  }
