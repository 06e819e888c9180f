"""Maintainer tooling for the zoo: train a variant from its recipe, measure it, and bundle it
into the source tree (weights, metrics, card, sha256 pin). Used by ``scripts/train.py`` and
``scripts/evaluate.py``; it writes into ``vqzoo/weights`` and ``model_cards``, so it lives here,
not in the library.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from vqzoo.io import atomic_write_bytes, sha256_file
from vqzoo.pretrained import WEIGHTS_NAME, PretrainedVQVAE, registry
from vqzoo.pretrained.cards import zoo_card
from vqzoo.pretrained.integrity import ARTIFACT_FILES
from vqzoo.training import measure, train

REPO_ROOT = Path(__file__).resolve().parent.parent


def train_variant(name: str, workdir: str | Path, data_dir: str | None = None,
                  resume: bool = False, progress: bool = True, steps: int | None = None,
                  checkpoint_every: int = 1000, overwrite: bool = False,
                  extend_schedule: bool = False) -> PretrainedVQVAE:
  """Trains zoo variant ``name`` from its registry recipe (optionally fewer ``steps``).

  ``checkpoint_every``, ``overwrite`` and ``extend_schedule`` are passed to
  :func:`vqzoo.training.train`.
  """
  entry = registry.get_entry(name)
  recipe = entry.recipe if steps is None else dataclasses.replace(entry.recipe, steps=steps)
  result = train(entry.config, recipe, workdir, data_dir=data_dir, resume=resume,
                 progress=progress, checkpoint_every=checkpoint_every, overwrite=overwrite,
                 extend_schedule=extend_schedule)
  return PretrainedVQVAE(entry.config, result.params, result.state)


def measure_variant(name: str, model: PretrainedVQVAE, data_dir: str | None = None,
                    split: str = "test") -> dict:
  """Evaluates ``model`` on the variant's dataset split (full test split by default)."""
  return measure(model, registry.get_entry(name).eval_dataset, split, data_dir)


def bundle_variant(name: str, model: PretrainedVQVAE, metrics: dict,
                   repo_root: str | Path = REPO_ROOT) -> str:
  """Writes the variant's weights, config, metrics and card into the package and pins its sha256.

  Returns the new sha256 of ``model.safetensors``.
  """
  entry = registry.get_entry(name)
  model.card = zoo_card(entry, metrics)
  model.save_pretrained(entry.bundled_dir)
  atomic_write_bytes(entry.bundled_dir / "metrics.json",
                     (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
  digest = sha256_file(entry.bundled_dir / WEIGHTS_NAME)
  pins_path = registry.WEIGHTS_DIR / "pins.json"
  pins = json.loads(pins_path.read_text()) if pins_path.exists() else {}
  files = {f: sha256_file(entry.bundled_dir / f) for f in ARTIFACT_FILES}
  pins[name] = {**pins.get(name, {}), "repo_id": entry.weights.repo_id,
                "revision": entry.weights.revision, "sha256": digest, "files": files}
  atomic_write_bytes(pins_path, (json.dumps(pins, indent=2, sort_keys=True) + "\n").encode())
  cards = Path(repo_root) / "model_cards"
  if cards.is_dir():
    atomic_write_bytes(cards / f"{name}.md", model.card.encode())
  return digest


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
