#!/usr/bin/env python
"""Batch-slice sizes of :mod:`vqzoo.cpu_tuning` against image shape: a short CPU measurement.

For the zoo's MNIST conv model (28x28x1, 64 channels, 7x7 grid, K=128, D=16) and a CIFAR-like
conv model (32x32x3, 128 channels, two stride-2 stages, 8x8 grid, K=512, D=64), times one
training forward+backward (``jax.grad`` of the loss, EMA codebook, ``cpu_tuning.tuned`` and
``cpu_tuning.jit``) with the encoder and decoder run in slices of a fixed number of rows, and
with the rule :func:`vqzoo.cpu_tuning.slice_rows` picks ("rule"). Every size is compiled first,
then timed in ``--rounds`` interleaved rounds of ``--repeats`` calls; prints the fastest and the
median call in ms, and images/s at the fastest.

  python benchmarks/slice_sizes.py                 # both models, their default batches
  python benchmarks/slice_sizes.py --only 32x32x3 --batch 512 --rows 512 --rows 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vqzoo import cpu_tuning
from vqzoo.configs import ConvConfig, ModelConfig, QuantizerConfig
from vqzoo.nn import build

MODELS = {
    "28x28x1": (ModelConfig(arch="conv", conv=ConvConfig(64, 2, 32), quantizer=QuantizerConfig(
        num_embeddings=128, embedding_dim=16, ema=True, dead_code_threshold=1.0)), 512,
        [512, 128, 64, 32]),
    "32x32x3": (ModelConfig(arch="conv", image_shape=(32, 32, 3), conv=ConvConfig(128, 2, 32),
                            quantizer=QuantizerConfig(num_embeddings=512, embedding_dim=64,
                                                      ema=True, dead_code_threshold=1.0)), 256,
                [256, 64, 32, 16]),
}


def compiled_step(config, batch, rows):
  """The jitted training gradient with slices of ``rows`` rows (``"rule"``: slice_rows's)."""
  x = jnp.asarray(np.random.default_rng(0).random((batch, *config.image_shape)), jnp.float32)
  params, state = build(config).init(jax.random.PRNGKey(0), x[:1], True)
  model = build(config, wrap=cpu_tuning.tuned)
  loss = lambda p: model.apply(p, state, jax.random.PRNGKey(1), x, True)[0].loss
  rule = cpu_tuning.slice_rows
  cpu_tuning.slice_rows = rule if rows == "rule" else (lambda shape, dtype: rows)
  try:  # slices are decided while tracing: compile now
    grad = cpu_tuning.jit(jax.grad(loss)).lower(params).compile()
  finally:
    cpu_tuning.slice_rows = rule
  jax.block_until_ready(grad(params))
  return lambda: jax.block_until_ready(grad(params))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per round")
  parser.add_argument("--rounds", type=int, default=2, help="rounds over all slice sizes")
  parser.add_argument("--only", choices=sorted(MODELS))
  parser.add_argument("--batch", type=int, help="instead of the model's default batch")
  parser.add_argument("--rows", type=int, action="append", help="slice sizes to time")
  args = parser.parse_args(argv)
  for name, (config, batch, sizes) in MODELS.items():
    if args.only and name != args.only:
      continue
    batch, sizes = args.batch or batch, (args.rows or sizes) + ["rule"]
    enc = cpu_tuning.slice_rows(config.image_shape, np.float32)
    dec = cpu_tuning.slice_rows(config.latent_shape + (config.quantizer.embedding_dim,),
                                np.float32)
    print(f"{name} batch {batch}: the rule gives the encoder {enc} rows, the decoder {dec}",
          flush=True)
    steps = {rows: compiled_step(config, batch, rows) for rows in sizes}
    times = {rows: [] for rows in sizes}
    for _ in range(args.rounds):  # interleaved, so that a busy spell hits every size alike
      for rows, step in steps.items():
        for _ in range(args.repeats):
          start = time.perf_counter()
          step()
          times[rows].append((time.perf_counter() - start) * 1e3)
    for rows in sizes:
      label = ("whole batch" if rows == batch else f"rule ({enc} / {dec} rows)" if rows == "rule"
               else f"{rows} rows")
      best, med = min(times[rows]), statistics.median(times[rows])
      print(f"| {name} | {batch} | {label} | {best:.0f} | {med:.0f} | {batch / best * 1e3:,.0f} |",
            flush=True)


if __name__ == "__main__":
  main()
