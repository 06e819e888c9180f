#!/usr/bin/env python
"""Measure a model on a full split: MSE, PSNR, perplexity, codes used, bits per image.

  python scripts/evaluate.py mnist-conv-ema                         # the zoo variant's test split
  python scripts/evaluate.py runs/my-model --dataset fashion_mnist  # any model directory
  python scripts/evaluate.py mnist-mlp --write   # re-measure and rewrite metrics, card and pin
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zoo_tools  # noqa: E402

from vqzoo import compilation_cache  # noqa: E402
from vqzoo.pretrained import load, registry  # noqa: E402
from vqzoo.training import measure  # noqa: E402


def main(argv=None) -> int:
  compilation_cache.enable()  # vqzoo's own process: compile each step once
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("model", help="zoo name, hf-hub:owner/repo[@rev] or a model directory")
  parser.add_argument("--dataset", help="TFDS name (default: the zoo variant's dataset)")
  parser.add_argument("--split", default="test")
  parser.add_argument("--data-dir", help="TFDS data directory (default $TFDS_DATA_DIR)")
  parser.add_argument("--write", action="store_true",
                      help="zoo variants only: write metrics.json, the model card and the pin")
  args = parser.parse_args(argv)
  is_zoo = args.model in registry.REGISTRY
  if args.write and not is_zoo:
    parser.error("--write applies to zoo variants only")
  dataset = args.dataset or (registry.get_entry(args.model).eval_dataset if is_zoo else None)
  if dataset is None:
    parser.error("--dataset is required for models outside the zoo")
  model = load(args.model)
  metrics = measure(model, dataset, args.split, args.data_dir)
  print(json.dumps({"model": args.model, "dataset": dataset, "split": args.split, **metrics},
                   indent=2))
  if is_zoo:
    failures = registry.get_entry(args.model).check_bar(metrics)
    if args.write:
      print("sha256", zoo_tools.bundle_variant(args.model, model, metrics), file=sys.stderr)
    if failures and args.split == "test" and not args.dataset:
      print(f"{args.model} misses its bar: {'; '.join(failures)}", file=sys.stderr)
      return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
