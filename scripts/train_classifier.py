#!/usr/bin/env python
"""Train the small feature classifier for a dataset and ship it into vqzoo/assets/classifiers.

  python scripts/train_classifier.py --dataset mnist
  python scripts/train_classifier.py --dataset fashion_mnist --steps 6000
  python scripts/train_classifier.py --dataset cifar10 --steps 6000

Colour datasets (``cifar10``) train with random left-right flips (``--flip``/``--no-flip``).

Trains on the full train split, measures accuracy on the full test split, writes
``<dataset>.safetensors`` atomically and records test accuracy, steps, seed and the file's
sha256 in ``metrics.json`` beside it (other datasets' entries are kept). The classifier's
features define vqzoo's classifier Fréchet distance (:mod:`vqzoo.evaluation.frechet`), so
retraining changes that metric's values: rerun every recorded measurement after it.
"""

import argparse
import json
import os
import sys
import time

from vqzoo import compilation_cache
from vqzoo.configs import RunConfig
from vqzoo.io import atomic_write_bytes
from vqzoo.pretrained.integrity import sha256_bytes
from vqzoo.training import classifier
from vqzoo.training.data import load_images, load_labels

DEFAULT_STEPS = {"mnist": 3000, "fashion_mnist": 6000, "cifar10": 6000}
FLIP_DATASETS = ("cifar10",)  # natural images: a mirrored photo is still the same class


def main(argv=None) -> int:
  compilation_cache.enable()  # vqzoo's own process: compile each step once
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--dataset", required=True, choices=classifier.DATASETS)
  parser.add_argument("--steps", type=int,
                      help=f"optimisation steps (default: {DEFAULT_STEPS})")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--learning-rate", type=float, default=1e-3)
  parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                      help=f"random left-right flips in training (default: on for "
                           f"{', '.join(FLIP_DATASETS)})")
  parser.add_argument("--data-dir", help="TFDS data directory (default $TFDS_DATA_DIR)")
  parser.add_argument("--out-dir", default=str(classifier.CLASSIFIERS_DIR),
                      help="where the weights and metrics.json go (default: the package assets)")
  parser.add_argument("--workdir", help="checkpoints (default: none kept)")
  parser.add_argument("--resume", action="store_true", help="continue from the workdir checkpoint")
  parser.add_argument("--overwrite", action="store_true",
                      help="delete the workdir's checkpoint and metrics and start afresh")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)
  steps = args.steps if args.steps is not None else DEFAULT_STEPS[args.dataset]
  flip = args.flip if args.flip is not None else args.dataset in FLIP_DATASETS
  if steps < 1:
    parser.error("--steps: expected >= 1")
  if args.resume and args.overwrite:
    parser.error("--resume and --overwrite: pass one or the other")

  train_x = load_images(args.dataset, "train", args.data_dir)
  train_y = load_labels(args.dataset, "train", args.data_dir)
  test_x = load_images(args.dataset, "test", args.data_dir)
  test_y = load_labels(args.dataset, "test", args.data_dir)
  start = time.time()
  params = classifier.train_classifier(train_x, train_y, steps, args.batch_size, args.seed,
                                       args.learning_rate, workdir=args.workdir,
                                       run=RunConfig(resume=args.resume, overwrite=args.overwrite,
                                                     progress=not args.no_progress),
                                       flip=flip)
  seconds = time.time() - start
  test_accuracy = classifier.accuracy(params, test_x, test_y)
  train_accuracy = classifier.accuracy(params, train_x, train_y)

  data = classifier.to_bytes(params, metadata={"dataset": args.dataset,
                                               "format": "vqzoo-classifier-v1"})
  path = atomic_write_bytes(classifier.weights_path(args.dataset, args.out_dir), data)
  record = {
      "test_accuracy": round(test_accuracy, 6),
      "test_examples": int(len(test_y)),
      "train_accuracy": round(train_accuracy, 6),
      "steps": steps,
      "batch_size": args.batch_size,
      "seed": args.seed,
      "learning_rate": args.learning_rate,
      "flip": flip,
      "num_params": classifier.num_params(params),
      "feature_dim": classifier.FEATURE_DIM,
      "train_seconds": round(seconds, 1),
      "sha256": sha256_bytes(data),
  }
  metrics = classifier.read_metrics(args.out_dir)
  metrics[args.dataset] = record
  atomic_write_bytes(os.path.join(args.out_dir, classifier.METRICS_NAME),
                     (json.dumps(dict(sorted(metrics.items())), indent=2) + "\n").encode())
  print(json.dumps({"dataset": args.dataset, "weights": str(path), "bytes": len(data), **record},
                   indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
