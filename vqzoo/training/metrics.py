"""Evaluation metrics on a whole split: MSE, PSNR, perplexity, codes used, bits per image.

Reconstructions are clipped to [0, 1] (what :meth:`vqzoo.PretrainedVQVAE.reconstruct`
returns), so MSE is measured on valid images.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from vqzoo import cpu_tuning
from vqzoo.configs import ModelConfig
from vqzoo.images import to_float_images
from vqzoo.nn import build


def _eval_fn(config: ModelConfig):
  model = build(config, wrap=cpu_tuning.tuned)

  @cpu_tuning.jit
  def fn(params, state, images):
    out, _ = model.apply(params, state, None, images, False)
    rec = jnp.clip(out.reconstruction, 0.0, 1.0)
    sq_err = jnp.sum(jnp.square(rec - images), axis=(1, 2, 3))
    return sq_err, out.codes

  return fn


def evaluate(config: ModelConfig, params: Any, state: Any, images: np.ndarray,
             batch_size: int = 1000, progress: bool = False) -> dict[str, float]:
  """Measures a model on ``images`` ``[N, H, W, C]`` (uint8, or float in [0, 1]).

  Returns:
    ``mse`` (per pixel), ``nmse`` (MSE divided by the variance of the split's pixels, how the
    Sonnet VQ-VAE notebook reports CIFAR-10), ``psnr`` (dB, ``10 log10(1 / mse)``), ``perplexity``
    (of the code histogram over the split), ``codes_used`` (distinct codes),
    ``bits_per_image`` (latent positions x log2 K, the fixed-rate code length),
    ``num_images``. ``progress`` shows a progress bar.
  """
  images = to_float_images(images, config.image_shape)
  fn = _eval_fn(config)
  k = config.quantizer.num_embeddings
  counts = np.zeros(k, np.int64)
  total_sq = pixel_sum = pixel_sq = 0.0
  from tqdm.auto import tqdm
  for start in tqdm(range(0, len(images), batch_size), desc="evaluate", unit="batch",
                    leave=False, disable=not progress):
    chunk = images[start:start + batch_size]
    sq_err, codes = fn(params, state, chunk)
    total_sq += float(np.sum(np.asarray(sq_err, np.float64)))
    pixel_sum += float(np.sum(chunk, dtype=np.float64))
    pixel_sq += float(np.sum(np.square(chunk, dtype=np.float64)))
    counts += np.bincount(np.asarray(codes).ravel(), minlength=k)
  pixels = len(images) * math.prod(config.image_shape)
  mse = total_sq / pixels
  variance = pixel_sq / pixels - (pixel_sum / pixels) ** 2
  probs = counts / counts.sum()
  nz = probs[probs > 0]
  positions = math.prod(config.latent_shape)
  return {
      "mse": mse,
      "nmse": mse / variance if variance > 0 else float("inf"),
      "psnr": 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf"),
      "perplexity": float(np.exp(-np.sum(nz * np.log(nz)))),
      "codes_used": int(np.count_nonzero(counts)),
      "bits_per_image": positions * math.log2(k),
      "num_images": int(len(images)),
  }


def measure(model: Any, dataset: str, split: str = "test",
            data_dir: str | None = None) -> dict[str, float]:
  """:func:`evaluate` of a loaded model on a whole TFDS split (the full test split by default)."""
  from vqzoo.training.data import load_images
  return evaluate(model.config, model.params, model.state, load_images(dataset, split, data_dir))
