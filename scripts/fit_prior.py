#!/usr/bin/env python
"""Fit a zoo variant's prior over codes by its registry recipe, measure it and bundle it.

  python scripts/fit_prior.py --variant mnist-conv-ema            # fit, measure, report
  python scripts/fit_prior.py --variant mnist-conv-ema --bundle   # ... and write it into the package
  python scripts/fit_prior.py --variant mnist-conv-ema --measure-only --bundle
                                          # measure the bundled prior again (no fitting)

Measures on the full test split: prior NLL (bits per image) beside the uniform and unigram
baselines, classifier Fréchet distances (samples, train split, reconstructions, unigram samples),
the class accuracy of conditional samples, and the time to sample 64 images. Exit status 1 when
a conv variant misses a prior bar.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zoo_tools  # noqa: E402

from vqzoo import compilation_cache  # noqa: E402
from vqzoo.configs import RunConfig  # noqa: E402
from vqzoo.pretrained import registry  # noqa: E402


def main(argv=None) -> int:
  compilation_cache.enable()  # vqzoo's own process: compile each step once
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variant", required=True, choices=registry.list_models())
  parser.add_argument("--workdir", help="prior checkpoints (default runs/VARIANT-prior)")
  parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
  parser.add_argument("--overwrite", action="store_true",
                      help="delete the workdir's checkpoint and metrics and start afresh")
  parser.add_argument("--bundle", action="store_true",
                      help="write the prior, its metrics, card and pins into the package")
  parser.add_argument("--measure-only", action="store_true",
                      help="measure the prior the package bundles instead of fitting one")
  parser.add_argument("--data-dir", help="TFDS data directory (default $TFDS_DATA_DIR)")
  parser.add_argument("--no-progress", action="store_true")
  args = parser.parse_args(argv)
  workdir = args.workdir or f"runs/{args.variant}-prior"
  try:
    if args.measure_only:
      model = zoo_tools.bundled_prior(args.variant)
    else:
      run = RunConfig(resume=args.resume, overwrite=args.overwrite, checkpoint_every=500,
                      log_every=100, progress=not args.no_progress)
      model = zoo_tools.fit_variant_prior(args.variant, workdir, run, args.data_dir)
  except (FileExistsError, FileNotFoundError, ValueError) as e:
    parser.error(str(e))  # the workdir or the recipe does not fit: exit status 2
  metrics = zoo_tools.measure_prior(args.variant, model, args.data_dir,
                                    progress=not args.no_progress)
  print(json.dumps({"variant": args.variant, **metrics}, indent=2))
  if args.bundle:
    print("sha256", zoo_tools.bundle_prior(args.variant, model, metrics), file=sys.stderr)
  failures = zoo_tools.check_prior_bar(args.variant, model, metrics)
  if failures:
    print(f"{args.variant} misses a prior bar: {'; '.join(failures)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
