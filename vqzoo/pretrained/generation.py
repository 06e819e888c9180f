"""Sampling from and scoring with a loaded model's prior over codes.

The prior (:mod:`vqzoo.nn.priors`) is part of the artifact (``prior.json`` +
``prior.safetensors``). Sampling draws codes autoregressively inside one compiled loop
(compiled once per number of samples) and decodes them with the VQ-VAE.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vqzoo import cpu_tuning
from vqzoo.configs import PriorConfig
from vqzoo.images import check_codes
from vqzoo.nn import prior_bits, sample_codes

FIT_HINT = ("fit one with `vqzoo fit-prior MODEL --dataset NAME --out DIR` (or "
            "vqzoo.training.fit_prior) and load DIR")


class NoPriorError(ValueError):
  """The model has no prior over its codes, so it cannot sample or score codes."""


def labels_for(config: PriorConfig, label: Any, num: int, rng: np.random.Generator
               ) -> np.ndarray | None:
  """``[num]`` int32 labels: ``label`` (an int or ``[num]`` ints) or, for a class-conditional
  prior given ``None``, labels drawn uniformly; ``None`` for an unconditional prior."""
  if config.num_classes == 0:
    if label is not None:
      raise ValueError("label: this model's prior is unconditional; pass no label")
    return None
  if label is None:
    return rng.integers(0, config.num_classes, num).astype(np.int32)
  labels = np.asarray(label)
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"label: expected an int or [N] ints in [0, {config.num_classes}), got "
                     f"dtype {labels.dtype}")
  if labels.ndim == 0:
    labels = np.full(num, int(labels))
  if labels.shape != (num,):
    raise ValueError(f"label: expected an int or [{num}] ints, got shape {labels.shape}")
  if labels.min() < 0 or labels.max() >= config.num_classes:
    raise ValueError(f"label: expected values in [0, {config.num_classes}), got "
                     f"[{labels.min()}, {labels.max()}]")
  return labels.astype(np.int32)


@cpu_tuning.memoize
def generation_for(config: PriorConfig) -> Generation:
  """The :class:`Generation` of ``config``, shared by every model with that prior config."""
  return Generation(config)


class Generation:
  """Compiled prior functions for one :class:`PriorConfig`."""

  def __init__(self, config: PriorConfig):
    self.config = config
    self._sample = sample_codes(config, jit=cpu_tuning.jit)
    bits = prior_bits(config).apply
    self._bits = cpu_tuning.jit(lambda p, c, l: bits(p, None, c, l))
    self._bits_unconditional = cpu_tuning.jit(lambda p, c: bits(p, None, c))

  def sample_codes(self, params: Any, num_samples: int, seed: int, temperature: float,
                   label: Any) -> np.ndarray:
    """``[N, *latent]`` int32 codes."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
      raise ValueError(f"seed: expected an int, got {seed!r}")
    labels = labels_for(self.config, label, int(num_samples), np.random.default_rng(seed))
    codes = self._sample(params, jax.random.PRNGKey(seed), num_samples,
                         None if labels is None else jnp.asarray(labels), float(temperature))
    return np.asarray(codes)

  def bits(self, params: Any, codes: Any, label: Any) -> np.ndarray:
    """``[N]`` float64 ``-log2 p(codes | label)``; with no label for a class-conditional prior,
    the marginal ``-log2 (1/C sum_c p(codes | c))``."""
    codes = check_codes(codes, self.config.num_embeddings, self.config.latent_shape)
    n = len(codes)
    if self.config.num_classes == 0 or label is not None:
      labels = labels_for(self.config, label, n, np.random.default_rng(0))
      if labels is None:
        return np.asarray(self._bits_unconditional(params, codes), np.float64)
      return np.asarray(self._bits(params, codes, labels), np.float64)
    per_class = np.stack([np.asarray(self._bits(params, codes, np.full(n, c, np.int32)),
                                     np.float64) for c in range(self.config.num_classes)])
    nats = -per_class * math.log(2)  # log p(codes | c)
    top = nats.max(axis=0)
    log_marginal = top + np.log(np.exp(nats - top).mean(axis=0))
    return -log_marginal / math.log(2)
