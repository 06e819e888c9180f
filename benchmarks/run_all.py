#!/usr/bin/env python
"""vqzoo against PyTorch + vector-quantize-pytorch, measured in one run on one machine.

Prints tables and writes JSON. Rows: training throughput (images/s, steady state after
compilation), inference throughput of ``reconstruct``, cold start to the first result, time to
the first training step (``mnist-conv-ema`` and ``cifar10-conv-ema``), a whole 400-step
``mnist-conv-ema`` run with its start-up, and the nearest-code search (time and peak memory)
against the distance formula written as an ``[N, K, D]`` broadcast. The models: the MNIST MLP
and conv models at batch 128 and 1024, and the CIFAR-10 conv model (32x32x3 images, 128
channels, an 8x8 grid) at batch 128. Last, a table of the speed targets, each marked met or
missed.

  python benchmarks/run_all.py --json bench_results/latest.json
  python benchmarks/run_all.py --models cifar10-conv-ema --only train --only infer
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import jax
import numpy as np

import vqzoo
from vqzoo import cpu_tuning as compilation
from vqzoo.pretrained import registry
from vqzoo.training import trainer as train_lib

HERE = Path(__file__).resolve().parent
# Each model's rows, at these batch sizes.
MODEL_BATCHES = {"mnist-mlp": (128, 1024), "mnist-conv-ema": (128, 1024),
                 "cifar10-conv-ema": (128,)}
MODELS = tuple(MODEL_BATCHES)


def _time_loop(fn, min_seconds: float, min_iters: int = 5) -> float:
  """Seconds per call, steady state (callers warm up first)."""
  iters, start = 0, time.perf_counter()
  while True:
    fn()
    iters += 1
    elapsed = time.perf_counter() - start
    if iters >= min_iters and elapsed >= min_seconds:
      return elapsed / iters


def _images(batch: int, image_shape=(28, 28, 1)) -> np.ndarray:
  """``[batch, H, W, C]`` float32: MNIST-like sparse binary pixels for a grey model, uniform
  colour pixels for a colour one."""
  rng = np.random.default_rng(0)
  if image_shape[-1] == 1:
    return (rng.random((batch, *image_shape)) < 0.2).astype(np.float32)  # MNIST-like sparsity
  return rng.random((batch, *image_shape), dtype=np.float32)


def jax_train_ips(config, batch, seconds, plain_jit=False):
  """Images/s of the step ``vqzoo.training.train`` runs (jit over a one-device mesh), or with
  ``plain_jit`` the same step under a plain ``jit`` (what the mesh placement costs)."""
  recipe = vqzoo.TrainConfig(steps=10**6, batch_size=batch)
  optimizer = train_lib.make_optimizer(recipe)
  ts = jax.device_get(train_lib.init_train_state(config, optimizer, 0))
  if plain_jit:
    step = compilation.jit(train_lib.make_train_step(config, optimizer, axis_name=None),
                           donate_argnums=(0,))
    holder, x = [jax.device_put(ts)], _images(batch, config.image_shape)
  else:
    step, parallel = train_lib.compile_step(config, optimizer, jax.local_devices()[:1])
    holder = [parallel.replicate(ts)]  # as train() runs it
    x = parallel.shard(_images(batch, config.image_shape))

  def run():
    holder[0], metrics = step(holder[0], x)
    metrics["loss"].block_until_ready()
  for _ in range(3):
    run()
  return batch / _time_loop(run, seconds)


def torch_train_ips(config, batch, seconds):
  import torch
  from torch_reference import build_torch, torch_train_step
  torch.manual_seed(0)
  model = build_torch(config).train()
  step = torch_train_step(model, torch.optim.Adam(model.parameters(), 1e-3))
  x = torch.from_numpy(_images(batch, config.image_shape))
  for _ in range(3):
    step(x)
  return batch / _time_loop(lambda: step(x), seconds)


def jax_infer_ips(model, batch, seconds):
  x = _images(batch, model.config.image_shape)
  for _ in range(3):
    model.reconstruct(x)
  return batch / _time_loop(lambda: model.reconstruct(x), seconds)


def torch_infer_ips(config, batch, seconds):
  import torch
  from torch_reference import build_torch
  model = build_torch(config).eval()
  x = _images(batch, config.image_shape)

  def run():
    with torch.inference_mode():
      return model(torch.from_numpy(x))[0].clamp(0, 1).numpy()
  for _ in range(3):
    run()
  return batch / _time_loop(run, seconds)


COLD_JAX = """
import time; t0 = time.perf_counter()
import numpy as np, vqzoo
m = vqzoo.load("mnist-conv-ema")
r = m.reconstruct(np.load({digits!r})[:16])
print(time.perf_counter() - t0)
"""

COLD_TORCH = """
import time; t0 = time.perf_counter()
import sys, numpy as np, torch
torch.set_num_threads({threads})
sys.path.insert(0, {here!r})
from vqzoo.configs import ModelConfig
import json
from torch_reference import build_torch
config = ModelConfig.from_dict(json.load(open({config!r})))
m = build_torch(config).eval()
m.load_state_dict(torch.load({weights!r}))
with torch.inference_mode():
  r = m(torch.from_numpy(np.load({digits!r})[:16].astype(np.float32) / 255))[0].clamp(0, 1)
print(time.perf_counter() - t0)
"""


def cold_start(repeats: int, threads: int) -> dict:
  import torch
  from torch_reference import build_torch
  entry = registry.get_entry("mnist-conv-ema")
  digits = str(registry.WEIGHTS_DIR.parent / "assets" / "mnist_test_digits.npy")
  with tempfile.TemporaryDirectory() as tmp:
    weights = os.path.join(tmp, "model.pt")
    torch.save(build_torch(entry.config).state_dict(), weights)
    scripts = {
        "vqzoo": COLD_JAX.format(digits=digits),
        "pytorch": COLD_TORCH.format(threads=threads, here=str(HERE), digits=digits,
                                     weights=weights,
                                     config=str(entry.bundled_dir / "config.json")),
    }
    out = {}
    for name, script in scripts.items():
      walls, inner = [], []
      for _ in range(repeats):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True)
        walls.append(time.perf_counter() - t0)
        inner.append(float(res.stdout.strip().splitlines()[-1]))
      out[name] = {"process_wall_s": float(np.median(walls)), "in_process_s": float(np.median(inner))}
  return out


QUANT_SCRIPT = """
import resource, time, sys
import jax, jax.numpy as jnp, numpy as np
mode = sys.argv[1]
n, k, d = 65536, 512, 64
rng = np.random.default_rng(0)
z = jnp.asarray(rng.normal(size=(n, d)).astype(np.float32))
c = jnp.asarray(rng.normal(size=(k, d)).astype(np.float32))
def broadcast_quantize(z_e, codebook):  # the [N, K, D] broadcast formula, op by op
  dists = jnp.sum((z_e[:, None, :] - codebook[None, :, :]) ** 2, axis=2)
  return jnp.argmin(dists, axis=1)
from vqzoo.cpu_tuning import jit
from vqzoo.nn import nearest_codes
fn = {"vqzoo": jit(nearest_codes), "broadcast-eager": broadcast_quantize,
      "broadcast-jit": jax.jit(broadcast_quantize)}[mode]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
fn(z, c).block_until_ready()
times = []
for _ in range(3):
  t = time.perf_counter(); fn(z, c).block_until_ready(); times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
temp = None
if mode != "broadcast-eager":
  temp = fn.lower(z, c).compile().memory_analysis().temp_size_in_bytes
print(min(times), (peak - base) * 1024, temp)
"""


FIRST_STEP_TORCH = """
import time, sys; start = float(sys.argv[1])
import numpy as np, torch
torch.set_num_threads({threads})
sys.path.insert(0, {here!r})
from vqzoo.pretrained import registry
from torch_reference import build_torch, torch_train_step
config, recipe = registry.config_and_recipe({name!r})
torch.manual_seed(0)
model = build_torch(config).train()
step = torch_train_step(model, torch.optim.Adam(model.parameters(), recipe.learning_rate))
x = np.random.default_rng(0).random((recipe.batch_size, *config.image_shape), dtype=np.float32)
float(step(torch.from_numpy(x)))
print(time.time() - start)
"""


def first_step(name: str, threads: int) -> dict:
  """Seconds from process start to one completed training step: vqzoo through
  ``benchmarks/startup.py`` (``train`` with ``until_step=1``, on its cached dataset; first run
  and with the compilation cache filled), PyTorch (import, build the twin, one Adam step on a
  random batch of the recipe's size)."""
  from startup import time_to_first_step
  from vqzoo.training.data import load_images
  recipe = registry.config_and_recipe(name)[1]
  load_images(recipe.dataset, recipe.split)  # decoded once, outside the timing
  with tempfile.TemporaryDirectory() as cache:
    first, _ = time_to_first_step(name, cache)
    cached, _ = time_to_first_step(name, cache)
  start = time.time()
  res = subprocess.run([sys.executable, "-c", FIRST_STEP_TORCH.format(
      threads=threads, here=str(HERE), name=name), str(start)], capture_output=True, text=True,
      check=True)
  return {"model": name, "vqzoo_first_run_s": first, "vqzoo_cached_s": cached,
          "pytorch_s": float(res.stdout.strip().splitlines()[-1])}


RUN_JAX = """
import sys, time, tempfile, dataclasses; start = float(sys.argv[1])
from vqzoo import compilation_cache
compilation_cache.enable()
from vqzoo.configs import RunConfig
from vqzoo.pretrained import registry
from vqzoo.training import train
from vqzoo.training.data import load_images
config, recipe = registry.config_and_recipe({name!r})
recipe = dataclasses.replace(recipe, steps={steps})
train(config, recipe, tempfile.mkdtemp(), load_images(recipe.dataset, recipe.split),
      run=RunConfig(progress=False, checkpoint_every={steps}, log_every=100))
print(time.time() - start)
"""

RUN_TORCH = """
import sys, time; start = float(sys.argv[1])
import numpy as np, torch
torch.set_num_threads({threads})
sys.path.insert(0, {here!r})
from vqzoo.pretrained import registry
from torch_reference import build_torch, torch_train_step
config, recipe = registry.config_and_recipe({name!r})
images = np.load({images!r})
torch.manual_seed(0)
model = build_torch(config).train()
step = torch_train_step(model, torch.optim.Adam(model.parameters(), recipe.learning_rate))
order = np.random.default_rng(0).permutation(len(images))
for i in range({steps}):
  batch = images[order[i * recipe.batch_size:(i + 1) * recipe.batch_size]]
  step(torch.from_numpy(batch.astype(np.float32) / 255.0))
torch.save(model.state_dict(), {checkpoint!r})  # as the vqzoo run writes its checkpoint
print(time.time() - start)
"""


def short_run(name: str, steps: int, threads: int) -> dict:
  """Wall seconds of a whole ``steps``-step training run in a fresh process, start-up included:
  vqzoo's ``train`` (its dataset cache filled, an empty compilation cache: a first run) against
  a PyTorch loop over the same images (import, build the twin, the steps, save the weights)."""
  from vqzoo.training.data import load_images
  recipe = registry.config_and_recipe(name)[1]
  images = load_images(recipe.dataset, recipe.split)  # decoded once, outside the timing
  out = {"model": name, "steps": steps, "batch": recipe.batch_size}
  with tempfile.TemporaryDirectory() as tmp:
    np.save(os.path.join(tmp, "images.npy"), images)
    scripts = {"vqzoo": RUN_JAX.format(name=name, steps=steps),
               "pytorch": RUN_TORCH.format(threads=threads, here=str(HERE), name=name,
                                           steps=steps, images=os.path.join(tmp, "images.npy"),
                                           checkpoint=os.path.join(tmp, "model.pt"))}
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": os.path.join(tmp, "jax-cache")}
    for who, script in scripts.items():
      start = time.time()
      res = subprocess.run([sys.executable, "-c", script, str(start)], capture_output=True,
                           text=True, check=True, env=env)
      out[f"{who}_s"] = float(res.stdout.strip().splitlines()[-1])
  out["ratio"] = out["pytorch_s"] / out["vqzoo_s"]  # images/s of vqzoo over PyTorch's
  return out


def targets(result: dict) -> list[tuple[str, float, str, bool]]:
  """``(target, measured, bar, met)`` for every target whose row was measured."""
  out = []
  for f in result.get("first_step", []):
    out.append((f"first training step, first run, {f['model']}", f["vqzoo_first_run_s"],
                "<= 8 s", f["vqzoo_first_run_s"] <= 8))
    out.append((f"first training step, compilation cache filled, {f['model']}",
                f["vqzoo_cached_s"], "<= 3 s", f["vqzoo_cached_s"] <= 3))
  for row in result["rows"]:
    if row["what"] == "train" and row["batch"] == 128 and "conv" in row["model"]:
      out.append((f"steady training, {row['model']}, batch 128, vqzoo / PyTorch", row["ratio"],
                  ">= 1.0x", row["ratio"] >= 1.0))
  if "short_run" in result:
    r = result["short_run"]
    out.append((f"{r['steps']}-step {r['model']} run with start-up, vqzoo / PyTorch images/s",
                r["ratio"], ">= 0.9x", r["ratio"] >= 0.9))
  return out


def quantizer_search() -> dict:
  out = {}
  for mode in ("vqzoo", "broadcast-jit", "broadcast-eager"):
    res = subprocess.run([sys.executable, "-c", QUANT_SCRIPT, mode], capture_output=True,
                         text=True, check=True)
    seconds, rss, temp = res.stdout.split()
    out[mode] = {"seconds": float(seconds), "peak_rss_growth_bytes": int(float(rss)),
                 "xla_temp_bytes": None if temp == "None" else int(temp)}
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--json", default="bench_results/latest.json")
  parser.add_argument("--seconds", type=float, default=3.0, help="timing window per row")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--only", action="append",
                      choices=("train", "infer", "cold", "first-step", "short-run", "quantizer"))
  parser.add_argument("--models", choices=MODELS, action="append",
                      help="models of the train/infer rows (repeatable; default: all)")
  args = parser.parse_args(argv)
  sys.path.insert(0, str(HERE))
  import torch
  torch.set_num_threads(args.threads)
  parts = set(args.only or ("train", "infer", "cold", "first-step", "short-run", "quantizer"))
  result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpus": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
                        "jax_devices": str(jax.devices()), "torch_threads": args.threads},
            "rows": []}

  for name in args.models or MODELS:
    config = registry.config_and_recipe(name)[0]
    model = vqzoo.PretrainedVQVAE(config)
    for batch in MODEL_BATCHES[name]:
      if "train" in parts:
        v, t = jax_train_ips(config, batch, args.seconds), torch_train_ips(config, batch, args.seconds)
        j = jax_train_ips(config, batch, args.seconds, plain_jit=True)
        result["rows"].append({"what": "train", "model": name, "batch": batch, "vqzoo_ips": v,
                               "pytorch_ips": t, "ratio": v / t, "vqzoo_plain_jit_ips": j})
        print(f"train  {name:16s} batch {batch:5d}: vqzoo {v:9.0f} img/s  pytorch {t:9.0f} img/s"
              f"  ratio {v / t:.2f}   (same step, plain jit: {j:9.0f} img/s)", flush=True)
      if "infer" in parts:
        v, t = jax_infer_ips(model, batch, args.seconds), torch_infer_ips(config, batch, args.seconds)
        result["rows"].append({"what": "reconstruct", "model": name, "batch": batch,
                               "vqzoo_ips": v, "pytorch_ips": t, "ratio": v / t})
        print(f"infer  {name:16s} batch {batch:5d}: vqzoo {v:9.0f} img/s  pytorch {t:9.0f} img/s"
              f"  ratio {v / t:.2f}", flush=True)
  if "cold" in parts:
    result["cold_start"] = cold_start(3, args.threads)
    c = result["cold_start"]
    print(f"cold start (mnist-conv-ema, 16 images, median of 3 fresh processes): vqzoo "
          f"{c['vqzoo']['process_wall_s']:.2f} s  pytorch {c['pytorch']['process_wall_s']:.2f} s",
          flush=True)
  if "first-step" in parts:
    result["first_step"] = []
    for name in ("mnist-conv-ema", "cifar10-conv-ema"):
      result["first_step"].append(f := first_step(name, args.threads))
      print(f"first training step ({name}, batch 128, fresh process): vqzoo "
            f"{f['vqzoo_first_run_s']:.1f} s ({f['vqzoo_cached_s']:.1f} s with the compilation "
            f"cache filled)  pytorch {f['pytorch_s']:.1f} s", flush=True)
  if "short-run" in parts:
    result["short_run"] = r = short_run("mnist-conv-ema", 400, args.threads)
    print(f"400-step run with start-up (mnist-conv-ema, batch 128, fresh process): vqzoo "
          f"{r['vqzoo_s']:.1f} s  pytorch {r['pytorch_s']:.1f} s  ratio {r['ratio']:.2f}",
          flush=True)
  if "quantizer" in parts:
    result["quantizer"] = q = quantizer_search()
    for mode, r in q.items():
      temp = "" if r["xla_temp_bytes"] is None else f"  XLA temp {r['xla_temp_bytes'] / 2**20:8.1f} MiB"
      print(f"search N=65536 K=512 D=64 {mode:10s}: {r['seconds'] * 1e3:8.1f} ms  peak RSS growth "
            f"{r['peak_rss_growth_bytes'] / 2**20:8.1f} MiB{temp}", flush=True)
  result["targets"] = [dict(target=t, measured=m, bar=b, met=ok) for t, m, b, ok in targets(result)]
  if result["targets"]:
    print("\n| speed target | measured | bar | |\n| --- | ---: | --- | --- |")
    for t in result["targets"]:
      print(f"| {t['target']} | {t['measured']:.2f} | {t['bar']} | "
            f"{'met' if t['met'] else 'missed'} |")
  Path(args.json).parent.mkdir(parents=True, exist_ok=True)
  Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
