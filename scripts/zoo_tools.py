"""Maintainer tooling for the zoo: train a variant from its recipe, measure it, and bundle it
into the source tree (weights, metrics, card, sha256 pin). Used by ``scripts/train.py`` and
``scripts/evaluate.py``; it writes into ``vqzoo/weights`` and ``model_cards``, so it lives here,
not in the library.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from vqzoo.configs import RunConfig
from vqzoo.io import atomic_write_bytes, sha256_file
from vqzoo.pretrained import WEIGHTS_NAME, PretrainedVQVAE, registry
from vqzoo.pretrained.cards import zoo_card
from vqzoo.pretrained.integrity import ARTIFACT_FILES, PRIOR_FILES
from vqzoo.pretrained.saving import save_model_folder
from vqzoo.training import distributed, measure, train

REPO_ROOT = Path(__file__).resolve().parent.parent


def train_variant(name: str, workdir: str | Path, data_dir: str | None = None,
                  run: RunConfig = RunConfig(), steps: int | None = None) -> PretrainedVQVAE:
  """Trains zoo variant ``name`` from its registry recipe (optionally fewer ``steps``).

  ``run`` (resume/overwrite, intervals, progress) is passed to :func:`vqzoo.training.train`.
  In a multi-process run every process calls this (one step spans all their devices) and
  gets the same model; only process 0 writes to ``workdir``.
  """
  entry = registry.get_entry(name)
  recipe = entry.recipe if steps is None else dataclasses.replace(entry.recipe, steps=steps)
  result = train(entry.config, recipe, workdir, data_dir=data_dir, run=run)
  return PretrainedVQVAE(entry.config, result.params, result.state)


def measure_variant(name: str, model: PretrainedVQVAE, data_dir: str | None = None,
                    split: str = "test") -> dict:
  """Evaluates ``model`` on the variant's dataset split (full test split by default)."""
  return measure(model, registry.get_entry(name).eval_dataset, split, data_dir)


def bundle_variant(name: str, model: PretrainedVQVAE, metrics: dict,
                   repo_root: str | Path = REPO_ROOT) -> str | None:
  """Writes the variant's weights, config, metrics and card into the package and pins its sha256.

  Returns the new sha256 of ``model.safetensors``; in a multi-process run only process 0
  writes, the others return ``None``.
  """
  if not distributed.is_main_process():
    return None
  entry = registry.get_entry(name)
  model.card = zoo_card(entry, metrics)
  save_model_folder(model, entry.bundled_dir, extra_files={  # the model and its metrics, whole
      "metrics.json": (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode()})
  digest = sha256_file(entry.bundled_dir / WEIGHTS_NAME)
  pins_path = registry.WEIGHTS_DIR / "pins.json"
  pins = json.loads(pins_path.read_text()) if pins_path.exists() else {}
  files = {f: sha256_file(entry.bundled_dir / f) for f in (*ARTIFACT_FILES, *PRIOR_FILES)
           if (entry.bundled_dir / f).exists()}
  pins[name] = {**pins.get(name, {}), "repo_id": entry.weights.repo_id,
                "revision": entry.weights.revision, "sha256": digest, "files": files}
  atomic_write_bytes(pins_path, (json.dumps(pins, indent=2, sort_keys=True) + "\n").encode())
  cards = Path(repo_root) / "model_cards"
  if cards.is_dir():
    atomic_write_bytes(cards / f"{name}.md", model.card.encode())
  return digest


def fit_variant_prior(name: str, workdir: str | Path | None = None,
                      run: RunConfig = RunConfig(checkpoint_every=500, log_every=100),
                      data_dir: str | None = None) -> PretrainedVQVAE:
  """The bundled variant with its prior fitted by the registry's prior recipe."""
  from vqzoo.pretrained import load
  from vqzoo.training import load_images
  from vqzoo.training.data import load_labels
  from vqzoo.training.prior_fitting import encode_images, fit_prior
  entry = registry.get_entry(name)
  recipe = entry.prior
  model = load(name)
  images = load_images(recipe.train.dataset, recipe.train.split, data_dir)
  labels = load_labels(recipe.train.dataset, recipe.train.split, data_dir)
  codes = encode_images(model, images, progress=run.progress)
  params = fit_prior(recipe.config, recipe.train, codes,
                     labels if recipe.config.num_classes else None, workdir=workdir, run=run)
  model.set_prior(recipe.config, params)
  return model


def bundled_prior(name: str) -> PretrainedVQVAE:
  """The bundled variant with its bundled prior; ``ValueError`` when it ships none."""
  from vqzoo.pretrained import load
  model = load(name)
  if model.prior is None:
    raise ValueError(f"{name} ships no prior to measure; fit one first (drop --measure-only)")
  return model


def measure_prior(name: str, model: PretrainedVQVAE, data_dir: str | None = None,
                  progress: bool = True) -> dict:
  """Prior NLL against its baselines, sample quality and sampling time, on the test split."""
  import time

  from vqzoo.training import load_images
  from vqzoo.training.data import load_labels
  from vqzoo.training.prior_fitting import encode_images, prior_nll
  from vqzoo.evaluation.sample_quality import sample_quality
  entry = registry.get_entry(name)
  dataset = entry.eval_dataset
  test_codes = encode_images(model, load_images(dataset, "test", data_dir), progress=progress)
  train_codes = encode_images(model, load_images(dataset, "train", data_dir), progress=progress)
  metrics = prior_nll(model, test_codes, load_labels(dataset, "test", data_dir), train_codes)
  metrics.update(sample_quality(model, dataset, data_dir, progress=progress))
  model.sample(64, seed=0)  # compile
  times = []
  for seed in range(1, 6):
    start = time.perf_counter()
    model.sample(64, seed=seed)
    times.append(time.perf_counter() - start)
  metrics["sample_64_seconds"] = float(np.median(times))
  return metrics


def check_prior_bar(name: str, model: PretrainedVQVAE, prior_metrics: dict) -> list[str]:
  """The bars of the registry entry's ``prior_bar`` a conv variant's prior misses (empty when
  it meets them), and the Fréchet check: samples closer to reconstructions than unigram samples."""
  if model.config.arch != "conv":
    return []
  bar, m, failures = registry.get_entry(name).prior_bar, prior_metrics, []
  missed = registry.prior_bar_misses(bar, m)
  if "bits_vs_unigram_max" in missed:
    failures.append(f"prior {m['prior_bits']:.1f} bits > {bar['bits_vs_unigram_max']:.0%} of "
                    f"unigram {m['unigram_bits']:.1f}")
  fd = m["frechet"]
  if not abs(fd["samples"] - fd["reconstructions"]) < abs(fd["samples"] - fd["unigram_samples"]):
    failures.append(f"sample Fréchet {fd['samples']:.2f} not closer to reconstructions' "
                    f"{fd['reconstructions']:.2f} than to unigram samples' "
                    f"{fd['unigram_samples']:.2f}")
  if "class_accuracy_min" in missed:
    worst = min(m["class_accuracy_per_class"].values())
    failures.append(f"class accuracy of conditional samples {worst:.3f} < "
                    f"{bar['class_accuracy_min']} for some class")
  if "sample_64_seconds_max" in missed:
    failures.append(f"sampling 64 images took {m['sample_64_seconds']:.2f} s")
  return failures


def bundle_prior(name: str, model: PretrainedVQVAE, prior_metrics: dict,
                 repo_root: str | Path = REPO_ROOT) -> str:
  """Writes the prior into the bundled variant, records its metrics, re-pins and re-cards it."""
  entry = registry.get_entry(name)
  metrics = {**entry.metrics, "prior": prior_metrics}
  return bundle_variant(name, model, metrics, repo_root)


def rewrite_cards(repo_root: str | Path = REPO_ROOT) -> None:
  """Re-renders every bundled variant's card from its entry and recorded metrics (no training)."""
  for name in registry.list_models():
    entry = registry.get_entry(name)
    if not entry.metrics:
      continue
    card = zoo_card(entry, entry.metrics)
    atomic_write_bytes(entry.bundled_dir / "README.md", card.encode())
    atomic_write_bytes(Path(repo_root) / "model_cards" / f"{name}.md", card.encode())


if __name__ == "__main__":
  rewrite_cards()
