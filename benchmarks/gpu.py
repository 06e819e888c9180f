#!/usr/bin/env python
"""vqzoo against its PyTorch twin (``benchmarks/torch_reference.py``) on one accelerator.

For the 28x28x1 conv model of ``mnist-conv-ema`` and the 32x32x3 conv model of
``cifar10-conv-ema`` (128 channels, two residual layers of 32, an 8x8 grid, K = 512, D = 64,
EMA codebook; van den Oord et al. 2017), in float32 and in bfloat16 mixed precision, it
measures:

- training: Adam steps on one device-resident batch (vqzoo: the step ``vqzoo.training.train``
  runs, ``trainer.compile_step`` with ``compute_dtype``; PyTorch: the twin under
  ``torch.autocast(dtype=torch.bfloat16)`` for bfloat16, float32 parameters either way);
- inference: ``reconstruct`` of one device-resident batch (vqzoo: the jitted ``reconstruct`` of
  ``vqzoo.nn.build_codec``; PyTorch: the twin's forward in ``inference_mode``);

each as steady-state images/s (after warm-up, the device synchronised at both ends of the
timed window) and as the time to the first step (building, compiling or autotuning, and one
step, in a process that has already imported its framework). The images are random pixels of
the model's shape: speed does not depend on them. Prints a Markdown table and, with ``--json``,
writes the rows.

  python benchmarks/gpu.py --json gpu.json                      # CUDA, both frameworks
  python benchmarks/gpu.py --device cpu --steps 3 --batch 8     # a smoke run on the CPU

The PyTorch half is skipped, with a message, when torch (or vector-quantize-pytorch) is not
installed or, for ``--device cuda``, when torch sees no CUDA device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ("mnist-conv-ema", "cifar10-conv-ema")
DTYPES = ("float32", "bfloat16")
WHATS = ("train", "reconstruct")


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=200, help="timed steps per row")
  parser.add_argument("--warmup", type=int, default=None,
                      help="untimed steps after the first (default: min(20, steps))")
  parser.add_argument("--models", choices=MODELS, action="append")
  parser.add_argument("--dtypes", choices=DTYPES, action="append")
  parser.add_argument("--only", choices=("vqzoo", "pytorch"), help="one framework only")
  parser.add_argument("--json", help="also write the rows here")
  args = parser.parse_args(argv)
  if args.warmup is None:
    args.warmup = min(20, args.steps)
  return args


def _images(batch, shape):
  import numpy as np
  return np.random.default_rng(0).random((batch, *shape), dtype=np.float32)


def _timed(step, sync, steps, warmup, t0):
  """``(s from t0 to the first result, steady s per step)`` of ``step()``; ``sync(out)`` waits
  for the device."""
  sync(step())
  first = time.perf_counter() - t0
  for _ in range(warmup):
    out = step()
  sync(out if warmup else None)
  t0 = time.perf_counter()
  for _ in range(steps):
    out = step()
  sync(out)
  return first, (time.perf_counter() - t0) / steps


# ----------------------------------------------------------------------------- vqzoo

def vqzoo_rows(args, device):
  import jax
  import numpy as np

  import vqzoo
  from vqzoo import cpu_tuning
  from vqzoo.nn import build_codec
  from vqzoo.pretrained import registry
  from vqzoo.training import trainer as train_lib

  platform_name = "gpu" if device == "cuda" else "cpu"
  devices = jax.devices(platform_name)
  rows = []
  sync = lambda out: jax.block_until_ready(out)
  for name in args.models or MODELS:
    config = registry.config_and_recipe(name)[0]
    for dtype in args.dtypes or DTYPES:
      recipe = vqzoo.TrainConfig(steps=10**6, batch_size=args.batch, compute_dtype=dtype)
      # training: build + compile + first step, then the steady state
      t0 = time.perf_counter()
      optimizer = train_lib.make_optimizer(recipe)
      ts = jax.device_get(train_lib.init_train_state(config, optimizer, 0))
      step, parallel = train_lib.compile_step(config, optimizer, devices[:1],
                                              compute_dtype=recipe.compute_dtype)
      holder = [parallel.replicate(ts)]
      x = parallel.shard(_images(args.batch, config.image_shape))

      def train_step():
        holder[0], metrics = step(holder[0], x)
        return metrics["loss"]
      first, per_step = _timed(train_step, sync, args.steps, args.warmup, t0)
      rows.append(dict(framework="vqzoo", what="train", model=name, compute_dtype=dtype,
                       batch=args.batch, img_per_s=args.batch / per_step,
                       first_step_s=first, loss=float(train_step())))
      # inference: the jitted reconstruct on the trained-for-a-bit params
      t0 = time.perf_counter()
      codec = build_codec(config, wrap=cpu_tuning.tuned, compute_dtype=dtype)
      params, state = jax.device_put(jax.device_get((holder[0].params, holder[0].state)),
                                     devices[0])
      recon = cpu_tuning.jit(lambda p, s, x: codec.apply.reconstruct(p, s, None, x)[0])
      xi = jax.device_put(_images(args.batch, config.image_shape), devices[0])
      first, per_step = _timed(lambda: recon(params, state, xi), sync, args.steps, args.warmup,
                               t0)
      rows.append(dict(framework="vqzoo", what="reconstruct", model=name, compute_dtype=dtype,
                       batch=args.batch, img_per_s=args.batch / per_step, first_step_s=first))
      del holder, ts
  return rows


# ----------------------------------------------------------------------------- PyTorch

def torch_missing(device):
  """Why the PyTorch half cannot run here, or ``None``."""
  try:
    import torch
    import vector_quantize_pytorch  # noqa: F401
  except ImportError as e:
    return f"PyTorch half skipped: {e} (install the bench extra, `make bench`, or carry wheels)"
  if device == "cuda" and not torch.cuda.is_available():
    return "PyTorch half skipped: torch sees no CUDA device"
  return None


def torch_rows(args, device):
  import torch
  sys.path.insert(0, str(HERE))
  from torch_reference import build_torch, torch_train_step

  from vqzoo.pretrained import registry

  dev = torch.device(device)
  if device == "cuda":
    torch.backends.cudnn.benchmark = True  # autotuned convolutions (counted in the first step)
  sync = (lambda out: torch.cuda.synchronize()) if device == "cuda" else (lambda out: None)
  rows = []
  for name in args.models or MODELS:
    config = registry.config_and_recipe(name)[0]
    x = torch.from_numpy(_images(args.batch, config.image_shape)).to(dev)
    for dtype in args.dtypes or DTYPES:
      autocast = lambda: torch.autocast(device_type=device, dtype=torch.bfloat16,
                                        enabled=dtype == "bfloat16")
      t0 = time.perf_counter()
      torch.manual_seed(0)
      model = build_torch(config).to(dev).train()
      inner = torch_train_step(model, torch.optim.Adam(model.parameters(), 1e-3))

      def train_step():
        with autocast():
          return inner(x)
      first, per_step = _timed(train_step, sync, args.steps, args.warmup, t0)
      rows.append(dict(framework="pytorch", what="train", model=name, compute_dtype=dtype,
                       batch=args.batch, img_per_s=args.batch / per_step,
                       first_step_s=first, loss=float(train_step())))
      assert all(p.dtype == torch.float32 for p in model.parameters())
      model.eval()

      def infer():
        with torch.inference_mode(), autocast():
          return model(x)[0].clamp(0, 1)
      t0 = time.perf_counter()
      first, per_step = _timed(infer, sync, args.steps, args.warmup, t0)
      rows.append(dict(framework="pytorch", what="reconstruct", model=name, compute_dtype=dtype,
                       batch=args.batch, img_per_s=args.batch / per_step, first_step_s=first))
  return rows


# ----------------------------------------------------------------------------- main

def table(rows) -> str:
  """Markdown: one line per (what, model, dtype), vqzoo and PyTorch side by side."""
  lines = ["| row | model | compute dtype | batch | vqzoo img/s | PyTorch img/s | ratio | "
           "vqzoo first step s | PyTorch first step s |",
           "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  keys = []
  for r in rows:
    key = (r["what"], r["model"], r["compute_dtype"], r["batch"])
    if key not in keys:
      keys.append(key)
  for key in keys:
    get = lambda fw: next((r for r in rows if r["framework"] == fw
                           and (r["what"], r["model"], r["compute_dtype"], r["batch"]) == key),
                          None)
    v, t = get("vqzoo"), get("pytorch")
    cell = lambda r, f, fmt: "-" if r is None else format(r[f], fmt)
    ratio = "-" if v is None or t is None else f"{v['img_per_s'] / t['img_per_s']:.2f}"
    lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {cell(v, 'img_per_s', ',.0f')} | "
                 f"{cell(t, 'img_per_s', ',.0f')} | {ratio} | {cell(v, 'first_step_s', '.2f')} | "
                 f"{cell(t, 'first_step_s', '.2f')} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  args = _parse(argv)
  if args.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax
  machine = {"platform": platform.platform(), "python": platform.python_version(),
             "jax": jax.__version__, "jax_devices": str(jax.devices()), "device": args.device,
             "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
             "images": "random pixels of the model's shape (uniform in [0, 1])"}
  if args.device == "cuda" and jax.default_backend() != "gpu":
    print(f"--device cuda: JAX's backend is {jax.default_backend()!r}, not 'gpu' (a CUDA jaxlib "
          "is needed; --device cpu for a smoke run)", file=sys.stderr)
    return 2
  rows = []
  if args.only != "pytorch":
    rows += vqzoo_rows(args, args.device)
  skipped = None if args.only == "vqzoo" else torch_missing(args.device)
  if skipped:
    print(skipped, flush=True)
    machine["pytorch"] = skipped
  elif args.only != "vqzoo":
    import torch
    machine["torch"] = torch.__version__
    if args.device == "cuda":
      machine["gpu"] = torch.cuda.get_device_name(0)
    rows += torch_rows(args, args.device)
  print(f"{machine.get('gpu', args.device)}; JAX {jax.__version__}"
        + (f", PyTorch {machine['torch']}" if "torch" in machine else "")
        + f"; batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up; "
        "random images\n")
  print(table(rows), flush=True)
  if args.json:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
