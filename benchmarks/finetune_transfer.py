#!/usr/bin/env python
"""Transfer: fine-tune mnist-conv-ema on Fashion-MNIST vs. the same architecture from scratch.

Same recipe and seed for both; both evaluated on the full Fashion-MNIST test split every
``--eval-every`` steps. Prints both curves and the steps each needs to reach the target MSE.

  python benchmarks/finetune_transfer.py --steps 2000 --eval-every 200 --target 0.0060
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import vqzoo
from vqzoo.training import data as data_lib
from vqzoo.training import evaluate, train


def curve(config, recipe, images, test, init, eval_every, workdir):
  points = []
  params = state = None
  if init is not None:
    params, state = init.params, init.state
  for until in range(0, recipe.steps + 1, eval_every):
    if until == 0:  # the starting point (fresh, or the pretrained model), checkpointed at step 0
      result = train(config, recipe, workdir, images=images, until_step=0, init_params=params,
                     init_state=state, progress=False)
      p, s = result.params, result.state
    else:
      result = train(config, recipe, workdir, images=images, resume=True, until_step=until,
                     init_params=params, init_state=state, progress=False,
                     checkpoint_every=eval_every)
      p, s = result.params, result.state
    mse = evaluate(config, p, s, test)["mse"]
    points.append((until, mse))
    print(f"  step {until:5d}  test MSE {mse:.5f}", flush=True)
  return points


def first_reaching(points, target):
  return next((step for step, mse in points if mse <= target), None)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--base", default="mnist-conv-ema")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--eval-every", type=int, default=200)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--target", type=float, default=0.0060)
  parser.add_argument("--json", default="bench_results/finetune_transfer.json")
  args = parser.parse_args(argv)

  base = vqzoo.load(args.base)
  recipe = vqzoo.TrainConfig(dataset="fashion_mnist", steps=args.steps,
                             batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=50,
                             seed=args.seed)
  images = data_lib.load_images("fashion_mnist", "train")
  test = data_lib.load_images("fashion_mnist", "test")
  curves = {}
  t0 = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    for label, init in (("fine-tuned from " + args.base, base), ("from scratch", None)):
      print(label, flush=True)
      curves[label] = curve(base.config, recipe, images, test, init, args.eval_every,
                            Path(tmp) / label.replace(" ", "_"))
  labels = list(curves)
  print(f"\nFashion-MNIST test MSE (10,000 images), recipe: {json.dumps(recipe.to_dict())}")
  print("| step | " + " | ".join(labels) + " |")
  print("| ---: |" + " ---: |" * len(labels))
  for i, (step, _) in enumerate(curves[labels[0]]):
    print(f"| {step} | " + " | ".join(f"{curves[l][i][1]:.5f}" for l in labels) + " |")
  reach = {l: first_reaching(curves[l], args.target) for l in labels}
  print(f"\nsteps to reach MSE <= {args.target}: " + "; ".join(
      f"{l}: {s if s is not None else f'not within {args.steps}'}" for l, s in reach.items()))
  print(f"wall time {time.time() - t0:.0f} s")
  Path(args.json).parent.mkdir(parents=True, exist_ok=True)
  Path(args.json).write_text(json.dumps({"recipe": recipe.to_dict(), "target": args.target,
                                         "curves": curves, "steps_to_target": reach}, indent=2))


if __name__ == "__main__":
  main()
