#!/usr/bin/env python
"""Per-layer profile of the zoo's conv VQ-VAE train step on this machine (XLA).

For each convolution of the mnist-conv-ema architecture: XLA's convolution forward,
input-gradient (dx) and weight-gradient (dw) times, and vqzoo's ``conv2d`` (which picks the
fastest formulation per shape) forward and forward+backward, each jitted alone, at the given
batch sizes; then the whole model's forward and forward+backward.

  python benchmarks/conv_profile.py --batch 128 --batch 1024
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import vqzoo
from vqzoo.model import build
from vqzoo.nets import conv2d

DN = ("NHWC", "HWIO", "NHWC")


def layers(config):
  h, r, d = config.conv.num_hiddens, config.conv.num_residual_hiddens, config.quantizer.embedding_dim
  hw = config.image_shape[0]
  c = config.image_shape[-1]
  # (name, spatial size, in, out, kernel, stride, count in the model)
  return [("enc down_1 4x4/2", hw, c, h // 2, 4, 2, 1), ("enc down_2 4x4/2", hw // 2, h // 2, h, 4, 2, 1),
          ("enc conv3x3", hw // 4, h, h, 3, 1, 1), ("res 3x3", hw // 4, h, r, 3, 1, 2 * config.conv.num_residual_layers),
          ("res 1x1", hw // 4, r, h, 1, 1, 2 * config.conv.num_residual_layers),
          ("enc to_embedding 1x1", hw // 4, h, d, 1, 1, 1), ("dec conv3x3", hw // 4, d, h, 3, 1, 1),
          ("dec up_1 3x3 (x4 ch)", hw // 4, h, 4 * (h // 2), 3, 1, 1),
          ("dec up_2 3x3 (x4 ch)", hw // 2, h // 2, 4 * c, 3, 1, 1)]


def timed(fn, *args, seconds=1.0):
  jax.block_until_ready(fn(*args))
  start, n = time.perf_counter(), 0
  while time.perf_counter() - start < seconds:
    jax.block_until_ready(fn(*args))
    n += 1
  return (time.perf_counter() - start) / n * 1e3


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch", type=int, action="append")
  args = parser.parse_args(argv)
  config = vqzoo.get_config("mnist-conv-ema")
  for batch in args.batch or [128, 1024]:
    print(f"\nbatch {batch}: ms per call (x count in the model)")
    print("| layer | count | XLA conv fwd | XLA dx | XLA dw | vqzoo conv2d fwd | fwd+dx+dw |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    total = np.zeros(5)
    for name, hw, cin, cout, k, s, count in layers(config):
      x = jnp.ones((batch, hw, hw, cin))
      w = jnp.ones((k, k, cin, cout)) * 0.01
      xla = lambda x, w, s=s: lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=DN)
      ours = lambda x, w, s=s: conv2d(x, w, s)
      # sin() keeps the output gradient data-dependent (a plain sum lets XLA fold it away).
      loss = lambda x, w: jnp.sum(jnp.sin(xla(x, w)))
      t = np.array([timed(jax.jit(xla), x, w), timed(jax.jit(jax.grad(loss, 0)), x, w),
                    timed(jax.jit(jax.grad(loss, 1)), x, w), timed(jax.jit(ours), x, w),
                    timed(jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(ours(x, w))), (0, 1))), x, w)])
      total += count * t
      print(f"| {name} | {count} | " + " | ".join(f"{v:.1f}" for v in t) + " |")
    print("| all convs x count | | " + " | ".join(f"{v:.1f}" for v in total) + " |")
    model = build(config)
    x = jnp.asarray((np.random.default_rng(0).random((batch, 28, 28, 1)) < 0.2), jnp.float32)
    params, state = model.init(jax.random.PRNGKey(0), x[:1], True)
    loss = lambda p: model.apply(p, state, None, x, False)[0].loss
    print(f"whole model: forward {timed(jax.jit(loss), params):.1f} ms, forward+backward "
          f"{timed(jax.jit(jax.grad(loss)), params):.1f} ms")


if __name__ == "__main__":
  main()
