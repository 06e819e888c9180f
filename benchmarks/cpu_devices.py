#!/usr/bin/env python
"""CPU cores as devices: the training step's images/s with 1 and with 2 XLA CPU devices.

The device count is fixed when JAX starts, so each count runs in a child process of its own
(``jax_num_cpu_devices``, as ``--cpu-devices`` sets it); the children alternate (1, 2, 1, 2, ...
for ``--repeats``) so that drift in the machine's load hits both. Each row times the step
``vqzoo.training.train`` runs (``trainer.compile_step``: jit over a mesh of all devices,
replicated state, each device a ``B / n`` slice of the batch) after compilation and warm-up:

  python benchmarks/cpu_devices.py --json benchmarks/results/cpu_devices.json
"""

import argparse
import json
import os
import subprocess
import sys
import time

MODELS = ("mnist-mlp", "mnist-conv-ema")
BATCHES = (128, 1024)
DEVICES = (1, 2)


def _child(devices: int, seconds: float) -> dict:
  import jax
  jax.config.update("jax_num_cpu_devices", devices)
  import numpy as np
  import vqzoo
  from vqzoo.training import trainer
  assert jax.local_device_count() == devices, jax.local_devices()
  rows = {}
  for name in MODELS:
    config = vqzoo.get_config(name)
    for batch in BATCHES:
      recipe = vqzoo.TrainConfig(steps=10**6, batch_size=batch)
      optimizer = trainer.make_optimizer(recipe)
      ts = jax.device_get(trainer.init_train_state(config, optimizer, 0))
      step, parallel = trainer.compile_step(config, optimizer, jax.local_devices())
      images = (np.random.default_rng(0).random((batch, 28, 28, 1)) < 0.2).astype(np.float32)
      holder = [parallel.replicate(ts)]
      x = parallel.shard(images)

      def run():
        holder[0], metrics = step(holder[0], x)
        metrics["loss"].block_until_ready()
      for _ in range(3):
        run()
      calls, start = 0, time.perf_counter()
      while time.perf_counter() - start < seconds or calls < 5:
        run()
        calls += 1
      rows[f"{name} {batch}"] = batch * calls / (time.perf_counter() - start)
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seconds", type=float, default=4.0, help="timing window per row")
  parser.add_argument("--repeats", type=int, default=2, help="children per device count")
  parser.add_argument("--json", help="also write the results here")
  parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(_child(args.child, args.seconds)))
    return 0
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # the child sets the device count itself
  runs = {n: [] for n in DEVICES}
  load_before = os.getloadavg()
  for repeat in range(args.repeats):
    for n in DEVICES:
      out = subprocess.run([sys.executable, __file__, "--child", str(n), "--seconds",
                            str(args.seconds)], env=env, check=True, capture_output=True,
                           text=True, timeout=1800).stdout
      runs[n].append(json.loads(out.strip().splitlines()[-1]))
      print(f"repeat {repeat + 1}, {n} device(s): {runs[n][-1]}", file=sys.stderr, flush=True)
  load_after = os.getloadavg()
  print(f"cores: {os.cpu_count()}; 1-min load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after")
  print("| model | batch | 1 device img/s | 2 devices img/s | 2 / 1 |")
  print("| --- | ---: | ---: | ---: | ---: |")
  for name in MODELS:
    for batch in BATCHES:
      key = f"{name} {batch}"
      one = [r[key] for r in runs[1]]
      two = [r[key] for r in runs[2]]
      ratios = " / ".join(f"{b / a:.2f}" for a, b in zip(one, two))
      print(f"| {name} | {batch} | {' / '.join(f'{v:,.0f}' for v in one)} | "
            f"{' / '.join(f'{v:,.0f}' for v in two)} | {ratios} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"cores": os.cpu_count(), "load_before": load_before, "load_after": load_after,
                 "runs": {str(n): r for n, r in runs.items()}}, f,
                indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
