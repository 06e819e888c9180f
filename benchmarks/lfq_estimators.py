#!/usr/bin/env python
"""Four ways to train LFQ's sign bits: is its gap to FSQ the estimator or the binary code?

Every row is one row of ``rate_distortion.py`` (mnist-conv-ema's encoder and decoder, 7 sign
bits = 128 codes with ``mnist-conv-lfq``'s weights, commitment 0.002 and entropy penalty
0.003; the same short recipe; the full MNIST test split) with one way of turning the
encoder's ``z`` into the decoder's +-1 in training:

- ``sign``: ``vqzoo.nn.LFQ`` as shipped: ``sign(z)``, straight-through (the gradient reaches
  ``z`` unchanged).
- ``tanh``: ``sign(z)``, straight-through ``tanh(z)``: ``z`` bounded, and the gradient fades
  where ``|z|`` is large.
- ``spherical`` (binary spherical quantization, Zhao et al. 2024, arXiv 2406.07548):
  ``u = sqrt(d) z / ||z||``, ``sign(u)``, straight-through ``u``; commitment and entropies on
  ``u``.
- ``stochastic`` (Toderici et al. 2016): in training +1 with probability ``(1 + tanh z) / 2``,
  straight-through ``tanh(z)``; ``sign(z)`` at test time.

and FSQ with the same 128 codes (levels (8, 4, 4)) as the reference. The variants are this
script's own (it swaps ``LFQ.__call__`` in its process); the library ships ``sign``.

  python benchmarks/lfq_estimators.py                  # every row, a table into stdout
  python benchmarks/lfq_estimators.py --only tanh      # the rows whose name contains tanh
"""

from __future__ import annotations

import contextlib
import json
from typing import Iterator

import haiku as hk
import jax
import jax.numpy as jnp

import rate_distortion as rd
from vqzoo.configs import QuantizerConfig
from vqzoo.nn import lfq

LFQ_WEIGHTS = dict(commitment_cost=0.002, entropy_weight=0.003)
ESTIMATORS = ("sign", "tanh", "spherical", "stochastic")


def _relaxed(name: str, z: jax.Array, is_training: bool) -> tuple[jax.Array, jax.Array]:
  """``(hard, soft)`` ``[..., d]``: the +-1 the decoder sees, and what the gradient passes
  through (straight-through: ``soft + sg(hard - soft)``)."""
  sign = jnp.where(z > 0, 1.0, -1.0)
  if name == "tanh":
    return sign, jnp.tanh(z)
  if name == "spherical":
    u = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-6)
    return sign, u * jnp.sqrt(z.shape[-1])
  if name == "stochastic":
    soft = jnp.tanh(z)
    if not is_training:
      return sign, soft
    draw = jax.random.uniform(hk.next_rng_key(), z.shape)
    return jnp.where(draw < (1 + soft) / 2, 1.0, -1.0), soft
  raise ValueError(f"estimator: expected one of {ESTIMATORS}, got {name!r}")


@contextlib.contextmanager
def estimator(name: str) -> Iterator[None]:
  """``vqzoo.nn.LFQ`` trains with estimator ``name`` inside the block (``sign``: unchanged).

  Codes, counts and perplexity stay the shipped module's (the signs of ``z``); the decoder's
  input and the loss follow the estimator.
  """
  shipped = lfq.LFQ.__call__
  if name == "sign":
    yield
    return

  def call(self, z_e, is_training=False):
    # The shipped call for codes and counts only: its loss is replaced below, so its own
    # entropy penalty (the [N, 2^d] table) is not computed.
    out = shipped(self, z_e, False)
    hard, soft = _relaxed(name, z_e.astype(jnp.float32), is_training)
    commitment = jnp.mean(jnp.square(soft - hard))
    penalty = jnp.zeros((), jnp.float32)
    if is_training and self.entropy_weight > 0:
      per_sample, batch = self.entropies(soft)
      penalty = per_sample - self.diversity_gamma * batch
    return out._replace(
        quantized=(soft + jax.lax.stop_gradient(hard - soft)).astype(z_e.dtype),
        commitment_loss=commitment,
        loss=self.commitment_cost * commitment + self.entropy_weight * penalty)

  lfq.LFQ.__call__ = call
  try:
    yield
  finally:
    lfq.LFQ.__call__ = shipped


def main(argv=None) -> int:
  args, train_images, test_images = rd.sweep_args_and_data(
      __doc__, "rows whose name contains this (repeatable)", argv)
  rows = [(f"lfq, {e}", e, QuantizerConfig(kind="lfq", num_embeddings=128, **LFQ_WEIGHTS))
          for e in ESTIMATORS]
  rows.append(("fsq (8, 4, 4)", "sign", QuantizerConfig(kind="fsq", levels=(8, 4, 4))))
  lines = ["| quantizer, estimator | MSE | PSNR (dB) | codes used | perplexity |",
           "| --- | ---: | ---: | ---: | ---: |"]
  for name, how, q in rows:
    if args.only and not any(o in name for o in args.only):
      continue
    with estimator(how):
      r = rd.run_row(name, q, args.steps, args.batch, train_images, test_images)[0]
    print(json.dumps({k: v for k, v in r.items() if k != "config"}), flush=True)
    lines.append(f"| {name} | {r['mse']:.5f} | {r['psnr']:.2f} | "
                 f"{round(r['codes_used_share'] * q.num_embeddings)} of {q.num_embeddings} | "
                 f"{r['perplexity']:.1f} |")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
