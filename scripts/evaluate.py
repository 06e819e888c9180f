#!/usr/bin/env python
"""Measure a model on a full split: MSE, PSNR, perplexity, codes used, bits per image.

  python scripts/evaluate.py mnist-conv-ema                         # the zoo variant's test split
  python scripts/evaluate.py runs/my-model --dataset fashion_mnist  # any model directory
  python scripts/evaluate.py mnist-mlp --write   # re-measure and rewrite metrics, card and pin
  python scripts/evaluate.py mnist-conv-ema --bits-per-dim     # and the likelihood bound

``--bits-per-dim`` adds the full-model bound of :mod:`vqzoo.evaluation.likelihood` (prior bits plus
a discretised-Gaussian decoder whose sigma is fitted on ``--sigma-split``) to the printout,
beside the 4.67 bits/dim van den Oord et al. (2017) report on CIFAR-10 (with the model's prior
when it has one); with ``--write`` it is recorded in the metrics and the card. ``--write`` keeps
the prior's recorded metrics.
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
  parser.add_argument("--bits-per-dim", action="store_true",
                      help="also the likelihood bound in bits per dimension")
  parser.add_argument("--sigma-split", default="train",
                      help="split the decoder's sigma is fitted on (default train)")
  args = parser.parse_args(argv)
  is_zoo = args.model in registry.REGISTRY
  if args.write and not is_zoo:
    parser.error("--write applies to zoo variants only")
  dataset = args.dataset or (registry.get_entry(args.model).eval_dataset if is_zoo else None)
  if dataset is None:
    parser.error("--dataset is required for models outside the zoo")
  model = load(args.model)
  metrics = measure(model, dataset, args.split, args.data_dir)
  report = {"model": args.model, "dataset": dataset, "split": args.split, **metrics}
  if args.bits_per_dim:
    from vqzoo.training.data import load_images
    from vqzoo.evaluation.likelihood import fit_sigma, likelihood_bound
    sigma = fit_sigma(model, load_images(dataset, args.sigma_split, args.data_dir))
    report["likelihood"] = {"split": args.split, "sigma_split": args.sigma_split,
                            **likelihood_bound(model, load_images(dataset, args.split,
                                                                  args.data_dir), sigma)}
  print(json.dumps(report, indent=2))
  if is_zoo:
    failures = registry.get_entry(args.model).check_bar(metrics)
    if args.write:
      kept = {k: v for k, v in registry.get_entry(args.model).metrics.items() if k == "prior"}
      recorded = {**metrics, **kept, **({"likelihood": report["likelihood"]}
                                        if "likelihood" in report else {})}
      print("sha256", zoo_tools.bundle_variant(args.model, model, recorded), file=sys.stderr)
    if failures and args.split == "test" and not args.dataset:
      print(f"{args.model} misses its bar: {'; '.join(failures)}", file=sys.stderr)
      return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
