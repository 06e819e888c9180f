#!/usr/bin/env python
"""vqzoo's own speed, no PyTorch: the training step and ``reconstruct``, in images per second.

For A/B comparisons of two vqzoo versions on one machine, run it with each on the path, in turn:

  python benchmarks/vqzoo_speed.py --json new.json
  PYTHONPATH=/path/to/other/checkout python benchmarks/vqzoo_speed.py --json old.json

It also runs against the 0.1 (flat) layout, so a layout change can be measured.
"""

import argparse
import json
import time

import jax
import numpy as np

import vqzoo

try:
  from vqzoo.training import trainer as train_lib
except ImportError:  # the 0.1 layout
  from vqzoo import train as train_lib

MODELS = ("mnist-mlp", "mnist-conv-ema")
BATCHES = (128, 1024)


def _time_per_call(fn, seconds: float) -> float:
  fn()
  fn()
  calls, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds or calls < 5:
    fn()
    calls += 1
  return (time.perf_counter() - start) / calls


def _images(batch: int, shape=(28, 28, 1)) -> np.ndarray:
  return (np.random.default_rng(0).random((batch, *shape)) < 0.2).astype(np.float32)


def train_ips(name: str, batch: int, seconds: float) -> float:
  """Images/s of the step the trainer runs (jit over a one-device mesh)."""
  config = vqzoo.get_config(name)
  recipe = vqzoo.TrainConfig(steps=10**6, batch_size=batch)
  optimizer = train_lib.make_optimizer(recipe)
  ts = jax.device_get(train_lib.init_train_state(config, optimizer, 0))
  compiled = train_lib.compile_step(config, optimizer, jax.local_devices()[:1])
  if isinstance(compiled, tuple):  # jit over a mesh: (step, placement)
    step, parallel = compiled
    holder, x = [parallel.replicate(ts)], parallel.shard(_images(batch, config.image_shape))
  else:  # vqzoo <= 0.2: a replica axis
    step, holder, x = compiled, [train_lib.replicate(ts, 1)], _images(batch)[None]

  def run():
    holder[0], metrics = step(holder[0], x)
    metrics["loss"].block_until_ready()
  return batch / _time_per_call(run, seconds)


def reconstruct_ips(name: str, batch: int, seconds: float) -> float:
  model = vqzoo.load(name)
  x = _images(batch, model.config.image_shape)
  return batch / _time_per_call(lambda: model.reconstruct(x), seconds)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seconds", type=float, default=3.0, help="timing window per row")
  parser.add_argument("--json", help="also write the rows here")
  parser.add_argument("--models", nargs="+", default=MODELS, help=f"default {' '.join(MODELS)}")
  parser.add_argument("--batches", nargs="+", type=int, default=BATCHES,
                      help=f"default {' '.join(map(str, BATCHES))}")
  args = parser.parse_args(argv)
  rows = {}
  print(f"vqzoo {vqzoo.__version__} from {vqzoo.__file__}")
  for name in args.models:
    for batch in args.batches:
      for what, fn in (("train", train_ips), ("reconstruct", reconstruct_ips)):
        rows[f"{what} {name} {batch}"] = value = fn(name, batch, args.seconds)
        print(f"| {what} | {name} | {batch} | {value:,.0f} img/s |", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
