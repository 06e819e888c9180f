#!/usr/bin/env python
"""Train a zoo variant from its registry recipe, measure it and save (or bundle) it.

  python scripts/train.py --variant mnist-mlp --out runs/mnist-mlp
  python scripts/train.py --variant mnist-conv-ema --bundle      # into vqzoo/weights + model_cards
  python scripts/train.py --variant mnist-mlp --resume            # continue from the checkpoint
  python scripts/train.py --variant mnist-mlp --distributed       # multi-host: jax.distributed
"""

import argparse
import json
import sys

from vqzoo import registry, zoo


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--variant", required=True, choices=registry.list_models())
  parser.add_argument("--workdir", help="checkpoints and metrics.jsonl (default runs/VARIANT)")
  parser.add_argument("--out", help="save the trained model directory here")
  parser.add_argument("--bundle", action="store_true",
                      help="write weights, metrics, card and sha256 pin into the package")
  parser.add_argument("--resume", action="store_true", help="continue from the workdir checkpoint")
  parser.add_argument("--steps", type=int, help="override the recipe's step count")
  parser.add_argument("--data-dir", help="TFDS data directory (default $TFDS_DATA_DIR)")
  parser.add_argument("--distributed", action="store_true",
                      help="call jax.distributed.initialize() first (multi-host; see README)")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  if args.distributed:
    import jax
    jax.distributed.initialize()
  workdir = args.workdir or f"runs/{args.variant}"
  model = zoo.train_variant(args.variant, workdir, data_dir=args.data_dir, resume=args.resume,
                            progress=not args.no_progress, steps=args.steps)
  metrics = zoo.measure_variant(args.variant, model, data_dir=args.data_dir)
  print(json.dumps({"variant": args.variant, **metrics}, indent=2))
  if args.out:
    model.save_pretrained(args.out)
  if args.bundle:
    print("sha256", zoo.bundle_variant(args.variant, model, metrics))
  failures = zoo.check_bar(args.variant, metrics)
  if failures:
    print(f"{args.variant} misses its bar: {'; '.join(failures)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
