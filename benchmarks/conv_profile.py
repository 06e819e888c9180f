#!/usr/bin/env python
"""Per-layer profile of the zoo's conv VQ-VAE on this machine: XLA defaults, vqzoo, PyTorch.

For each convolution of a zoo conv architecture (``--model``, default ``mnist-conv-ema``),
forward and forward+backward (input and weight gradients) times in ms, each layer jitted alone:

* "XLA default": ``lax.conv_general_dilated`` under plain ``jax.jit`` (XLA:CPU hands
  convolutions to YNNPACK);
* "vqzoo": :mod:`vqzoo.cpu_tuning`'s formulation (1x1 and tiny fan-in layers as matrix
  products) compiled by ``vqzoo.cpu_tuning.jit`` (XLA's own convolutions);
* "PyTorch": ``torch.nn.Conv2d`` (oneDNN), if PyTorch is installed (``.[bench]`` extra).

Then the whole model's loss, forward and forward+backward, under each: vqzoo's model under
plain ``jax.jit`` and under ``vqzoo.cpu_tuning.jit``, and the PyTorch twin
(``benchmarks/torch_reference.py``). Each layer's loss is
``sum(sin(conv(x)))``, so all timings carry the same small elementwise overhead.

  python benchmarks/conv_profile.py --batch 128 --batch 1024
  python benchmarks/conv_profile.py --model cifar10-conv-ema --batch 128
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import vqzoo
from vqzoo import cpu_tuning as compilation
from vqzoo.nn import build
from vqzoo.cpu_tuning import MATMUL_MAX_FAN_IN, conv_as_matmul


def conv2d(x, w, stride):
  """The formulation vqzoo.cpu_tuning picks for an hk.Conv2D layer on the CPU."""
  kh, kw, cin, _ = w.shape
  if kh == kw == 1 or kh * kw * cin <= MATMUL_MAX_FAN_IN:
    return conv_as_matmul(x, w, stride)
  return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))

DN = ("NHWC", "HWIO", "NHWC")


def layers(config):
  h, r, d = config.conv.num_hiddens, config.conv.num_residual_hiddens, config.quantizer.embedding_dim
  hw, c = config.image_shape[0], config.image_shape[-1]
  n_res = 2 * config.conv.num_residual_layers
  # (name, spatial size, in, out, kernel, stride, count in the model)
  return [("enc down_1 4x4/2", hw, c, h // 2, 4, 2, 1), ("enc down_2 4x4/2", hw // 2, h // 2, h, 4, 2, 1),
          ("enc conv3x3", hw // 4, h, h, 3, 1, 1), ("res 3x3", hw // 4, h, r, 3, 1, n_res),
          ("res 1x1", hw // 4, r, h, 1, 1, n_res), ("enc to_embedding 1x1", hw // 4, h, d, 1, 1, 1),
          ("dec conv3x3", hw // 4, d, h, 3, 1, 1), ("dec up_1 3x3 (x4 ch)", hw // 4, h, 4 * (h // 2), 3, 1, 1),
          ("dec up_2 3x3 (x4 ch)", hw // 2, h // 2, 4 * c, 3, 1, 1)]


def timed(fn, *args, seconds=0.7):
  """Milliseconds per call, steady state."""
  jax.block_until_ready(fn(*args))
  start, n = time.perf_counter(), 0
  while time.perf_counter() - start < seconds or n < 3:
    jax.block_until_ready(fn(*args))
    n += 1
  return (time.perf_counter() - start) / n * 1e3


def jax_layer(conv, jit, x, w):
  loss = lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
  return timed(jit(conv), x, w), timed(jit(jax.grad(loss, (0, 1))), x, w)


def torch_layer(torch, batch, hw, cin, cout, k, s):
  conv = torch.nn.Conv2d(cin, cout, k, s, padding=(k - 1) // 2 if s == 1 else 1)
  x = torch.rand(batch, cin, hw, hw, requires_grad=True)

  def fwd():
    with torch.no_grad():
      conv(x)

  def fwd_bwd():
    conv(x).sin().sum().backward()
  return timed(fwd), timed(fwd_bwd)


def torch_model(torch, config, x):
  from torch_reference import build_torch
  model = build_torch(config).train()
  xt = torch.from_numpy(np.array(x))  # a writable copy

  def fwd():
    with torch.no_grad():
      model(xt)

  def fwd_bwd():
    x_hat, _, commit = model(xt)
    (torch.mean((xt - x_hat) ** 2) + commit.sum()).backward()
  return timed(fwd, seconds=2), timed(fwd_bwd, seconds=2)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--batch", type=int, action="append")
  parser.add_argument("--model", default="mnist-conv-ema", help="a zoo conv model's name")
  args = parser.parse_args(argv)
  try:
    import torch
    torch.set_num_threads(os.cpu_count())
    sys.path.insert(0, str(Path(__file__).resolve().parent))
  except ImportError:
    torch = None
  config = vqzoo.get_config(args.model)
  xla = lambda s: (lambda x, w: lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=DN))
  ours = lambda s: (lambda x, w: conv2d(x, w, s))
  print(f"vqzoo compiler options: {compilation.compiler_options()}; PyTorch: "
        f"{'not installed' if torch is None else torch.__version__}; model {args.model}")
  for batch in args.batch or [128, 1024]:
    print(f"\nbatch {batch}: ms per call, fwd / fwd+bwd (count = uses in the model)")
    head = "| layer | count | XLA default | vqzoo |" + (" PyTorch |" if torch else "")
    print(head + "\n" + "|" + " --- |" * (head.count("|") - 1))
    total = np.zeros(6)
    rng = np.random.default_rng(0)
    for name, hw, cin, cout, k, s, count in layers(config):
      x = jnp.asarray(rng.random((batch, hw, hw, cin)), jnp.float32)
      w = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.05, jnp.float32)
      row = [*jax_layer(xla(s), jax.jit, x, w), *jax_layer(ours(s), compilation.jit, x, w)]
      row += list(torch_layer(torch, batch, hw, cin, cout, k, s)) if torch else [np.nan, np.nan]
      total += count * np.array(row)
      cells = [f"{row[i]:.2f} / {row[i + 1]:.2f}" for i in range(0, 6 if torch else 4, 2)]
      print(f"| {name} | {count} | " + " | ".join(cells) + " |")
    cells = [f"{total[i]:.1f} / {total[i + 1]:.1f}" for i in range(0, 6 if torch else 4, 2)]
    print("| all convs x count | | " + " | ".join(cells) + " |")

    x = jnp.asarray(rng.random((batch, *config.image_shape)) < 0.2, jnp.float32)
    params, state = build(config).init(jax.random.PRNGKey(0), x[:1], True)
    whole = []
    for jit, wrap in ((jax.jit, lambda f: f), (compilation.jit, compilation.tuned)):
      model = build(config, wrap=wrap)
      loss = lambda p: model.apply(p, state, jax.random.PRNGKey(1), x, True)[0].loss
      whole.append(f"{timed(jit(loss), params, seconds=2):.1f} / "
                   f"{timed(jit(jax.grad(loss)), params, seconds=2):.1f}")
    if torch:
      whole.append("{:.1f} / {:.1f}".format(*torch_model(torch, config, x)))
    print("| whole model (loss) | | " + " | ".join(whole) + " |")


if __name__ == "__main__":
  main()
