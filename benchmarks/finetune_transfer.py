#!/usr/bin/env python
"""Transfer: fine-tune a zoo model on other images vs. the same architecture from scratch.

Same recipe and seed for both; both evaluated on the target's test images every
``--eval-every`` steps (or at the ``--eval-at`` steps, stopping after the last one, the
learning-rate schedule still that of ``--steps``). Prints both curves and the steps each needs
to reach the target MSE.

  python benchmarks/finetune_transfer.py --steps 2000 --eval-every 200 --target 0.0060
      # mnist-conv-ema -> Fashion-MNIST (the same 28x28 grey shape)
  python benchmarks/finetune_transfer.py --base cifar10-conv-ema --dataset fashion_mnist \\
      --convert rgb --resize --train-images 5000 --steps 1000 --eval-every 100 --target 0.0045
      # CIFAR-10 -> a folder of 5,000 grey PNGs read as 32x32 colour images
  python benchmarks/finetune_transfer.py --base cifar10-conv-ema --dataset fashion_mnist \\
      --convert rgb --resize --train-images 5000 --test-images 2000 --steps 1000 \\
      --eval-at 0,1,2,3,5,10,20,50,100 --target 0.0045
      # the first 100 steps of that 1,000-step recipe, closely

When the target's images differ from the base model's shape, they are written to a temporary
folder as PNG files and read back through :func:`vqzoo.training.load_image_folder` with
``--convert`` / ``--resize``: the path a user's own image files take (``vqzoo finetune
--images-dir``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import vqzoo
from vqzoo.training import RunConfig, evaluate, load_image_folder, load_images, train


def curve(config, recipe, images, test, init, eval_steps, workdir):
  """``[(step, test MSE)]`` at each of the increasing ``eval_steps``, through one resumable
  run (each stop writes a checkpoint the next one resumes from)."""
  points = []
  for until in eval_steps:
    run = RunConfig(resume=until > 0, until_step=until, checkpoint_every=recipe.steps,
                    progress=False)
    result = train(config, recipe, workdir, images, run=run, init=init)
    mse = evaluate(config, result.params, result.state, test)["mse"]
    points.append((until, mse))
    print(f"  step {until:5d}  test MSE {mse:.5f}", flush=True)
  return points


def first_reaching(points, target):
  return next((step for step, mse in points if mse <= target), None)


def through_a_folder(images: np.ndarray, folder: Path, image_shape, convert, resize):
  """Writes ``[N, H, W, C]`` uint8 images as PNG files and reads them for ``image_shape``."""
  folder.mkdir(parents=True)
  for i, image in enumerate(images):
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{i:05d}.png")
  read, paths = load_image_folder(folder, image_shape, convert, resize)
  order = np.argsort([Path(p).name for p in paths])  # the files' order, not the scan's
  return read[order]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--base", default="mnist-conv-ema", help="zoo model to fine-tune")
  parser.add_argument("--dataset", default="fashion_mnist", help="TFDS dataset to transfer to")
  parser.add_argument("--train-images", type=int, help="first N training images (default all)")
  parser.add_argument("--test-images", type=int, help="first N test images (default all)")
  parser.add_argument("--convert", choices=("grey", "rgb"),
                      help="read images of the other channel kind as the base model's")
  parser.add_argument("--resize", action="store_true",
                      help="resize images of another size to the base model's")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--eval-every", type=int, default=200)
  parser.add_argument("--eval-at", help="comma-separated increasing steps to evaluate at, "
                                        "e.g. 0,1,2,5,10 (instead of --eval-every)")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--warmup-steps", type=int, default=50)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--target", type=float, default=0.0060)
  parser.add_argument("--json", default="bench_results/finetune_transfer.json")
  args = parser.parse_args(argv)
  if args.eval_at is not None:
    try:
      eval_steps = [int(step) for step in args.eval_at.split(",")]
    except ValueError:
      parser.error(f"--eval-at: expected comma-separated integers, got {args.eval_at!r}")
    if eval_steps != sorted(set(eval_steps)) or not 0 <= eval_steps[0] <= eval_steps[-1] \
        <= args.steps:
      parser.error(f"--eval-at: expected increasing steps from 0 to --steps ({args.steps}), "
                   f"got {args.eval_at!r}")
  elif args.steps < 1 or args.eval_every < 1 or args.steps % args.eval_every:
    parser.error(f"--steps ({args.steps}) must be a positive multiple of --eval-every "
                 f"({args.eval_every})")
  else:
    eval_steps = list(range(0, args.steps + 1, args.eval_every))

  base = vqzoo.load(args.base)
  recipe = vqzoo.TrainConfig(dataset=args.dataset, steps=args.steps,
                             batch_size=args.batch_size, learning_rate=args.lr,
                             warmup_steps=args.warmup_steps, seed=args.seed)
  images = load_images(args.dataset, "train")[:args.train_images]
  test = load_images(args.dataset, "test")[:args.test_images]
  curves = {}
  t0 = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    if images.shape[1:] != base.config.image_shape:
      images = through_a_folder(images, Path(tmp) / "train_images", base.config.image_shape,
                                args.convert, args.resize)
      test = through_a_folder(test, Path(tmp) / "test_images", base.config.image_shape,
                              args.convert, args.resize)
    for label, init in (("fine-tuned from " + args.base, (base.params, base.state)),
                        ("from scratch", None)):
      print(label, flush=True)
      curves[label] = curve(base.config, recipe, images, test, init, eval_steps,
                            Path(tmp) / label.replace(" ", "_"))
  labels = list(curves)
  print(f"\n{args.dataset} test MSE ({len(test):,} images; {len(images):,} training images "
        f"{np.asarray(images.shape[1:]).tolist()}), recipe: {json.dumps(recipe.to_dict())}")
  print("| step | " + " | ".join(labels) + " |")
  print("| ---: |" + " ---: |" * len(labels))
  for i, (step, _) in enumerate(curves[labels[0]]):
    print(f"| {step} | " + " | ".join(f"{curves[l][i][1]:.5f}" for l in labels) + " |")
  reach = {l: first_reaching(curves[l], args.target) for l in labels}
  print(f"\nsteps to reach MSE <= {args.target}: " + "; ".join(
      f"{l}: {s if s is not None else f'not within {eval_steps[-1]}'}"
      for l, s in reach.items()))
  print(f"wall time {time.time() - t0:.0f} s")
  Path(args.json).parent.mkdir(parents=True, exist_ok=True)
  Path(args.json).write_text(json.dumps({
      "base": args.base, "dataset": args.dataset, "train_images": len(images),
      "test_images": len(test), "convert": args.convert, "resize": args.resize,
      "recipe": recipe.to_dict(), "target": args.target, "curves": curves,
      "steps_to_target": reach}, indent=2))


if __name__ == "__main__":
  main()
