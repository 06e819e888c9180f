#!/usr/bin/env python
"""Train a zoo variant from its registry recipe, measure it and save (or bundle) it.

  python scripts/train.py --variant mnist-mlp --out runs/mnist-mlp
  python scripts/train.py --variant mnist-conv-ema --bundle      # into vqzoo/weights + model_cards
  python scripts/train.py --variant mnist-mlp --resume            # continue from the checkpoint
  python scripts/train.py --variant mnist-mlp --overwrite         # start afresh over it
  python scripts/train.py --variant mnist-mlp --cpu-devices 2     # 2 CPU devices (replicas)

Several processes (hosts) train one model: start the same command in each, adding
  --coordinator-address HOST:PORT --num-processes N --process-id I
(I = 0 .. N-1; HOST:PORT is process 0's), or --distributed to take these from the environment
(VQZOO_* or JAX_* variables) or from the cluster (SLURM, ...). Each step spans the devices of all
processes; process 0 writes the checkpoint, metrics, --out and --bundle and reports the bar.

A workdir that holds a checkpoint needs --resume (continue it) or --overwrite (delete it and
its metrics); --resume needs one. A resumed run must use the recipe (and --steps) that wrote the
checkpoint, unless --extend-schedule allows a new --steps.

Exit status: 0 when the trained model meets the variant's quality bar, 1 when it misses it
(expected for a short --steps run), 2 for a usage error (including a workdir that does not fit
--resume/--overwrite, a recipe that differs from the checkpoint's, or a folder it cannot write,
said in one line). Processes other than 0
exit 0 once training is done. In a multi-process run a process that fails (a peer died, say)
exits at once with status 1 (2 for a usage error); the others then fail within seconds.
"""

import argparse
import dataclasses
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zoo_tools  # noqa: E402

from vqzoo import compilation_cache  # noqa: E402
from vqzoo import cli_devices  # noqa: E402
from vqzoo.configs import RunConfig  # noqa: E402
from vqzoo.pretrained import registry  # noqa: E402
from vqzoo import result_warnings  # noqa: E402
from vqzoo.training import distributed  # noqa: E402


def main(argv=None):
  compilation_cache.enable()  # vqzoo's own process: compile each step once
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--variant", required=True, choices=registry.list_models())
  parser.add_argument("--workdir", help="checkpoints and metrics.jsonl (default runs/VARIANT)")
  parser.add_argument("--out", help="save the trained model directory here")
  parser.add_argument("--bundle", action="store_true",
                      help="write weights, metrics, card and sha256 pin into the package")
  parser.add_argument("--resume", action="store_true", help="continue from the workdir checkpoint")
  parser.add_argument("--overwrite", action="store_true",
                      help="delete the workdir's checkpoint and metrics and start afresh")
  parser.add_argument("--steps", type=int, help="override the recipe's step count")
  parser.add_argument("--extend-schedule", action="store_true",
                      help="with --resume, accept a --steps other than the checkpoint's: the\n"
                           "learning-rate schedule is recomputed for the new total step count\n"
                           "from the resumed step on")
  parser.add_argument("--checkpoint-every", type=int, default=1000, metavar="N",
                      help="steps between checkpoints (and at the end); default %(default)s")
  parser.add_argument("--data-dir", help="TFDS data directory (default $TFDS_DATA_DIR)")
  parser.add_argument("--no-progress", action="store_true")
  cli_devices.add_flags(parser)
  args = parser.parse_args(argv)
  try:
    run = RunConfig(resume=args.resume, overwrite=args.overwrite,
                    extend_schedule=args.extend_schedule, checkpoint_every=args.checkpoint_every,
                    progress=not args.no_progress)
  except ValueError as e:
    parser.error(str(e).replace("resume and overwrite", "--resume and --overwrite")
                 .replace("checkpoint_every", "--checkpoint-every"))
  try:  # before anything touches a device
    multi_process = cli_devices.start_from_flags(args, registry.get_entry(args.variant).config.arch)
  except ValueError as e:
    parser.error(str(e))
  with cli_devices.fail_fast(multi_process, prog="train.py"):  # a failed process ends now, its peers soon after
    try:
      return _run(args, parser, run)
    except OSError as e:  # a read-only or full disk under --workdir, --out or --bundle
      print(f"{parser.prog}: error: {e}; expected folders this user can write (--workdir, "
            "--out)", file=sys.stderr)
      raise SystemExit(2) from None


def _run(args, parser, run):
  workdir = args.workdir or f"runs/{args.variant}"
  recipe = registry.get_entry(args.variant).recipe
  recipe = dataclasses.replace(recipe, steps=args.steps) if args.steps else recipe
  for message in result_warnings.recipe_warnings(recipe):  # e.g. --steps below the recipe's warm-up
    print(f"{parser.prog}: warning: {message}", file=sys.stderr)
  try:
    model = zoo_tools.train_variant(args.variant, workdir, data_dir=args.data_dir, run=run,
                                    steps=args.steps)
  except (FileExistsError, FileNotFoundError, ValueError) as e:
    parser.error(str(e))  # the workdir, the data or the recipe does not fit: exit status 2
  if not distributed.is_main_process():
    return 0  # process 0 measures, saves and reports
  metrics = zoo_tools.measure_variant(args.variant, model, data_dir=args.data_dir)
  print(json.dumps({"variant": args.variant, **metrics}, indent=2))
  if args.out:
    model.save_pretrained(args.out)
  if args.bundle:
    print("sha256", zoo_tools.bundle_variant(args.variant, model, metrics), file=sys.stderr)
  failures = registry.get_entry(args.variant).check_bar(metrics)
  if failures:
    print(f"{args.variant} misses its bar: {'; '.join(failures)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
