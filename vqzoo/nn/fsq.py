"""Finite scalar quantization (Mentzer et al. 2023, arXiv 2309.15505).

Each of ``d`` dimensions is bounded to ``L_i`` values and rounded, with a straight-through
gradient; the codebook is implicit (the grid of all ``prod(L_i)`` combinations), so nothing is
learnt and there is no auxiliary loss. Bounding, rounding and statistics run in float32
whatever the input dtype, so bfloat16 encoders reach every code.

The grid can still start collapsed: with odd levels the centre value is 0, and an encoder
whose outputs start small rounds every position there. With levels ``(3, 3, 3, 3)`` two of
three seeds never left it in a 1,000-step run; ``(3, 3, 3, 3, 3)``, ``(4, 4, 4)``,
``(5, 5, 5)`` and ``(8, 4, 4)`` used every code from the start (``benchmarks/fsq_levels.py``).

Terms: a *vector* is a quantized point ``[..., d]`` with entries in ``[-1, 1]`` (the paper's
code); an *index* is its integer number in ``[0, prod(L_i))``, what
:attr:`~vqzoo.nn.QuantizerOutput.codes` holds, as for the codebook quantizers.
"""

from __future__ import annotations

import math
from typing import Sequence

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from vqzoo.nn.quantizers import QuantizerOutput, _perplexity, _psum

# Bounds stay this much inside +-(L - 1) / 2, so that the outermost values are reached.
_EPS = 1e-3


def _check_levels(levels: Sequence[int]) -> tuple[int, ...]:
  levels = tuple(levels)
  # Two levels would need the even-level offset on a two-value grid: nearly every input would
  # round to the same side, so 3 is the least (as vector-quantize-pytorch's default bound).
  if not levels or not all(isinstance(l, (int, np.integer)) and l >= 3 for l in levels):
    raise ValueError(f"levels: expected a non-empty sequence of integers >= 3, got {levels}")
  if math.prod(levels) > np.iinfo(np.int32).max:
    raise ValueError(f"levels: prod(levels) = {math.prod(levels)} does not fit in int32")
  return tuple(int(l) for l in levels)


def _arrays(levels: Sequence[int]):
  l = np.asarray(levels, np.float32)
  half_l = (l - 1) * (1 + _EPS) / 2
  offset = np.where(np.asarray(levels) % 2 == 0, 0.5, 0.0).astype(np.float32)
  shift = np.arctanh(offset / half_l).astype(np.float32)
  half_width = (np.asarray(levels) // 2).astype(np.float32)
  basis = np.cumprod([1, *levels[:-1]]).astype(np.int32)
  return half_l, offset, shift, half_width, basis


def bound(z: jax.Array, levels: Sequence[int]) -> jax.Array:
  """``[..., d]`` -> float32 ``[..., d]``: entry ``i`` squashed into ``L_i`` rounding cells.

  ``tanh`` scaled so that rounding gives the integers ``-(L_i // 2) .. (L_i - 1) // 2``.
  """
  half_l, offset, shift, _, _ = _arrays(_check_levels(levels))
  chex.assert_axis_dimension(z, -1, len(half_l))
  return jnp.tanh(z.astype(jnp.float32) + shift) * half_l - offset


def quantize(z: jax.Array, levels: Sequence[int]) -> jax.Array:
  """``[..., d]`` -> float32 vectors ``[..., d]`` in ``[-1, 1]``: bounded, rounded (with a
  straight-through gradient) and divided by ``L_i // 2``."""
  bounded = bound(z, levels)
  rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
  return rounded / _arrays(_check_levels(levels))[3]


def vectors_to_indices(vectors: jax.Array, levels: Sequence[int]) -> jax.Array:
  """Quantized vectors ``[..., d]`` (from :func:`quantize`) -> int32 indices ``[...]``."""
  _, _, _, half_width, basis = _arrays(_check_levels(levels))
  chex.assert_axis_dimension(vectors, -1, len(basis))
  digits = jnp.round(vectors.astype(jnp.float32) * half_width + half_width).astype(jnp.int32)
  return jnp.sum(digits * basis, axis=-1).astype(jnp.int32)


def indices_to_vectors(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
  """int indices ``[...]`` -> float32 vectors ``[..., d]``, the inverse of
  :func:`vectors_to_indices`."""
  levels = _check_levels(levels)
  _, _, _, half_width, basis = _arrays(levels)
  digits = (jnp.asarray(indices, jnp.int32)[..., None] // basis) % np.asarray(levels, np.int32)
  return (digits.astype(jnp.float32) - half_width) / half_width


class FSQ(hk.Module):
  """Finite scalar quantizer: no parameters, no state, no auxiliary loss.

  Args:
    levels: ``L_i >= 3``, the number of values of each dimension, e.g. ``(8, 5, 5, 5)``
      (1,000 codes); the input's last axis has ``len(levels)`` entries.
    cross_replica_axis: ``pmap``/``shard_map`` axis to sum the code counts over.
    name: module name.

  Attributes:
    embedding_dim: ``d = len(levels)``.
    num_embeddings: ``K = prod(levels)``, the size of the implicit codebook.
  """

  def __init__(self, levels: Sequence[int], cross_replica_axis: str | None = None,
               name: str | None = None):
    levels = _check_levels(levels)
    super().__init__(name=name)
    self.levels = levels
    self.embedding_dim = len(self.levels)
    self.num_embeddings = math.prod(self.levels)
    self.cross_replica_axis = cross_replica_axis

  def codebook(self) -> jax.Array:
    """``[K, d]`` float32: every code's vector, in index order."""
    return indices_to_vectors(jnp.arange(self.num_embeddings), self.levels)

  def lookup(self, codes: jax.Array) -> jax.Array:
    """int codes ``[...]`` -> float32 vectors ``[..., d]``."""
    return indices_to_vectors(codes, self.levels)

  def __call__(self, z_e: jax.Array, is_training: bool = False) -> QuantizerOutput:
    """Quantizes ``z_e`` ``[..., d]``; see :class:`~vqzoo.nn.QuantizerOutput`.

    ``quantized`` has ``z_e``'s dtype (its values, multiples of ``1 / (L_i // 2)``, are exact
    in bfloat16 for the usual levels); ``loss``, ``codebook_loss`` and ``commitment_loss`` are
    0. ``is_training`` changes nothing (accepted for the codebook quantizers' interface).
    """
    del is_training
    if z_e.ndim < 1 or z_e.shape[-1] != self.embedding_dim:
      raise ValueError(f"quantizer input: expected [..., {self.embedding_dim}] "
                       f"(one entry per level), got shape {z_e.shape}")
    vectors = quantize(z_e, self.levels)
    codes = vectors_to_indices(jax.lax.stop_gradient(vectors), self.levels)
    chex.assert_shape(codes, z_e.shape[:-1])
    counts = _psum(jnp.bincount(jnp.reshape(codes, (-1,)), length=self.num_embeddings),
                   self.cross_replica_axis)
    zero = jnp.zeros((), jnp.float32)
    return QuantizerOutput(
        quantized=vectors.astype(z_e.dtype), codes=codes, loss=zero, codebook_loss=zero,
        commitment_loss=zero, perplexity=_perplexity(counts.astype(jnp.float32)),
        code_counts=counts.astype(jnp.int32), reseeds={})
