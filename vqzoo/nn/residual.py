"""Residual vector quantization (Zeghidour et al. 2021, SoundStream, arXiv 2107.03312).

Stage ``n`` quantizes what the stages before it left over::

    r_0 = z_e,   e_n = Q_n(r_n),   r_{n+1} = r_n - e_n,   z_q = e_0 + ... + e_{depth-1}

Each stage is a :class:`~vqzoo.nn.VectorQuantizer` or :class:`~vqzoo.nn.VectorQuantizerEMA`
with its own codebook. A stage's code never depends on later stages, so the first ``n`` of the
``N`` codes are exactly the codes of a depth-``n`` encoding: to encode at a lower rate, keep
``codes[..., :n]``; :meth:`ResidualVQ.lookup` decodes any such prefix. Quantizer dropout (in
training, a share of batches stop at a random depth ``1..N``) teaches the decoder every depth.
Residuals are computed in float32 whatever the input dtype.
"""

from __future__ import annotations

from typing import Any

import chex
import haiku as hk
import jax
import jax.numpy as jnp

from vqzoo.nn import quantizers
from vqzoo.nn.quantizers import QuantizerOutput, Reseeds


class ResidualVQ(hk.Module):
  """``N`` codebook stages, each quantizing the previous stage's residual.

  Args:
    embedding_dim: D, the size of each code (of every stage).
    num_embeddings: K, the number of codes of each stage.
    num_stages: N.
    commitment_cost: beta of every stage.
    ema: EMA codebooks (state) instead of parameter codebooks.
    quantizer_dropout: in training, the share of batches quantized to a random depth drawn
      uniformly from ``1..N`` (needs an rng; the same on every replica); 0 disables it.
    cross_replica_axis: ``pmap``/``shard_map`` axis to sum every stage's statistics over.
    name: module name.
    gradient_estimator: how the decoder's gradient reaches ``z_e`` through the sum ``e`` of the
      stages: ``"straight_through"`` (``z_e + sg[e - z_e]``) or ``"rotation"`` (the rotation
      trick of :func:`~vqzoo.nn.quantizers.rotation_trick` from ``z_e`` onto ``e``).
    **stage_kwargs: passed to every stage (``decay``, ``epsilon`` (EMA), ``dead_code_threshold``,
      ``lookup_dim``, ``kmeans_init``, ``kmeans_iters``, ``dtype``).

  ``loss`` sums the stages' losses (each on its residual ``r_n = z_e - sg(e_0 + ... +
  e_{n-1})``, so every commitment term trains the encoder); every stage keeps learning in a
  batch that stops early (its residual does not depend on the depth). Only ``quantized`` sees
  the depth; its gradient to ``z_e`` passes through the sum once (``gradient_estimator``).
  Stages are the child modules ``stage_0`` .. ``stage_{N-1}``.
  """

  def __init__(self, embedding_dim: int, num_embeddings: int, num_stages: int,
               commitment_cost: float, ema: bool = False, quantizer_dropout: float = 0.0,
               cross_replica_axis: str | None = None, name: str | None = None,
               gradient_estimator: str = "straight_through", **stage_kwargs: Any):
    super().__init__(name=name)
    if not isinstance(num_stages, int) or num_stages < 1:
      raise ValueError(f"num_stages: expected an integer >= 1, got {num_stages!r}")
    if not 0.0 <= quantizer_dropout <= 1.0:
      raise ValueError(f"quantizer_dropout: expected a number in [0, 1], got {quantizer_dropout}")
    if gradient_estimator not in quantizers.GRADIENT_ESTIMATORS:
      raise ValueError(f"gradient_estimator: expected one of {quantizers.GRADIENT_ESTIMATORS}, "
                       f"got {gradient_estimator!r}")
    self.gradient_estimator = gradient_estimator
    if stage_kwargs.get("cosine", False):
      raise ValueError("cosine: unit-norm stage outputs would not shrink the residual; "
                       "expected False for a residual quantizer")
    cls = quantizers.VectorQuantizerEMA if ema else quantizers.VectorQuantizer
    if not ema and "epsilon" in stage_kwargs:
      raise ValueError("epsilon: only for EMA stages (ema=True)")
    self.stages = [cls(embedding_dim=embedding_dim, num_embeddings=num_embeddings,
                       commitment_cost=commitment_cost, cross_replica_axis=cross_replica_axis,
                       name=f"stage_{i}", **stage_kwargs) for i in range(num_stages)]
    self.embedding_dim = embedding_dim
    self.num_embeddings = num_embeddings
    self.num_stages = num_stages
    self.quantizer_dropout = quantizer_dropout

  def codebook(self) -> jax.Array:
    """``[N, K, D]``: every stage's codebook (in its lookup space, see ``lookup_dim``)."""
    return jnp.stack([stage.codebook() for stage in self.stages])

  def lookup(self, codes: jax.Array) -> jax.Array:
    """int codes ``[..., n]`` for any depth ``1 <= n <= N`` -> float32 ``[..., D]``, the sum of
    the first ``n`` stages' code vectors."""
    if codes.ndim < 1 or not 1 <= codes.shape[-1] <= self.num_stages:
      raise ValueError(f"residual codes: expected [..., n] with 1 <= n <= {self.num_stages}, "
                       f"got shape {codes.shape}")
    return sum(self.stages[i].lookup(codes[..., i]).astype(jnp.float32)
               for i in range(codes.shape[-1]))

  def __call__(self, z_e: jax.Array, is_training: bool, depth: int | None = None
               ) -> QuantizerOutput:
    """Quantizes ``z_e`` ``[..., D]`` with every stage; see :class:`~vqzoo.nn.QuantizerOutput`.

    Args:
      z_e: ``[..., D]``.
      is_training: update the stages' statistics; with ``quantizer_dropout``, draw the depth.
      depth: a fixed depth ``1..N`` for ``quantized`` (default ``N``); ``codes`` are still all
        ``N`` stages' (a prefix of them is the encoding at that depth).

    Returns:
      ``codes`` ``[..., N]``, ``code_counts`` ``[N, K]``, ``perplexity`` the mean of the
      stages', ``loss``/``codebook_loss``/``commitment_loss`` summed over stages.
    """
    if z_e.ndim < 1 or z_e.shape[-1] != self.embedding_dim:
      raise ValueError(f"quantizer input: expected [..., {self.embedding_dim}], "
                       f"got shape {z_e.shape}")
    n = self.num_stages
    if depth is not None and not (isinstance(depth, int) and 1 <= depth <= n):
      raise ValueError(f"depth: expected an integer in [1, {n}], got {depth!r}")
    z32 = z_e.astype(jnp.float32)
    prefix = jnp.zeros_like(z32)  # e_0 + ... + e_{n-1}, no gradient
    outs, values = [], []
    for stage in self.stages:
      # r_n = z_e - sg(prefix): each stage's losses reach the encoder through its residual.
      out = stage(z32 - prefix, is_training)
      value = jax.lax.stop_gradient(out.quantized.astype(jnp.float32))  # the value of e_n
      prefix = prefix + value
      outs.append(out)
      values.append(value)
    # Which stages the output sums: all, the first `depth`, or a random prefix in training.
    active = jnp.arange(n) < (n if depth is None else depth)
    if is_training and self.quantizer_dropout > 0 and depth is None and not hk.running_init():
      keep_all, draw = jax.random.split(hk.next_rng_key())
      drawn = jax.random.randint(draw, (), 1, n + 1)
      active = jnp.arange(n) < jnp.where(
          jax.random.uniform(keep_all) < self.quantizer_dropout, drawn, n)
    e = sum(jnp.where(active[i], values[i], 0.0) for i in range(n))
    codes = jnp.stack([o.codes for o in outs], axis=-1)
    chex.assert_shape(codes, (*z_e.shape[:-1], n))
    reseeds: Reseeds = {}
    for o in outs:
      reseeds = {**reseeds, **o.reseeds}
    return QuantizerOutput(
        # On the sum: the decoder's gradient reaches z_e once, at any depth.
        quantized=self._estimate(z32, e).astype(z_e.dtype),
        codes=codes,
        loss=sum(o.loss for o in outs),
        codebook_loss=sum(o.codebook_loss for o in outs),
        commitment_loss=sum(o.commitment_loss for o in outs),
        perplexity=jnp.mean(jnp.stack([o.perplexity for o in outs])),
        code_counts=jnp.stack([o.code_counts for o in outs]),
        reseeds=reseeds)

  def _estimate(self, z32: jax.Array, e: jax.Array) -> jax.Array:
    if self.gradient_estimator == "rotation":
      return quantizers.rotation_trick(z32, e)
    return z32 + jax.lax.stop_gradient(e - z32)

  def replace_codes(self, dead: jax.Array, fresh: jax.Array) -> Reseeds:
    """Moves stage ``n``'s ``dead[n]`` codes (``[N, K]`` bool) onto ``fresh[n]`` (``[N, K, D]``).

    Returns the parameter re-seeds of all stages (empty for EMA stages).
    """
    chex.assert_shape(dead, (self.num_stages, self.num_embeddings))
    reseeds: Reseeds = {}
    for i, stage in enumerate(self.stages):
      reseeds = {**reseeds, **stage.replace_codes(dead[i], fresh[i])}
    return reseeds
