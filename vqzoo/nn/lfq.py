"""Lookup-free quantization (Yu et al. 2023, MAGVIT-v2, arXiv 2310.05737).

Each of ``d`` dimensions is quantized to its sign, ``q_i = sign(z_i)`` in ``{-1, +1}``: the
codebook is the implicit set of ``2^d`` corners of the cube, so nothing is looked up and the
vocabulary grows with ``d`` at no cost. The code index reads the signs as bits, the first
dimension the most significant (``index = sum_i [z_i > 0] 2^(d-1-i)``, as vector-quantize-pytorch).

The entropy penalty keeps the codes used. With the soft assignment ``p(c | z) =
softmax_c(-||z - c||^2 / tau)`` (which factorises over dimensions into
``p(q_i = +1 | z_i) = sigmoid(4 z_i / tau)``)::

    penalty = E_z[H(p(. | z))]  -  gamma * H(E_z[p(. | z)])

low per-sample entropy (confident codes) and high entropy of the batch-average distribution
(all codes used). Both expectations are over the global batch: with ``cross_replica_axis`` the
sums are taken over all replicas. Signs, entropies and statistics are computed in float32
whatever the input dtype.
"""

from __future__ import annotations

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from vqzoo.nn.quantizers import QuantizerOutput, _perplexity, _psum

#: The largest ``d``: the batch entropy holds an ``[N, 2^d]`` table of code probabilities
#: (in training only).
MAX_DIM = 20


def _bits(d: int) -> np.ndarray:
  """``[2^d, d]`` float32 0/1 bits of every index, most significant first."""
  return ((np.arange(2 ** d)[:, None] >> np.arange(d - 1, -1, -1)) & 1).astype(np.float32)


def _binary_entropy(logits: jax.Array) -> jax.Array:
  """Entropy (nats) of Bernoulli(sigmoid(logits)), elementwise, stable for large logits."""
  p = jax.nn.sigmoid(logits)
  return -(p * jax.nn.log_sigmoid(logits) + (1 - p) * jax.nn.log_sigmoid(-logits))


class LFQ(hk.Module):
  """Lookup-free quantizer: sign quantization, ``2^d`` implicit codes, an entropy penalty.

  Args:
    embedding_dim: ``d`` (at most :data:`MAX_DIM`), the input's last axis; ``K = 2^d`` codes.
    commitment_cost: beta, the weight of ``mean ||z_e - sg[q]||^2``.
    entropy_weight: weight of the entropy penalty.
    diversity_gamma: gamma, the weight of the batch-average entropy inside the penalty.
    temperature: tau of the soft assignment.
    cross_replica_axis: ``pmap``/``shard_map`` axis to take the batch statistics over.
    name: module name.

  No parameters, no state. The default weights are vector-quantize-pytorch's; they suit a
  reconstruction loss far larger than a pixel MSE of ~0.005, against which they hold ``z`` at
  +-1 (no sign flips): ``mnist-conv-lfq`` uses ``commitment_cost=0.002, entropy_weight=0.003``
  (``benchmarks/lfq_weights.py``). Size both to your loss.
  """

  def __init__(self, embedding_dim: int, commitment_cost: float = 0.25,
               entropy_weight: float = 0.1, diversity_gamma: float = 1.0,
               temperature: float = 0.01, cross_replica_axis: str | None = None,
               name: str | None = None):
    super().__init__(name=name)
    if not isinstance(embedding_dim, (int, np.integer)) or not 1 <= embedding_dim <= MAX_DIM:
      raise ValueError(f"embedding_dim: expected an integer in [1, {MAX_DIM}], got "
                       f"{embedding_dim!r}")
    for field, value in (("commitment_cost", commitment_cost),
                         ("entropy_weight", entropy_weight),
                         ("diversity_gamma", diversity_gamma)):
      if not 0 <= value < float("inf"):
        raise ValueError(f"{field}: expected a finite number >= 0, got {value}")
    if not 0 < temperature < float("inf"):
      raise ValueError(f"temperature: expected a finite number > 0, got {temperature}")
    self.embedding_dim = int(embedding_dim)
    self.num_embeddings = 2 ** self.embedding_dim
    self.commitment_cost = commitment_cost
    self.entropy_weight = entropy_weight
    self.diversity_gamma = diversity_gamma
    self.temperature = temperature
    self.cross_replica_axis = cross_replica_axis

  def codebook(self) -> jax.Array:
    """``[K, d]`` float32 in ``{-1, +1}``: every code's vector, in index order."""
    return jnp.asarray(2 * _bits(self.embedding_dim) - 1)

  def lookup(self, codes: jax.Array) -> jax.Array:
    """int codes ``[...]`` -> float32 vectors ``[..., d]`` in ``{-1, +1}``."""
    shifts = jnp.arange(self.embedding_dim - 1, -1, -1, dtype=jnp.int32)
    bits = (jnp.asarray(codes, jnp.int32)[..., None] >> shifts) & 1
    return 2 * bits.astype(jnp.float32) - 1

  def entropies(self, z_e: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(mean per-sample entropy, entropy of the mean distribution)`` in nats over the
    (global) batch of ``z_e`` ``[..., d]``; scalars, float32."""
    flat = jnp.reshape(z_e.astype(jnp.float32), (-1, self.embedding_dim))
    logits = 4.0 * flat / self.temperature  # log p(+1) - log p(-1), per dimension
    count = _psum(jnp.asarray(flat.shape[0], jnp.float32), self.cross_replica_axis)
    per_sample = _psum(jnp.sum(_binary_entropy(logits)), self.cross_replica_axis) / count
    bits = jnp.asarray(_bits(self.embedding_dim))
    log_probs = (jax.nn.log_sigmoid(logits) @ bits.T
                 + jax.nn.log_sigmoid(-logits) @ (1 - bits).T)  # [N, K]
    mean = _psum(jnp.sum(jnp.exp(log_probs), axis=0), self.cross_replica_axis) / count
    batch = -jnp.sum(mean * jnp.log(jnp.maximum(mean, 1e-30)))
    return per_sample, batch

  def __call__(self, z_e: jax.Array, is_training: bool = False) -> QuantizerOutput:
    """Quantizes ``z_e`` ``[..., d]``; see :class:`~vqzoo.nn.QuantizerOutput`.

    ``quantized`` (``z_e``'s dtype) is straight-through ``sign(z_e)`` (``-1`` at 0);
    ``loss = beta * commitment + entropy_weight * penalty``; ``codebook_loss`` is 0 (no
    codebook). Only ``is_training`` computes the penalty (its ``[N, 2^d]`` table of code
    probabilities, a training regulariser); otherwise it is 0, as in vector-quantize-pytorch.
    """
    if z_e.ndim < 1 or z_e.shape[-1] != self.embedding_dim:
      raise ValueError(f"quantizer input: expected [..., {self.embedding_dim}], "
                       f"got shape {z_e.shape}")
    z = z_e.astype(jnp.float32)
    positive = z > 0
    signs = jnp.where(positive, 1.0, -1.0)
    shifts = jnp.arange(self.embedding_dim - 1, -1, -1, dtype=jnp.int32)
    codes = jnp.sum(positive.astype(jnp.int32) << shifts, axis=-1).astype(jnp.int32)
    chex.assert_shape(codes, z_e.shape[:-1])
    commitment = jnp.mean(jnp.square(z - signs))
    penalty = jnp.zeros((), jnp.float32)
    if is_training and self.entropy_weight > 0:
      per_sample, batch = self.entropies(z)
      penalty = per_sample - self.diversity_gamma * batch
    counts = _psum(jnp.bincount(jnp.reshape(codes, (-1,)), length=self.num_embeddings),
                   self.cross_replica_axis)
    return QuantizerOutput(
        quantized=(z + jax.lax.stop_gradient(signs - z)).astype(z_e.dtype),
        codes=codes,
        loss=self.commitment_cost * commitment + self.entropy_weight * penalty,
        codebook_loss=jnp.zeros((), jnp.float32),
        commitment_loss=commitment,
        perplexity=_perplexity(counts.astype(jnp.float32)),
        code_counts=counts.astype(jnp.int32),
        reseeds={})
