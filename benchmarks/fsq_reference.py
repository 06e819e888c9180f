#!/usr/bin/env python
"""vqzoo's FSQ against vector-quantize-pytorch's ``FSQ`` on identical inputs (``.[bench]``).

For a few level tuples, draws ``z ~ N(0, 2^2)`` of shape ``[2, 4096, d]``, quantizes it with
both (float32; vector-quantize-pytorch without projections), and prints the largest absolute
difference of the quantized values and the share of equal indices. Also the same for bfloat16
inputs (both quantize in float32 inside).

  python benchmarks/fsq_reference.py
"""

from __future__ import annotations

import haiku as hk
import jax.numpy as jnp
import numpy as np
import torch
from vector_quantize_pytorch import FSQ as TorchFSQ

from vqzoo.nn import FSQ

LEVELS = [(8, 5, 5, 5), (8, 8, 8, 6, 5), (7, 5, 5, 5, 5)]


def main():
  print("| levels | codes | input | max abs diff of values | equal indices |")
  print("| --- | ---: | --- | ---: | ---: |")
  for levels in LEVELS:
    z = np.random.default_rng(0).normal(scale=2.0, size=(2, 4096, len(levels))).astype(np.float32)
    theirs = TorchFSQ(list(levels)).eval()
    for name, jdtype, tdtype in (("float32", jnp.float32, torch.float32),
                                 ("bfloat16", jnp.bfloat16, torch.bfloat16)):
      zj = jnp.asarray(z, jdtype)
      zt = torch.from_numpy(np.array(zj.astype(jnp.float32))).to(tdtype)  # identical values
      ours = hk.transform(lambda z: FSQ(levels)(z)).apply({}, None, zj)
      with torch.no_grad():
        values, indices = theirs(zt)
      diff = np.max(np.abs(np.asarray(ours.quantized, np.float32) - values.float().numpy()))
      same = np.mean(np.asarray(ours.codes) == indices.numpy())
      print(f"| {levels} | {int(np.prod(levels)):,} | {name} | {diff:.2g} | {same:.2%} |")


if __name__ == "__main__":
  main()
