#!/usr/bin/env python
"""vqzoo's residual VQ and LFQ against vector-quantize-pytorch on identical inputs (``.[bench]``).

Residual VQ: for ``N`` stages of ``K`` codes, draws ``N`` codebooks and ``z ~ N(0, 1)`` of shape
``[2, 4096, D]``, copies the codebooks into vector-quantize-pytorch's ``ResidualVQ`` (eval mode,
no projections) and into :class:`vqzoo.nn.ResidualVQ`'s params, and prints the share of equal
codes per stage, the largest difference of the quantized sums and of the decodings of the codes
(theirs ``get_output_from_indices``, ours ``lookup``).

LFQ: for ``d`` dimensions, ``z ~ N(0, 0.05^2)``, prints the share of equal codes, the largest
difference of the quantized values and of the per-sample and batch entropies (theirs in
training mode, with ``inv_temperature = 1 / tau``), in float32 and for bfloat16 inputs.

  python benchmarks/vq_family_reference.py
"""

from __future__ import annotations

import haiku as hk
import jax.numpy as jnp
import numpy as np
import torch
from vector_quantize_pytorch import LFQ as TorchLFQ
from vector_quantize_pytorch import ResidualVQ as TorchResidualVQ

from vqzoo.nn import LFQ, ResidualVQ

RVQ_CASES = [(4, 256, 16), (8, 64, 8)]  # (N, K, D)
LFQ_CASES = [8, 10]  # d
TAU = 0.01


def residual_vq():
  print("| stages N | codes K | D | equal codes per stage | max abs diff of quantized | "
        "max abs diff of decoded codes |")
  print("| ---: | ---: | ---: | --- | ---: | ---: |")
  for n, k, d in RVQ_CASES:
    rng = np.random.default_rng(0)
    books = rng.normal(scale=1.0 / np.sqrt(np.arange(1, n + 1))[:, None, None],
                       size=(n, k, d)).astype(np.float32)  # later stages: smaller residuals
    z = rng.normal(size=(2, 4096, d)).astype(np.float32)
    theirs = TorchResidualVQ(dim=d, num_quantizers=n, codebook_size=k).eval()
    with torch.no_grad():
      for i, layer in enumerate(theirs.layers):
        layer._codebook.embed.copy_(torch.from_numpy(books[i])[None])
      t_quantized, t_codes, _ = theirs(torch.from_numpy(z))
      t_decoded = theirs.get_output_from_indices(t_codes)
    params = {f"rvq/~/stage_{i}": {"codebook": jnp.asarray(books[i])} for i in range(n)}
    ours = hk.transform(lambda z: ResidualVQ(d, k, n, 0.25, name="rvq")(z, False)).apply(
        params, None, jnp.asarray(z))
    decoded = hk.transform(lambda c: ResidualVQ(d, k, n, 0.25, name="rvq").lookup(c)).apply(
        params, None, ours.codes)
    same = [np.mean(np.asarray(ours.codes[..., i]) == t_codes[..., i].numpy()) for i in range(n)]
    q_diff = np.max(np.abs(np.asarray(ours.quantized) - t_quantized.numpy()))
    d_diff = np.max(np.abs(np.asarray(decoded) - t_decoded.numpy()))
    print(f"| {n} | {k} | {d} | {', '.join(f'{s:.2%}' for s in same)} | {q_diff:.2g} | "
          f"{d_diff:.2g} |")


def lookup_free():
  print("| d | codes | input | equal codes | max abs diff of values | per-sample entropy "
        "(ours / theirs) | batch entropy (ours / theirs) |")
  print("| ---: | ---: | --- | ---: | ---: | --- | --- |")
  for d in LFQ_CASES:
    z = np.random.default_rng(1).normal(scale=0.05, size=(2, 4096, d)).astype(np.float32)
    theirs = TorchLFQ(dim=d, codebook_size=2 ** d, entropy_loss_weight=0.1,
                      diversity_gamma=1.0)
    for name, jdtype, tdtype in (("float32", jnp.float32, torch.float32),
                                 ("bfloat16", jnp.bfloat16, torch.bfloat16)):
      zj = jnp.asarray(z, jdtype)
      zt = torch.from_numpy(np.array(zj.astype(jnp.float32))).to(tdtype)  # identical values
      theirs.train()
      with torch.no_grad():
        (values, codes, _), breakdown = theirs(zt, inv_temperature=1.0 / TAU,
                                               return_loss_breakdown=True)
      quantizer = lambda: LFQ(d, temperature=TAU)
      out = hk.transform(lambda z: quantizer()(z)).apply({}, None, zj)
      per_sample, batch = hk.transform(lambda z: quantizer().entropies(z)).apply({}, None, zj)
      same = np.mean(np.asarray(out.codes) == codes.numpy())
      diff = np.max(np.abs(np.asarray(out.quantized, np.float32) - values.float().numpy()))
      print(f"| {d} | {2 ** d:,} | {name} | {same:.2%} | {diff:.2g} | "
            f"{float(per_sample):.5f} / {float(breakdown.per_sample_entropy):.5f} | "
            f"{float(batch):.5f} / {float(breakdown.batch_entropy):.5f} |")


def main():
  import vector_quantize_pytorch  # noqa: F401
  from importlib.metadata import version
  print(f"vector-quantize-pytorch {version('vector-quantize-pytorch')}, torch {torch.__version__}")
  print()
  residual_vq()
  print()
  lookup_free()


if __name__ == "__main__":
  main()
