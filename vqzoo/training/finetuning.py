"""Fine-tuning a pretrained VQ-VAE on a TFDS dataset or a folder of images.

The recipe is a :class:`~vqzoo.FinetuneConfig`; ``vqzoo finetune`` and ``scripts/finetune.py``
parse their flags into one and call :func:`finetune`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vqzoo import cpu_tuning
from vqzoo._version import __version__
from vqzoo.configs import FinetuneConfig, RunConfig
from vqzoo.images import uint8_to_float
from vqzoo.nn import apply_reseeds, build, replace_codes
from vqzoo.pretrained import PretrainedVQVAE, load
from vqzoo.pretrained.cards import card_datasets, metrics_table, render_card
from vqzoo.pretrained.saving import save_model_folder
from vqzoo import result_warnings
from vqzoo.training import data as data_lib
from vqzoo.training.metrics import evaluate
from vqzoo.image_folder import (conversion_record, conversion_section, load_image_folder,
                                split_holdout)
from vqzoo.training.trainer import train


@dataclasses.dataclass
class FinetuneResult:
  """The fine-tuned model, its held-out metrics before and after, and its lineage record."""

  model: PretrainedVQVAE
  metrics_before: dict[str, Any]
  metrics_after: dict[str, Any]
  lineage: dict[str, Any]


def reseed_unused_codes(model: PretrainedVQVAE, images: np.ndarray, seed: int,
                        batch_size: int = 1000) -> tuple[Any, Any, int]:
  """Moves codes that no image of ``images`` uses onto random encoder outputs.

  Returns:
    ``(params, state, number of codes re-seeded)``; the model is not modified.
  """
  config = model.config
  forward = build(config, wrap=cpu_tuning.tuned)
  apply = cpu_tuning.jit(lambda p, s, x: forward.apply(p, s, None, x, False)[0])
  z_all, counts = [], np.zeros(config.quantizer.num_embeddings, np.int64)
  for start in range(0, len(images), batch_size):
    out = apply(model.params, model.state, uint8_to_float(images[start:start + batch_size]))
    z_all.append(np.asarray(out.z_e).reshape(-1, config.quantizer.embedding_dim))
    counts += np.asarray(out.code_counts)
  z_all = np.concatenate(z_all)
  dead = counts == 0
  fresh = np.zeros((len(dead), z_all.shape[1]), np.float32)
  fresh[dead] = z_all[np.random.default_rng(seed).integers(0, len(z_all), dead.sum())]
  reseeds, state = replace_codes(config).apply(model.params, model.state, None, dead, fresh)
  params = apply_reseeds(model.params, reseeds)
  return jax.device_get(params), jax.device_get(state), int(dead.sum())


def _portable(source: dict[str, Any]) -> dict[str, Any]:
  """A model's source record without machine paths (a directory is named, not located)."""
  out = {k: v for k, v in source.items() if k not in ("path", "bundled")}
  if "path" in source:
    out["directory"] = Path(source["path"]).name
  return out


def _base_datasets(model: PretrainedVQVAE) -> list[str]:
  """The TFDS datasets the base model was trained on: the zoo's recipe, else its card's."""
  if "zoo" in model.source:
    from vqzoo.pretrained import registry
    return [registry.get_entry(model.source["zoo"]).recipe.dataset]
  return card_datasets(model.card)


def _data(base_config, config: FinetuneConfig, dataset: str | None, images_dir: str | None,
          data_dir: str | None, convert: str | None = None, resize: bool = False):
  """``(train images, held-out images, data record)`` for the lineage."""
  if (dataset is None) == (images_dir is None):
    raise ValueError("give exactly one source of training data: dataset or images_dir")
  if images_dir is not None:
    all_images, _ = load_image_folder(images_dir, base_config.image_shape, convert, resize)
    train_images, eval_images = split_holdout(all_images, config.holdout_fraction,
                                              config.recipe.seed)
    if len(eval_images) == 0:
      eval_images = train_images
    info = {"source": "image-folder", "folder": Path(images_dir).name, "images": len(all_images),
            "train": len(train_images), "held_out": len(eval_images),
            "holdout_fraction": config.holdout_fraction,
            "conversion": conversion_record(convert, resize)}
  else:
    train_images = data_lib.load_images(dataset, config.recipe.split, data_dir)
    eval_images = data_lib.load_images(dataset, config.eval_split, data_dir)
    info = {"source": "tfds", "dataset": dataset, "split": config.recipe.split,
            "eval_split": config.eval_split}
  if tuple(train_images.shape[1:]) != base_config.image_shape:
    raise ValueError(f"training images have shape {train_images.shape[1:]}, the model expects "
                     f"{base_config.image_shape}")
  return train_images, eval_images, info


def finetune(base: str, out: str | Path, config: FinetuneConfig = FinetuneConfig(), *,
             dataset: str | None = None, images_dir: str | None = None,
             data_dir: str | None = None, workdir: str | Path | None = None,
             run: RunConfig = RunConfig(checkpoint_every=500),
             push_to_hub: str | None = None, convert: str | None = None,
             resize: bool = False) -> FinetuneResult:
  """Fine-tunes ``base`` and writes a loadable model directory with a lineage card to ``out``.

  Args:
    base: zoo name, ``hf-hub:owner/repo[@rev]`` or a model directory.
    out: output directory (config.json, model.safetensors, README.md, metrics.json).
    config: the recipe (steps, optimiser, frozen parts, re-seeding, held-out share).
    dataset: TFDS dataset to train on (``config.recipe.split``) and measure on
      (``config.eval_split``).
    images_dir: a folder of images instead (see :mod:`vqzoo.image_folder`).
    convert, resize: how image files of another channel kind or size are converted
      (see :func:`~vqzoo.image_folder.load_image_folder`); recorded in the lineage.
    data_dir: TFDS data directory.
    workdir: checkpoints and metrics (default ``OUT.work``), under the resume rule of every
      run (:mod:`vqzoo.training.checkpoint`): ``run.resume`` continues there, ``run.overwrite``
      starts afresh over an earlier run (without either, an existing checkpoint is an error).
    run: resume/overwrite, checkpoint and log intervals, progress bars.
    push_to_hub: also publish the result to this Hub repo id.

  In a multi-process run (:func:`vqzoo.training.distributed.initialize` first) every process
  calls this with the same arguments and trains one model together; only process 0 writes
  ``out``, the checkpoints and metrics, and pushes.
  """
  base_model = load(base)
  model_config = base_model.config
  if config.reseed_before and model_config.quantizer.kind != "vq":
    raise ValueError(f"reseed_before: moves unused codes of one codebook (quantizer kind 'vq'); "
                     f"this model's quantizer is {model_config.quantizer.kind!r} (residual "
                     "stages re-seed themselves while training with reseed_threshold; FSQ and "
                     "LFQ have no codebook to re-seed)")
  train_images, eval_images, data_info = _data(model_config, config, dataset, images_dir,
                                               data_dir, convert, resize)
  warned = result_warnings.emit(result_warnings.recipe_warnings(config.recipe, len(train_images))
                       + result_warnings.held_out_warnings(len(eval_images)))
  params, state = base_model.params, base_model.state
  reseeded = 0
  if config.reseed_before and "codebook" not in config.freeze:
    params, state, reseeded = reseed_unused_codes(base_model, train_images, config.recipe.seed)
  train_config = model_config
  if config.reseed_threshold is not None:
    train_config = dataclasses.replace(model_config, quantizer=dataclasses.replace(
        model_config.quantizer, dead_code_threshold=config.reseed_threshold))
  recipe = config.train_config(dataset or "image-folder", len(train_images))
  before = evaluate(model_config, base_model.params, base_model.state, eval_images,
                    progress=run.progress)
  out = Path(out)
  result = train(train_config, recipe, workdir or out.with_name(out.name + ".work"),
                 train_images, run=run, init=(params, state), frozen=config.freeze)
  # The saved model keeps the base config: re-seeding is a training-time option.
  after = evaluate(model_config, result.params, result.state, eval_images,
                   progress=run.progress)
  warned += result_warnings.emit(result_warnings.code_usage_warnings(
      after, math.prod(model_config.codes_shape)))
  base_label = base if "path" not in base_model.source else Path(base).name
  lineage = {"base": base_label, "base_source": _portable(base_model.source), "data": data_info,
             "finetune": config.to_dict(), "steps": result.step, "reseeded_before": reseeded,
             "reseed_threshold_used": train_config.quantizer.dead_code_threshold,
             "vqzoo_version": __version__}
  threshold = train_config.quantizer.dead_code_threshold
  card = render_card(
      out.name, model_config, f"Fine-tuned from `{base_label}` with vqzoo.", recipe=recipe,
      metrics=after, dataset=dataset, lineage=lineage, held_out=len(eval_images),
      load_spec=f"./{out.name}", base_datasets=_base_datasets(base_model),
      extra_sections={**result_warnings.card_section(warned),
          **conversion_section(data_info.get("conversion"), model_config.image_shape),
          "Fine-tuning": (f"{result.step} steps; frozen: {', '.join(config.freeze) or 'nothing'}; "
                          "dead-code re-seeding while fine-tuning: "
                          + (f"codes used by fewer than {threshold} vectors per batch"
                             if threshold else "off")
                          + (f"; {reseeded} unused codes re-seeded before training"
                             if reseeded else "") + "."),
          "Before and after fine-tuning": metrics_table(
              after, {"base model": before, "fine-tuned": after})})
  model = PretrainedVQVAE(model_config, result.params, result.state, card=card)
  if jax.process_index() != 0:  # a multi-process run: process 0 writes and publishes
    return FinetuneResult(model, before, after, lineage)
  save_model_folder(model, out, extra_files={"metrics.json": (json.dumps(  # one swap, whole
      {"before": before, "after": after, "lineage": lineage}, indent=2, default=str) + "\n"
  ).encode()})
  if push_to_hub:
    model.push_to_hub(push_to_hub, commit_message=f"Fine-tuned from {base_label}")
  return FinetuneResult(model, before, after, lineage)
