#!/usr/bin/env python
"""FSQ's levels against code collapse at the start of training.

Every row trains mnist-conv-ema's encoder and decoder with one FSQ ``levels`` and one seed on
``rate_distortion.py``'s short recipe (1,000 steps of 64, MNIST), then measures the full test
split. ``left one code`` is the first logged step (every 50) whose training batch's code
perplexity exceeds 1.01 (more than one code in real use). With odd levels the centre value is
``0``: an encoder whose outputs start small rounds every position there, and the decoder then
sees one constant input.

  python benchmarks/fsq_levels.py                  # every row, a table into stdout
  python benchmarks/fsq_levels.py --only 3,3,3,3   # the rows whose levels contain this
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import rate_distortion as rd
from vqzoo.configs import QuantizerConfig, RunConfig
from vqzoo.training import evaluate, train

#: (levels, seed); (8, 4, 4) is mnist-conv-fsq's.
ROWS = [((3, 3, 3, 3), 0), ((3, 3, 3, 3), 1), ((3, 3, 3, 3), 2), ((3, 3, 3, 3, 3), 0),
        ((5, 5, 5), 0), ((4, 4, 4), 0), ((8, 4, 4), 0)]
LOG_EVERY = 50


def run(levels: tuple[int, ...], seed: int, steps: int, batch: int, train_images,
        test_images) -> dict:
  config, recipe = rd.short_recipe(QuantizerConfig(kind="fsq", levels=levels), steps, batch,
                                   seed=seed)
  with tempfile.TemporaryDirectory() as workdir:
    result = train(config, recipe, workdir, train_images,
                   run=RunConfig(progress=False, log_every=LOG_EVERY,
                                 checkpoint_every=10 * steps))
    logged = [json.loads(line) for line in Path(workdir, "metrics.jsonl").read_text().splitlines()]
  left = next((m["step"] for m in logged if m["perplexity"] > 1.01), None)
  m = evaluate(config, result.params, result.state, test_images)
  return {"levels": list(levels), "seed": seed, "codes": math.prod(levels),
          "left_one_code_at_step": left, "mse": m["mse"], "codes_used": m["codes_used"],
          "perplexity": m["perplexity"]}


def main(argv=None) -> int:
  args, train_images, test_images = rd.sweep_args_and_data(
      __doc__, "rows whose levels, written 3,3,3,3, contain this (repeatable)", argv)
  lines = ["| levels | codes | seed | left one code at step | MSE | codes used | perplexity |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for levels, seed in ROWS:
    written = ",".join(map(str, levels))
    if args.only and not any(o in written for o in args.only):
      continue
    r = run(levels, seed, args.steps, args.batch, train_images, test_images)
    print(json.dumps(r), flush=True)
    left = "never" if r["left_one_code_at_step"] is None else f"{r['left_one_code_at_step']:,}"
    lines.append(f"| {tuple(levels)} | {r['codes']} | {seed} | {left} | {r['mse']:.4f} | "
                 f"{r['codes_used']} | {r['perplexity']:.1f} |")
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
