"""Training a new model from scratch on a TFDS dataset or a folder of images (``vqzoo train``).

The same loop, checkpoints, resume rule and progress bar as the zoo's recipes
(:func:`vqzoo.training.train`); the result is a model directory with a card that records the
architecture, the recipe, the data and the measured metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import jax

from vqzoo.configs import ModelConfig, RunConfig, TrainConfig
from vqzoo.pretrained import PretrainedVQVAE
from vqzoo.pretrained.cards import render_card
from vqzoo.pretrained.saving import save_model_folder
from vqzoo import result_warnings
from vqzoo.training import data as data_lib
from vqzoo.image_folder import (conversion_record, conversion_section, load_image_folder,
                                split_holdout)
from vqzoo.training.metrics import evaluate
from vqzoo.training.trainer import train


@dataclasses.dataclass
class NewModelResult:
  """The trained model and its metrics on the held-out images."""

  model: PretrainedVQVAE
  metrics: dict[str, Any]


def _data(config: ModelConfig, recipe: TrainConfig, images_dir: str | None, eval_split: str,
          holdout_fraction: float, data_dir: str | None, convert: str | None = None,
          resize: bool = False):
  """``(train images, held-out images, data record)``."""
  if images_dir is not None:
    everything, _ = load_image_folder(images_dir, config.image_shape, convert, resize)
    train_images, held_out = split_holdout(everything, holdout_fraction, recipe.seed)
    if len(held_out) == 0:
      raise ValueError(f"{images_dir}: {len(everything)} images leave none held out at "
                       f"holdout_fraction={holdout_fraction}; add images or raise the fraction")
    info = {"source": "image-folder", "folder": Path(images_dir).name,
            "images": len(everything), "train": len(train_images), "held_out": len(held_out),
            "conversion": conversion_record(convert, resize)}
    return train_images, held_out, info
  train_images = data_lib.load_images(recipe.dataset, recipe.split, data_dir)
  held_out = data_lib.load_images(recipe.dataset, eval_split, data_dir)
  if tuple(train_images.shape[1:]) != config.image_shape:
    raise ValueError(f"{recipe.dataset} images are {'x'.join(map(str, train_images.shape[1:]))}, "
                     f"the model reads {'x'.join(map(str, config.image_shape))}: set the model's "
                     "image_shape to the dataset's")
  info = {"source": "tfds", "dataset": recipe.dataset, "split": recipe.split,
          "eval_split": eval_split}
  return train_images, held_out, info


def train_new_model(config: ModelConfig, recipe: TrainConfig, out: str | Path, *,
                    images_dir: str | None = None, eval_split: str = "test",
                    holdout_fraction: float = 0.1, data_dir: str | None = None,
                    workdir: str | Path | None = None, run: RunConfig = RunConfig(),
                    convert: str | None = None, resize: bool = False) -> NewModelResult:
  """Trains ``config`` from scratch by ``recipe`` and saves it to ``out`` with a card.

  Args:
    config: the architecture, quantizer and image shape.
    recipe: data (``recipe.dataset`` and ``recipe.split`` unless ``images_dir``), steps,
      optimiser, seed.
    out: the model directory to write (replaced whole, see ``save_pretrained``).
    images_dir: a folder of PNG/JPEG images instead of a TFDS dataset; ``holdout_fraction``
      of it is held out to measure the model.
    eval_split: the TFDS split the model is measured on.
    data_dir: TFDS data directory.
    workdir: checkpoints and metrics (default ``OUT.work``), under the one resume rule.
    run: resume/overwrite, intervals, progress bar.
    convert, resize: how image files of another channel kind or size are converted
      (see :func:`~vqzoo.image_folder.load_image_folder`); recorded in the card and
      ``metrics.json``.

  In a multi-process run only process 0 writes ``out``.
  """
  train_images, held_out, info = _data(config, recipe, images_dir, eval_split,
                                       holdout_fraction, data_dir, convert, resize)
  warned = result_warnings.emit(result_warnings.recipe_warnings(recipe)
                       + result_warnings.held_out_warnings(len(held_out)))
  out = Path(out)
  result = train(config, recipe, workdir or out.with_name(out.name + ".work"), train_images,
                 run=run)
  metrics = evaluate(config, result.params, result.state, held_out, progress=run.progress)
  warned += result_warnings.emit(result_warnings.code_usage_warnings(
      metrics, math.prod(config.codes_shape)))
  dataset = None if images_dir is not None else recipe.dataset
  card = render_card(out.name, config, "A VQ-VAE (van den Oord et al., 2017, arXiv:1711.00937) "
                     "trained from scratch with `vqzoo train`.", recipe=recipe, metrics=metrics,
                     dataset=dataset, lineage={"data": info, "steps": result.step},
                     held_out=len(held_out), load_spec=f"./{out.name}",
                     extra_sections={**result_warnings.card_section(warned), **conversion_section(
                         info.get("conversion"), config.image_shape)})
  model = PretrainedVQVAE(config, result.params, result.state, card=card)
  if jax.process_index() == 0:
    save_model_folder(model, out, extra_files={"metrics.json": (json.dumps(  # one swap, whole
        {"metrics": metrics, "data": info, "recipe": recipe.to_dict()}, indent=2,
        default=float) + "\n").encode()})
  return NewModelResult(model, metrics)


def read_model_config(path: str | Path) -> ModelConfig:
  """A :class:`ModelConfig` from a JSON file (``config.json`` of a saved model works too)."""
  try:
    data = json.loads(Path(path).read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable JSON model config ({e})") from e
  return ModelConfig.from_dict(data)
