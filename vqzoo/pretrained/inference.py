"""Compiled inference for a loaded model: input checks, conversion and dispatch.

uint8 or float32 images go to the device as they are: the uint8 -> float conversion and the
[0, 1] range check run inside the compiled function, and the host repeats the check (with a
message saying what was wrong) only when the device reports a failure.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from vqzoo import cpu_tuning
from vqzoo.configs import ModelConfig
from vqzoo.images import as_image_batch, check_codes, to_float_images
from vqzoo.nn import build_codec


@cpu_tuning.memoize
def inference_for(config: ModelConfig) -> Inference:
  """The :class:`Inference` of ``config``: the same object (so the same compiled functions) for
  every model of that config in a process, e.g. a model loaded, saved and loaded again."""
  return Inference(config)


class Inference:
  """``encode`` / ``decode`` / ``reconstruct`` / ``codebook`` of one config, compiled once.

  Args:
    config: the model's config (fixes shapes, K and the architecture).
  """

  def __init__(self, config: ModelConfig):
    self.config = config
    codec = build_codec(config, wrap=cpu_tuning.tuned).apply

    def on_images(method: Callable, clip: bool) -> Callable:
      def fn(params, state, x):
        if x.dtype == jnp.uint8:
          in_range = jnp.array(True)
          x = x.astype(jnp.float32) / 255.0
        else:  # comparisons with NaN are false, so NaN counts as out of range
          in_range = jnp.all((x >= 0.0) & (x <= 1.0))
        out = method(params, state, None, x.astype(jnp.float32))[0]
        return (jnp.clip(out, 0.0, 1.0) if clip else out), in_range
      return cpu_tuning.jit(fn)

    self._encode = on_images(codec.encode, clip=False)
    self._reconstruct = on_images(codec.reconstruct, clip=True)
    self._decode = cpu_tuning.jit(
        lambda p, s, c: jnp.clip(codec.decode(p, s, None, c)[0], 0.0, 1.0))
    self._codebook = cpu_tuning.jit(lambda p, s: codec.codebook(p, s, None)[0])

  def _run(self, fn: Callable, params: Any, state: Any, images: Any) -> np.ndarray:
    x = as_image_batch(images, self.config.image_shape)
    if x.dtype != np.uint8 and x.dtype != np.float32:
      x = to_float_images(x, self.config.image_shape)  # other dtypes: checked on the host
    chunks = cpu_tuning.inference_chunks(x, self.config.image_shape, self.config.arch)
    # Every chunk is dispatched before the first result is read: the device stays busy.
    results = [fn(params, state, chunk) for chunk in chunks]
    if not all(bool(in_range) for _, in_range in results):
      to_float_images(x, self.config.image_shape)  # raises the error that says what was wrong
      raise ValueError("images: expected floats in [0, 1]")  # defensive; the line above raises
    return np.concatenate([np.asarray(out) for out, _ in results])

  def encode(self, params: Any, state: Any, images: Any) -> np.ndarray:
    """Images -> int32 codes ``[B, *latent]``."""
    return self._run(self._encode, params, state, images)

  def reconstruct(self, params: Any, state: Any, images: Any) -> np.ndarray:
    """Images -> ``[B, H, W, C]`` float32 reconstructions in [0, 1]."""
    return self._run(self._reconstruct, params, state, images)

  def decode(self, params: Any, state: Any, codes: Any) -> np.ndarray:
    """int codes ``[B, *latent]`` -> ``[B, H, W, C]`` float32 images in [0, 1]. A residual
    model's codes ``[B, *latent, n]`` may keep only the first ``n`` of its ``N`` stages (any
    depth ``1 <= n <= N``: a lower rate)."""
    expected = self.config.codes_shape
    q = self.config.quantizer
    depth = np.shape(codes)[-1] if np.ndim(codes) == 1 + len(expected) else None
    if q.kind == "rvq" and depth is not None and 1 <= depth <= q.num_stages:
      expected = (*expected[:-1], depth)
    codes = check_codes(codes, q.num_embeddings, expected)
    chunks = cpu_tuning.inference_chunks(codes, self.config.image_shape, self.config.arch)
    results = [self._decode(params, state, chunk) for chunk in chunks]
    return np.concatenate([np.asarray(out) for out in results])

  def codebook(self, params: Any, state: Any) -> np.ndarray:
    """``[K, D]`` float32 code vectors."""
    return np.asarray(self._codebook(params, state))

