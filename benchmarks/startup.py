#!/usr/bin/env python
"""Time to the first training step: a fresh process, from start to one completed step.

Each row runs ``scripts/train.py --variant NAME --steps 1`` style training in a child process
(``vqzoo.training.train`` with ``until_step=1`` after the entry points' compilation-cache
set-up; vqzoo's dataset cache is kept), twice against one empty compilation cache: the first run compiles ("first run"), the
second finds the step in JAX's persistent compilation cache ("cached"), then trains the same
model to its first step again in that process ("again in that process": nothing is traced or
compiled again, :func:`vqzoo.cpu_tuning.memoize`). The dataset is decoded once beforehand, so
no column counts TFDS decoding.

  python benchmarks/startup.py --json bench_results/startup.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHILD = """
import sys, time, tempfile
start = float(sys.argv[1])
try:
  from vqzoo import compilation_cache
  compilation_cache.enable()
except ImportError:  # vqzoo <= 0.2: JAX_COMPILATION_CACHE_DIR (set by the parent) alone
  pass
from vqzoo.pretrained import registry
from vqzoo.training import train
from vqzoo.training.data import load_images
if hasattr(registry, "config_and_recipe"):
  config, recipe = registry.config_and_recipe(sys.argv[2])
else:
  config, recipe = registry.get_entry(sys.argv[2]).config, registry.get_entry(sys.argv[2]).recipe
images = load_images(recipe.dataset, recipe.split)
def first_step():
  try:
    from vqzoo.configs import RunConfig
    train(config, recipe, tempfile.mkdtemp(), images, run=RunConfig(until_step=1, progress=False))
  except ImportError:  # vqzoo <= 0.2
    train(config, recipe, tempfile.mkdtemp(), images, until_step=1, progress=False)
first_step()
first = time.time() - start
again = time.time()
first_step()  # the same model and recipe again in this process (a resume, a notebook)
print(first, time.time() - again)
"""
MODELS = ("mnist-conv-ema", "cifar10-conv-ema")


def time_to_first_step(name: str, cache: str) -> tuple[float, float]:
  """Seconds to the first step of a fresh process, and of a second run in that process."""
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache,  # an empty cache of its own
         "XLA_FLAGS": "",
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5"}  # as compilation_cache.enable
  start = time.time()
  out = subprocess.run([sys.executable, "-c", CHILD, str(start), name], cwd=REPO, env=env,
                       capture_output=True, text=True, check=True)
  first, again = map(float, out.stdout.strip().splitlines()[-1].split())
  return first, again


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", nargs="+", default=list(MODELS))
  parser.add_argument("--json", help="also write the rows here")
  args = parser.parse_args(argv)
  from vqzoo.pretrained import registry
  from vqzoo.training.data import load_images
  rows = {}
  print(f"vqzoo from {__import__('vqzoo').__file__}")
  print("| model | first run (s) | cached (s) | again in that process (s) |")
  print("| --- | ---: | ---: | ---: |")
  for name in args.models:
    recipe = (registry.config_and_recipe(name)[1] if hasattr(registry, "config_and_recipe")
              else registry.get_entry(name).recipe)
    load_images(recipe.dataset, recipe.split)  # decoded and cached once, outside the timing
    with tempfile.TemporaryDirectory() as cache:
      first, _ = time_to_first_step(name, cache)
      cached, again = time_to_first_step(name, cache)
    rows[name] = {"first_run_s": first, "cached_s": cached, "again_in_process_s": again}
    print(f"| {name} | {first:.1f} | {cached:.1f} | {again:.2f} |", flush=True)
  if args.json:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
