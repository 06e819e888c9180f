#!/usr/bin/env python
"""``vqzoo.evaluate`` on a whole test split, compile included, each row in a fresh process.

Rows compare the default host batch (a conv model's inference chunk on the CPU) with the
former fixed ``batch_size=1000``, as seconds and CPU-seconds of the child process, so
compilation counts as a user waiting on ``vqzoo eval`` would see it:

  python benchmarks/evaluate_speed.py --models mnist-conv-ema cifar10-conv-ema
"""

import argparse
import resource
import subprocess
import sys
import time

CHILD = """
import sys, time
import vqzoo
from vqzoo.pretrained import registry
from vqzoo.training.data import load_images
name, batch = sys.argv[1], int(sys.argv[2]) or None
model = vqzoo.load(name)
images = load_images(registry.get_entry(name).eval_dataset, "test")
start = time.perf_counter()
m = vqzoo.evaluate(model.config, model.params, model.state, images, batch_size=batch)
print(time.perf_counter() - start, m["mse"], m["codes_used"])
"""


def _row(name: str, batch: int) -> tuple[float, float, float, int]:
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  result = subprocess.run([sys.executable, "-c", CHILD, name, str(batch)], capture_output=True,
                          text=True)
  if result.returncode != 0:
    raise SystemExit(f"evaluate_speed.py: the {name} row (batch {batch or 'default'}) failed:\n"
                     f"{result.stderr[-2000:]}")
  out = result.stdout.split()
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
  return float(out[0]), cpu, float(out[1]), int(out[2])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["mnist-conv-ema", "mnist-conv-rvq",
                                                       "cifar10-conv-ema"])
  args = parser.parse_args()
  print("| model | batch | evaluate s | process CPU-s | MSE | codes |")
  print("|---|---|---|---|---|---|")
  for name in args.models:
    for batch in (1000, 0):
      seconds, cpu, mse, codes = _row(name, batch)
      label = "1000" if batch else "default"
      print(f"| {name} | {label} | {seconds:.1f} | {cpu:.1f} | {mse:.6f} | {codes} |", flush=True)


if __name__ == "__main__":
  main()
