"""Fine-tuning a pretrained VQ-VAE on a TFDS dataset or a folder of images.

``vqzoo finetune`` and ``scripts/finetune.py`` both call :func:`main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from vqzoo import compilation
from vqzoo import data as data_lib
from vqzoo.cards import metrics_table, render_card
from vqzoo.configs import TrainConfig
from vqzoo.evaluate import evaluate
from vqzoo.image_folder import FOLDER_RULE, load_image_folder, split_holdout
from vqzoo.io import atomic_write_bytes
from vqzoo.loading import load
from vqzoo.model import build
from vqzoo.pretrained import PretrainedVQVAE
from vqzoo.train import PARTS, QUANTIZER, train


@dataclasses.dataclass
class FinetuneResult:
  model: PretrainedVQVAE
  metrics_before: dict[str, Any]
  metrics_after: dict[str, Any]
  lineage: dict[str, Any]


def reseed_unused_codes(model: PretrainedVQVAE, images: np.ndarray, seed: int,
                        batch_size: int = 1000):
  """Moves codes that no image of ``images`` uses onto random encoder outputs.

  Returns:
    ``(params, state, number of codes re-seeded)``; the model is not modified.
  """
  config = model.config
  apply = compilation.jit(lambda p, s, x: build(config).apply(p, s, None, x, False)[0])
  z_all, counts = [], np.zeros(config.quantizer.num_embeddings, np.int64)
  for start in range(0, len(images), batch_size):
    out = apply(model.params, model.state, data_lib.to_float(images[start:start + batch_size]))
    z_all.append(np.asarray(out.z_e).reshape(-1, config.quantizer.embedding_dim))
    counts += np.asarray(out.code_counts)
  z_all = np.concatenate(z_all)
  dead = counts == 0
  picks = np.random.default_rng(seed).integers(0, len(z_all), dead.sum())
  params = jax.tree_util.tree_map(np.array, model.params)
  state = jax.tree_util.tree_map(np.array, model.state)
  if config.quantizer.ema:
    q = state[QUANTIZER]
    q["codebook"][dead] = z_all[picks]
    # A re-seeded code's moving averages say "one vector, this one" (debiased like the rest).
    debias = 1.0 - config.quantizer.decay ** float(q["ema_counter"])
    q["ema_cluster_size_hidden"][dead] = debias
    q["ema_dw_hidden"][dead] = z_all[picks] * debias
  else:
    params[QUANTIZER]["codebook"][dead] = z_all[picks]
  return params, state, int(dead.sum())


def _measure(model, params, state, images) -> dict[str, Any]:
  return evaluate(model.config, params, state, images)


def finetune(base: str, out: str | Path, *, dataset: str | None = None, split: str = "train",
             eval_split: str = "test", images_dir: str | None = None,
             holdout_fraction: float = 0.1, freeze: Iterable[str] = (), steps: int = 1000,
             batch_size: int = 128, learning_rate: float = 3e-4, schedule: str = "cosine",
             warmup_steps: int = 50, final_lr_fraction: float = 0.1, seed: int = 0,
             reseed_before: bool = False, reseed_threshold: float = 0.0,
             workdir: str | Path | None = None, resume: bool = False,
             data_dir: str | None = None, progress: bool = True, log_every: int = 50,
             checkpoint_every: int = 500, push_to_hub: str | None = None) -> FinetuneResult:
  """Fine-tunes ``base`` and writes a loadable model directory with a lineage card to ``out``.

  Args:
    base: zoo name, ``hf-hub:owner/repo[@rev]`` or a model directory.
    out: output directory (config.json, model.safetensors, README.md, metrics.json).
    dataset, split, eval_split: TFDS data to train on and to evaluate before/after.
    images_dir: a folder of images instead of ``dataset`` (see :mod:`vqzoo.image_folder`).
    holdout_fraction: share of the folder held out for evaluation.
    freeze: parts among ``encoder``, ``decoder``, ``codebook`` that stay bit-identical.
    reseed_before: move codes unused on the training data onto encoder outputs first.
    reseed_threshold: during training, re-seed codes whose usage (vectors per batch)
      falls below this (0 = off).
    workdir: checkpoints and metrics (default ``OUT.work``); ``resume`` continues there.
    push_to_hub: also publish the result to this Hub repo id.
  """
  if (dataset is None) == (images_dir is None):
    raise ValueError("give exactly one source of training data: dataset or images_dir")
  freeze = tuple(sorted(set(freeze)))
  base_model = load(base)
  config = base_model.config
  if images_dir is not None:
    all_images, _ = load_image_folder(images_dir, config.image_shape)
    train_images, eval_images = split_holdout(all_images, holdout_fraction, seed)
    if len(eval_images) == 0:
      eval_images = train_images
    data_info = {"images_dir": str(Path(images_dir).resolve()), "images": len(all_images),
                 "train": len(train_images), "held_out": len(eval_images),
                 "holdout_fraction": holdout_fraction}
  else:
    train_images = data_lib.load_images(dataset, split, data_dir)
    eval_images = data_lib.load_images(dataset, eval_split, data_dir)
    data_info = {"dataset": dataset, "split": split, "eval_split": eval_split}
  if tuple(train_images.shape[1:]) != config.image_shape:
    raise ValueError(f"training images have shape {train_images.shape[1:]}, the model expects "
                     f"{config.image_shape}")

  params, state = base_model.params, base_model.state
  reseeded = 0
  if reseed_before and "codebook" not in freeze:
    params, state, reseeded = reseed_unused_codes(base_model, train_images, seed)
  train_config = config
  if reseed_threshold > 0:
    train_config = dataclasses.replace(config, quantizer=dataclasses.replace(
        config.quantizer, dead_code_threshold=reseed_threshold))
  recipe = TrainConfig(dataset=dataset or "image-folder", split=split if dataset else "folder",
                       steps=steps, batch_size=min(batch_size, len(train_images)),
                       learning_rate=learning_rate, warmup_steps=warmup_steps,
                       final_lr_fraction=final_lr_fraction, seed=seed, schedule=schedule)
  before = _measure(base_model, base_model.params, base_model.state, eval_images)
  out = Path(out)
  result = train(train_config, recipe, workdir or out.with_name(out.name + ".work"),
                 images=train_images, resume=resume, init_params=params, init_state=state,
                 frozen=freeze, progress=progress, log_every=log_every,
                 checkpoint_every=checkpoint_every)
  # The saved model keeps the base config: re-seeding is a training-time option.
  after = _measure(base_model, result.params, result.state, eval_images)
  lineage = {"base": base, "base_source": base_model.source, "data": data_info,
             "recipe": recipe.to_dict(), "frozen": list(freeze), "steps": result.step,
             "reseeded_before": reseeded, "reseed_threshold": reseed_threshold}
  card = render_card(
      out.name, config, f"Fine-tuned from `{base}` with vqzoo.", recipe=recipe, metrics=after,
      dataset=dataset, lineage=lineage,
      extra_sections={"Before and after fine-tuning": metrics_table(
          after, {"base model": before, "fine-tuned": after})})
  model = PretrainedVQVAE(config, result.params, result.state, card=card)
  model.save_pretrained(out)
  atomic_write_bytes(out / "metrics.json", (json.dumps(
      {"before": before, "after": after, "lineage": lineage}, indent=2, default=str) + "\n"
  ).encode())
  if push_to_hub:
    model.push_to_hub(push_to_hub, commit_message=f"Fine-tuned from {base}")
  return FinetuneResult(model, before, after, lineage)


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="vqzoo finetune", description=(
      "Fine-tune a pretrained VQ-VAE on a TFDS dataset or a folder of images.\n\n"
      "Image folders: " + FOLDER_RULE + "."), formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--from", dest="base", required=True,
                 help="zoo name, hf-hub:owner/repo[@rev] or a model directory")
  p.add_argument("--out", required=True, help="output model directory")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--dataset", help="TFDS dataset name, e.g. fashion_mnist")
  src.add_argument("--images", help="folder of PNG/JPEG images")
  p.add_argument("--split", default="train", help="TFDS training split")
  p.add_argument("--eval-split", default="test", help="TFDS held-out split")
  p.add_argument("--holdout-fraction", type=float, default=0.1,
                 help="share of an image folder held out for evaluation")
  p.add_argument("--freeze", action="append", default=[], choices=PARTS,
                 help="part that does not train (repeatable)")
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
  p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
  p.add_argument("--warmup-steps", type=int, default=50)
  p.add_argument("--final-lr-fraction", type=float, default=0.1)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--reseed-before", action="store_true",
                 help="re-seed codes unused on the training data before training")
  p.add_argument("--reseed-threshold", type=float, default=0.0,
                 help="re-seed codes used less than this (vectors per batch) while training")
  p.add_argument("--workdir", help="checkpoints (default OUT.work)")
  p.add_argument("--resume", action="store_true", help="continue from the workdir checkpoint")
  p.add_argument("--data-dir", help="TFDS data directory")
  p.add_argument("--push-to-hub", metavar="REPO_ID", help="publish the result")
  p.add_argument("--no-progress", action="store_true")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    result = finetune(
        args.base, args.out, dataset=args.dataset, split=args.split, eval_split=args.eval_split,
        images_dir=args.images, holdout_fraction=args.holdout_fraction, freeze=args.freeze,
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
        schedule=args.schedule, warmup_steps=args.warmup_steps,
        final_lr_fraction=args.final_lr_fraction, seed=args.seed,
        reseed_before=args.reseed_before, reseed_threshold=args.reseed_threshold,
        workdir=args.workdir, resume=args.resume, data_dir=args.data_dir,
        progress=not args.no_progress, push_to_hub=args.push_to_hub)
  except (ValueError, KeyError, FileNotFoundError, FloatingPointError) as e:
    print(f"vqzoo finetune: error: {e}", file=sys.stderr)
    return 2
  print(json.dumps({"out": args.out, "before": result.metrics_before,
                    "after": result.metrics_after}, indent=2))
  return 0
