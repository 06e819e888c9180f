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
from vqzoo.nn import build, build_codec


# One compiled function per config (and tricks in force), reused by every evaluate() of a
# process: a fine-tune measures its base and its result.
@cpu_tuning.memoize
def _eval_fn(config: ModelConfig):
  model = build(config, wrap=cpu_tuning.tuned)

  @cpu_tuning.jit
  def fn(params, state, images):
    out, _ = model.apply(params, state, None, images, False)
    rec = jnp.clip(out.reconstruction, 0.0, 1.0)
    sq_err = jnp.sum(jnp.square(rec - images), axis=(1, 2, 3))
    return sq_err, out.codes

  return fn


@cpu_tuning.memoize
def _depth_fn(config: ModelConfig):
  """Squared error per image ``[N, B]`` of a residual model decoding at depths ``1..N``."""
  codec = build_codec(config, wrap=cpu_tuning.tuned)

  @cpu_tuning.jit
  def fn(params, state, images, codes):
    errors = []
    for depth in range(1, config.quantizer.num_stages + 1):
      rec, _ = codec.apply.decode(params, state, None, codes[..., :depth])
      errors.append(jnp.sum(jnp.square(jnp.clip(rec, 0.0, 1.0) - images), axis=(1, 2, 3)))
    return jnp.stack(errors)

  return fn


def evaluate(config: ModelConfig, params: Any, state: Any, images: np.ndarray,
             batch_size: int | None = None, progress: bool = False, return_codes: bool = False
             ) -> dict[str, float] | tuple[dict[str, float], np.ndarray]:
  """Measures a model on ``images`` ``[N, H, W, C]`` (uint8, or float in [0, 1]).

  ``batch_size`` images go through the model per call: by default the loaded model's
  inference chunk (:func:`vqzoo.cpu_tuning.inference_chunk_rows`: 128 of 28x28x1 and 32 of
  32x32x3 for conv models on the CPU), else 1000. The metrics do not depend on it.

  Returns:
    ``mse`` (per pixel), ``nmse`` (MSE divided by the variance of the split's pixels, how the
    Sonnet VQ-VAE notebook reports CIFAR-10), ``psnr`` (dB, ``10 log10(1 / mse)``), ``perplexity``
    (of the code histogram over the split), ``codes_used`` (distinct codes),
    ``bits_per_image`` (code positions x log2 K, the fixed-rate code length; a residual
    model's N stages count N codes per latent position), ``num_images``. A residual model
    also gives ``mse_by_depth`` (a list: the MSE when decoding the first ``1..N`` stages;
    its last entry is ``mse``); its ``perplexity`` and ``codes_used`` pool the N stages' code
    indices, and ``perplexity_by_stage`` and ``codes_used_by_stage`` (lists of N) give each
    stage's own. ``progress`` shows a progress bar.

    With ``return_codes``: ``(metrics, codes)``, ``codes`` the ``[N, *latent]`` int32 codes
    of the same pass (what :meth:`vqzoo.PretrainedVQVAE.encode` gives), so a split is
    measured and tokenized at once.
  """
  images = to_float_images(images, config.image_shape)
  if batch_size is None:
    batch_size = cpu_tuning.inference_chunk_rows(config.image_shape, config.arch) or 1000
  if batch_size < 1:
    raise ValueError(f"batch_size: expected a positive number of images, got {batch_size}")
  fn = _eval_fn(config)
  k = config.quantizer.num_embeddings
  stages = config.quantizer.num_stages if config.quantizer.kind == "rvq" else 0
  depth_fn = _depth_fn(config) if stages else None
  counts = np.zeros(k, np.int64)
  stage_counts = np.zeros((stages, k), np.int64)
  depth_sq = np.zeros(stages, np.float64)
  all_codes = []
  total_sq = pixel_sum = pixel_sq = 0.0
  from tqdm.auto import tqdm
  for start in tqdm(range(0, len(images), batch_size), desc="evaluate", unit="batch",
                    leave=False, disable=not progress):
    chunk = images[start:start + batch_size]
    # A short last chunk is padded to the others' shape (one compilation) and the pad dropped.
    padded = _pad_rows(chunk, batch_size) if start else chunk
    sq_err, codes = fn(params, state, padded)
    if depth_fn is not None:
      depth_sq += np.sum(np.asarray(depth_fn(params, state, padded, codes), np.float64)[
          :, :len(chunk)], axis=1)
    sq_err, codes = np.asarray(sq_err)[:len(chunk)], np.asarray(codes)[:len(chunk)]
    total_sq += float(np.sum(sq_err, dtype=np.float64))
    pixel_sum += float(np.sum(chunk, dtype=np.float64))
    pixel_sq += float(np.sum(np.square(chunk, dtype=np.float64)))
    counts += np.bincount(codes.ravel(), minlength=k)
    if return_codes:
      all_codes.append(codes)
    for stage in range(stages):
      stage_counts[stage] += np.bincount(codes[..., stage].ravel(), minlength=k)
  pixels = len(images) * math.prod(config.image_shape)
  mse = total_sq / pixels
  variance = pixel_sq / pixels - (pixel_sum / pixels) ** 2
  positions = math.prod(config.codes_shape)
  by_depth = {"mse_by_depth": [float(x) for x in depth_sq / pixels],
              "perplexity_by_stage": [_perplexity(c) for c in stage_counts],
              "codes_used_by_stage": [int(np.count_nonzero(c)) for c in stage_counts]
              } if stages else {}
  metrics = {
      "mse": mse,
      "nmse": mse / variance if variance > 0 else float("inf"),
      "psnr": 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf"),
      "perplexity": _perplexity(counts),
      "codes_used": int(np.count_nonzero(counts)),
      "bits_per_image": positions * math.log2(k),
      "num_images": int(len(images)),
      **by_depth,
  }
  if return_codes:
    return metrics, np.concatenate(all_codes).astype(np.int32, copy=False)
  return metrics


def _perplexity(counts: np.ndarray) -> float:
  """``exp`` of the entropy (nats) of a ``[K]`` code histogram."""
  probs = counts / counts.sum()
  nz = probs[probs > 0]
  return float(np.exp(-np.sum(nz * np.log(nz))))


def _pad_rows(chunk: np.ndarray, rows: int) -> np.ndarray:
  """``chunk`` ``[n, ...]`` with zero rows appended up to ``[rows, ...]``."""
  if len(chunk) == rows:
    return chunk
  return np.concatenate([chunk, np.zeros((rows - len(chunk), *chunk.shape[1:]), chunk.dtype)])


def measure(model: Any, dataset: str, split: str = "test",
            data_dir: str | None = None) -> dict[str, float]:
  """:func:`evaluate` of a loaded model on a whole TFDS split (the full test split by default)."""
  from vqzoo.training.data import load_images
  return evaluate(model.config, model.params, model.state, load_images(dataset, split, data_dir))
