#!/usr/bin/env python
"""Rate and distortion of every quantizer on one architecture: which one to pick.

Each row trains mnist-conv-ema's encoder and decoder (64 channels, 2 residual layers of 32,
a 7x7 grid) with one quantizer, on the same MNIST training images in the same seeded order,
for the same short recipe (``--steps`` Adam steps of ``--batch``; the zoo's recipe is 16,000
steps of 128, so these MSEs are higher than the zoo models'), and measures it on the full
MNIST test split: MSE, PSNR, the share of the K codes used, perplexity, and the training
speed in images per second (steps x batch over the wall time of ``vqzoo.training.train``,
compilation included; the same for every row, so compare the rows with each other). A residual model is trained
once, with quantizer dropout, and measured at every depth 1..N. ``--dataset cifar10`` does
the same for four quantizers at 9 bits on cifar10-conv-ema's encoder and decoder (8x8 grid).

  python benchmarks/rate_distortion.py                          # the table, into stdout
  python benchmarks/rate_distortion.py --json benchmarks/results/rate_distortion.json
  python benchmarks/rate_distortion.py --only fsq --steps 200   # some rows, a quicker recipe
  python benchmarks/rate_distortion.py --dataset cifar10      # CIFAR-10: four quantizers, 9 bits
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time

import numpy as np

from vqzoo.configs import ModelConfig, QuantizerConfig, RunConfig, TrainConfig
from vqzoo.pretrained.registry import config_and_recipe
from vqzoo.training import load_images, train
from vqzoo.training.metrics import evaluate

_EMA = dict(ema=True, dead_code_threshold=1.0)
_PLAIN = dict(dead_code_threshold=1.0)
#: (row name, quantizer) pairs; the rate is bits per latent position (log2 K, x N for rvq).
QUANTIZERS = [
    ("vq (plain)", QuantizerConfig(num_embeddings=128, embedding_dim=16, **_PLAIN)),
    ("vq (plain)", QuantizerConfig(num_embeddings=1024, embedding_dim=16, **_PLAIN)),
    ("vq (EMA)", QuantizerConfig(num_embeddings=128, embedding_dim=16, **_EMA)),
    ("vq (EMA)", QuantizerConfig(num_embeddings=1024, embedding_dim=16, **_EMA)),
    ("vq (cosine, lookup 8)", QuantizerConfig(num_embeddings=128, embedding_dim=16, cosine=True,
                                              lookup_dim=8, **_PLAIN)),
    ("vq (cosine, lookup 8)", QuantizerConfig(num_embeddings=1024, embedding_dim=16, cosine=True,
                                              lookup_dim=8, **_PLAIN)),
    ("fsq", QuantizerConfig(kind="fsq", levels=(8, 4, 4))),
    ("fsq", QuantizerConfig(kind="fsq", levels=(8, 5, 5, 5))),
    ("lfq", QuantizerConfig(kind="lfq", num_embeddings=128)),
    ("lfq", QuantizerConfig(kind="lfq", num_embeddings=1024)),
    # mnist-conv-lfq's weights: commitment and entropy penalty sized for an MSE of ~0.005.
    ("lfq (commitment 0.002, entropy 0.003)", QuantizerConfig(
        kind="lfq", num_embeddings=128, commitment_cost=0.002, entropy_weight=0.003)),
    ("lfq (commitment 0.002, entropy 0.003)", QuantizerConfig(
        kind="lfq", num_embeddings=1024, commitment_cost=0.002, entropy_weight=0.003)),
    ("rvq (EMA, 2 stages)", QuantizerConfig(kind="rvq", num_embeddings=32, embedding_dim=16,
                                            num_stages=2, quantizer_dropout=0.5, **_EMA)),
]

#: CIFAR-10 at one rate, 9 bits per position (512 codes), on cifar10-conv-ema's encoder and
#: decoder (128 channels, 2 residual layers of 32, an 8x8 grid) and its learning rate, 1e-3.
CIFAR_QUANTIZERS = [
    ("vq (EMA)", QuantizerConfig(num_embeddings=512, embedding_dim=64, decay=0.99, **_EMA)),
    ("vq (plain)", QuantizerConfig(num_embeddings=512, embedding_dim=64, **_PLAIN)),
    ("fsq", QuantizerConfig(kind="fsq", levels=(8, 8, 8))),
    ("lfq (commitment 0.002, entropy 0.003)", QuantizerConfig(
        kind="lfq", num_embeddings=512, commitment_cost=0.002, entropy_weight=0.003)),
]
#: dataset -> (the zoo model whose encoder/decoder, image shape and peak learning rate every
#: row uses, the rows).
DATASETS = {"mnist": ("mnist-conv-ema", QUANTIZERS),
            "cifar10": ("cifar10-conv-ema", CIFAR_QUANTIZERS)}


def _rate(q: QuantizerConfig) -> float:
  return math.log2(q.num_embeddings)


def short_recipe(q: QuantizerConfig, steps: int, batch: int, dataset: str = "mnist",
                 seed: int = 0) -> tuple[ModelConfig, TrainConfig]:
  """The rows' model (the dataset's zoo encoder and decoder with quantizer ``q``) and their
  short recipe (the zoo's peak learning rate, a warm-up of a tenth, at most 200 steps)."""
  zoo_config, zoo_recipe = config_and_recipe(DATASETS[dataset][0])
  config = ModelConfig(arch="conv", conv=zoo_config.conv, image_shape=zoo_config.image_shape,
                       quantizer=q)
  recipe = TrainConfig(dataset=dataset, steps=steps, batch_size=batch,
                       learning_rate=zoo_recipe.learning_rate,
                       warmup_steps=min(200, steps // 10), final_lr_fraction=0.05, seed=seed)
  return config, recipe


def run_row(name: str, q: QuantizerConfig, steps: int, batch: int, train_images, test_images,
            dataset: str = "mnist") -> list[dict]:
  config, recipe = short_recipe(q, steps, batch, dataset)
  with tempfile.TemporaryDirectory() as workdir:
    started = time.perf_counter()
    result = train(config, recipe, workdir, train_images,
                   run=RunConfig(progress=False, log_every=max(1, steps // 20),
                                 checkpoint_every=10 * steps))
    wall = time.perf_counter() - started
  speed = steps * batch / wall
  m = evaluate(config, result.params, result.state, test_images)
  depths = m.get("mse_by_depth", [m["mse"]])
  rows = []
  for depth, mse in enumerate(depths, start=1):
    # A residual model's codes_used/perplexity pool all its stages' codes.
    rows.append({"quantizer": name, "kind": q.kind, "bits_per_position": _rate(q) * depth,
                 "depth": depth if q.kind == "rvq" else None, "K": q.num_embeddings,
                 "mse": mse, "psnr": 10 * math.log10(1 / mse),
                 "codes_used_share": m["codes_used"] / q.num_embeddings,
                 "perplexity": m["perplexity"], "train_img_per_s": speed,
                 "wall_s": wall, "config": q.to_dict()})
  return rows


def table(rows: list[dict], steps: int, batch: int, dataset: str = "mnist") -> str:
  title = {"mnist": "MNIST", "cifar10": "CIFAR-10"}[dataset]
  lines = [f"Rate-distortion on {title}, {DATASETS[dataset][0]}'s encoder/decoder, {steps} "
           f"steps of {batch} for every row; full test split.", "",
           "| quantizer | bits / position | MSE | PSNR (dB) | codes used | perplexity | "
           "train img/s (wall) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for r in sorted(rows, key=lambda r: (r["bits_per_position"], r["mse"])):
    name = r["quantizer"] + (f", depth {r['depth']}" if r["depth"] else "")
    lines.append(f"| {name} | {r['bits_per_position']:.2f} | {r['mse']:.5f} | {r['psnr']:.2f} | "
                 f"{100 * r['codes_used_share']:.0f}% of {r['K']} | {r['perplexity']:.1f} | "
                 f"{r['train_img_per_s']:,.0f} |")
  return "\n".join(lines)


def sweep_args_and_data(description: str, only_help: str, argv=None):
  """For the short-recipe sweeps (``lfq_weights.py``, ``fsq_levels.py``): their flags
  (``--steps``, ``--batch``, ``--only``, ``--data-dir``), the compilation cache, and MNIST.

  Returns:
    ``(args, train_images, test_images)``.
  """
  parser = argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--only", action="append", default=[], help=only_help)
  parser.add_argument("--data-dir", help="TFDS data directory (default $TFDS_DATA_DIR)")
  args = parser.parse_args(argv)
  from vqzoo import compilation_cache
  compilation_cache.enable()
  return (args, load_images("mnist", "train", args.data_dir),
          load_images("mnist", "test", args.data_dir))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist",
                      help="mnist: every quantizer at 7 and 10 bits; cifar10: four at 9 bits")
  parser.add_argument("--only", action="append", default=[],
                      help="rows whose quantizer name contains this (repeatable)")
  parser.add_argument("--data-dir", help="TFDS data directory (default $TFDS_DATA_DIR)")
  parser.add_argument("--json", help="also write the rows here")
  args = parser.parse_args(argv)
  from vqzoo import compilation_cache
  compilation_cache.enable()
  train_images = load_images(args.dataset, "train", args.data_dir)
  test_images = load_images(args.dataset, "test", args.data_dir)
  rows = []
  for name, q in DATASETS[args.dataset][1]:
    if args.only and not any(o in name for o in args.only):
      continue
    rows += run_row(name, q, args.steps, args.batch, train_images, test_images, args.dataset)
    print(json.dumps({k: v for k, v in rows[-1].items() if k != "config"}), flush=True)
  print(table(rows, args.steps, args.batch, args.dataset))
  if args.json:
    from vqzoo.io import atomic_write_bytes  # a rerun replaces the old results whole
    atomic_write_bytes(args.json, json.dumps({"dataset": args.dataset, "steps": args.steps,
                                              "batch": args.batch, "rows": rows},
                                             indent=2).encode())
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
