#!/usr/bin/env python
"""Prior speed on this machine: sampling 64 images after compilation, and fitting throughput.

  python benchmarks/prior_speed.py [--json out.json]

Rows: for each zoo model with a prior, the median of 5 `model.sample(64)` calls (codes drawn in
one compiled loop, then decoded) after a first, compiling call; and for the conv models'
PixelCNN recipe, Adam steps per second (and code grids per second) at batch 128.
"""

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import vqzoo
from vqzoo import cpu_tuning
from vqzoo.nn import prior_bits
from vqzoo.pretrained import registry


def sample_seconds(name: str, repeats: int = 5) -> float:
  model = vqzoo.load(name)
  model.sample(64, seed=0)
  times = []
  for seed in range(1, repeats + 1):
    start = time.perf_counter()
    model.sample(64, seed=seed)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def fit_steps_per_second(name: str, batch: int = 128, seconds: float = 5.0) -> float:
  recipe = registry.get_entry(name).prior
  config = recipe.config
  bits = prior_bits(config)
  rng = np.random.default_rng(0)
  codes = jnp.asarray(rng.integers(0, config.num_embeddings, (batch, *config.latent_shape)),
                      jnp.int32)
  labels = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
  params = bits.init(jax.random.PRNGKey(0), codes, labels)
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)

  @cpu_tuning.jit
  def step(p, o):
    loss, grads = jax.value_and_grad(lambda p: jnp.mean(bits.apply(p, None, codes, labels)))(p)
    updates, o = optimizer.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  params, opt_state, loss = step(params, opt_state)
  loss.block_until_ready()
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds or count < 5:
    params, opt_state, loss = step(params, opt_state)
    loss.block_until_ready()
    count += 1
  return count / (time.perf_counter() - start)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", help="also write the rows here")
  args = parser.parse_args(argv)
  rows = []
  print("| model | prior | 64 samples (s, median of 5) | fit steps/s at batch 128 |")
  print("| --- | --- | ---: | ---: |")
  for name in registry.list_models():
    entry = registry.get_entry(name)
    if entry.prior is None or "prior" not in entry.metrics:
      continue
    kind = entry.prior.config.kind
    row = {"model": name, "prior": kind, "sample_64_seconds": sample_seconds(name),
           "fit_steps_per_second": (fit_steps_per_second(name) if kind == "pixelcnn"
                                    else math.nan)}
    rows.append(row)
    fit = ("exact (counting)" if kind != "pixelcnn"
           else f"{row['fit_steps_per_second']:.1f}")
    print(f"| {name} | {kind} | {row['sample_64_seconds']:.3f} | {fit} |", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
