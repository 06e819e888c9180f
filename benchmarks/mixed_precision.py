#!/usr/bin/env python
"""Training speed in float32 and in bfloat16 mixed precision (``TrainConfig.compute_dtype``).

The step is the one ``vqzoo.training.train`` runs (``trainer.compile_step``: jit over a
one-device mesh, with ``vqzoo.cpu_tuning`` on the CPU), steady state after compilation, on
random images of the model's shape (speed does not depend on the pixels). Models: the 28x28x1
conv model of ``mnist-conv-ema`` and the 32x32x3 conv model of ``cifar10-conv-ema`` (128
channels, two residual layers of 32, an 8x8 grid, K = 512, D = 64, EMA codebook; the
architecture of van den Oord et al. 2017). Prints a Markdown table; ``--json`` also writes it.
The last column counts the convolutions and matrix products of the compiled step (XLA's
optimised HLO) whose result is bfloat16: a backend that has no bfloat16 kernel for an op
converts its operands to float32 and computes it there.

  python benchmarks/mixed_precision.py --seconds 3 --json benchmarks/results/mixed_precision_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

import vqzoo
from vqzoo.pretrained import registry
from vqzoo.training import trainer as train_lib

MODELS = ("mnist-conv-ema", "cifar10-conv-ema")
DTYPES = ("float32", "bfloat16")


def images(batch: int, shape) -> np.ndarray:
  return np.random.default_rng(0).random((batch, *shape), dtype=np.float32)


def train_ips(name: str, dtype: str, batch: int, seconds: float, min_steps: int) -> dict:
  """Steady-state img/s of the training step, and the seconds the first step took (compile)."""
  config = registry.config_and_recipe(name)[0]
  recipe = vqzoo.TrainConfig(steps=10**6, batch_size=batch, compute_dtype=dtype)
  optimizer = train_lib.make_optimizer(recipe)
  ts = jax.device_get(train_lib.init_train_state(config, optimizer, 0))
  step, parallel = train_lib.compile_step(config, optimizer, jax.local_devices()[:1],
                                          compute_dtype=recipe.compute_dtype)
  holder, x = [parallel.replicate(ts)], parallel.shard(images(batch, config.image_shape))

  def run():
    holder[0], metrics = step(holder[0], x)
    return float(metrics["loss"])
  t0 = time.perf_counter()
  run()
  first = time.perf_counter() - t0
  run()
  calls, start = 0, time.perf_counter()
  while calls < min_steps or time.perf_counter() - start < seconds:
    loss = run()
    calls += 1
  per_step = (time.perf_counter() - start) / calls
  hlo = step.lower(holder[0], x).compile().as_text().splitlines()
  ops = [l.split("=", 1)[1].strip() for l in hlo if " convolution(" in l or " dot(" in l]
  compiled = f"{sum(op.startswith('bf16') for op in ops)} of {len(ops)}"
  return {"model": name, "compute_dtype": dtype, "batch": batch, "img_per_s": batch / per_step,
          "first_step_s": first, "steps_timed": calls, "final_loss": loss,
          "bf16_convs_and_dots_compiled": compiled}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--seconds", type=float, default=3.0, help="timing window per row")
  parser.add_argument("--min-steps", type=int, default=5)
  parser.add_argument("--models", choices=MODELS, action="append")
  parser.add_argument("--json", help="also write the rows here")
  args = parser.parse_args(argv)
  rows = []
  for name in args.models or MODELS:
    for dtype in DTYPES:
      rows.append(train_ips(name, dtype, args.batch, args.seconds, args.min_steps))
  print(f"vqzoo {vqzoo.__version__}, JAX {jax.__version__}, {jax.devices()[0].device_kind} "
        f"({jax.default_backend()}), {os.cpu_count()} CPUs; training step, batch {args.batch}\n")
  print("| model | compute dtype | img/s | bfloat16 / float32 | first step s | steps timed | "
        "bf16 convs+dots compiled |")
  print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
  for row in rows:
    base = next(r for r in rows if r["model"] == row["model"] and r["compute_dtype"] == "float32")
    print(f"| {row['model']} | {row['compute_dtype']} | {row['img_per_s']:,.0f} | "
          f"{row['img_per_s'] / base['img_per_s']:.2f} | {row['first_step_s']:.1f} | "
          f"{row['steps_timed']} | {row['bf16_convs_and_dots_compiled']} |")
  if args.json:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(
        {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                     "jax": jax.__version__, "backend": jax.default_backend(),
                     "devices": str(jax.devices())},
         "rows": rows}, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
