#!/usr/bin/env python
"""LFQ's commitment and entropy-penalty weights against an MSE reconstruction loss.

Every row is one row of ``rate_distortion.py`` (mnist-conv-ema's encoder and decoder, 7 sign
bits = 128 codes, the same short recipe, full MNIST test split) with other LFQ weights. Its
defaults (commitment 0.25, entropy 0.1, as vector-quantize-pytorch) are sized for a
reconstruction loss far larger than an MSE of ~0.005; this sweep is how ``mnist-conv-lfq``'s
weights were picked.

  python benchmarks/lfq_weights.py                     # every row, a table into stdout
  python benchmarks/lfq_weights.py --only 0.002        # the rows whose name contains 0.002
"""

from __future__ import annotations

import json

import rate_distortion as rd
from vqzoo.configs import QuantizerConfig

#: (commitment_cost, entropy_weight); the first is LFQ's default.
WEIGHTS = [(0.25, 0.1), (0.25, 0.01), (0.25, 0.0), (0.02, 0.1), (0.02, 0.01), (0.005, 0.003),
           (0.002, 0.003), (0.002, 0.001), (0.0005, 0.001), (0.0, 0.001),
           (0.0, 0.01)]


def main(argv=None) -> int:
  args, train_images, test_images = rd.sweep_args_and_data(
      __doc__, "rows whose name contains this (repeatable)", argv)
  lines = ["| commitment | entropy weight | MSE | codes used | perplexity |",
           "| ---: | ---: | ---: | ---: | ---: |"]
  for commitment, entropy in WEIGHTS:
    name = f"lfq c={commitment:g} e={entropy:g}"
    if args.only and not any(o in name for o in args.only):
      continue
    q = QuantizerConfig(kind="lfq", num_embeddings=128, commitment_cost=commitment,
                        entropy_weight=entropy)
    try:
      r = rd.run_row(name, q, args.steps, args.batch, train_images, test_images)[0]
    except FloatingPointError as e:  # no commitment: z may grow without bound
      print(json.dumps({"quantizer": name, "error": str(e).split(".")[0]}), flush=True)
      lines.append(f"| {commitment:g} | {entropy:g} | non-finite | | |")
      continue
    print(json.dumps({k: v for k, v in r.items() if k != "config"}), flush=True)
    lines.append(f"| {commitment:g} | {entropy:g} | {r['mse']:.4f} | "
                 f"{round(r['codes_used_share'] * 128)} of 128 | {r['perplexity']:.1f} |")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
