"""Reproducing and bundling zoo variants: train from the registry recipe, measure, write artifacts."""

from __future__ import annotations

import json
from pathlib import Path

from vqzoo import data as data_lib
from vqzoo import registry
from vqzoo.cards import render_card
from vqzoo.evaluate import evaluate
from vqzoo.io import atomic_write_bytes, sha256_file
from vqzoo.pretrained import WEIGHTS_NAME, PretrainedVQVAE
from vqzoo.train import train


def train_variant(name: str, workdir: str | Path, data_dir: str | None = None,
                  resume: bool = False, progress: bool = True, steps: int | None = None,
                  ) -> PretrainedVQVAE:
  """Trains zoo variant ``name`` from its registry recipe (optionally fewer ``steps``)."""
  import dataclasses
  entry = registry.get_entry(name)
  recipe = entry.recipe if steps is None else dataclasses.replace(entry.recipe, steps=steps)
  result = train(entry.config, recipe, workdir, data_dir=data_dir, resume=resume,
                 progress=progress)
  return PretrainedVQVAE(entry.config, result.params, result.state)


def measure_variant(name: str, model: PretrainedVQVAE, data_dir: str | None = None,
                    split: str = "test") -> dict:
  """Evaluates ``model`` on the variant's dataset split (full test split by default)."""
  entry = registry.get_entry(name)
  images = data_lib.load_images(entry.eval_dataset, split, data_dir)
  return evaluate(model.config, model.params, model.state, images)


def check_bar(name: str, metrics: dict) -> list[str]:
  """Returns the bar conditions ``metrics`` fails (empty when it meets the bar)."""
  bar = registry.get_entry(name).bar
  failures = []
  if "mse_max" in bar and not metrics["mse"] <= bar["mse_max"]:
    failures.append(f"mse {metrics['mse']:.5f} > {bar['mse_max']}")
  if "codes_used_min" in bar and not metrics["codes_used"] >= bar["codes_used_min"]:
    failures.append(f"codes_used {metrics['codes_used']} < {bar['codes_used_min']}")
  return failures


def zoo_card(name: str, metrics: dict) -> str:
  entry = registry.get_entry(name)
  bar = ", ".join(f"{k} {v}" for k, v in entry.bar.items())
  return render_card(
      name, entry.config, entry.description + ".", recipe=entry.recipe, metrics=metrics,
      dataset=entry.eval_dataset,
      extra_sections={"Reproduce": f"`python scripts/train.py --variant {name}` (recipe above), "
                                   f"then `vqzoo eval {name}`. Quality bar: {bar}."})


def bundle_variant(name: str, model: PretrainedVQVAE, metrics: dict,
                   repo_root: str | Path | None = None) -> str:
  """Writes the variant's weights, config, metrics and card into the package and pins its sha256.

  Returns the new sha256 of ``model.safetensors``.
  """
  entry = registry.get_entry(name)
  model.card = zoo_card(name, metrics)
  model.save_pretrained(entry.bundled_dir)
  atomic_write_bytes(entry.bundled_dir / "metrics.json",
                     (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
  digest = sha256_file(entry.bundled_dir / WEIGHTS_NAME)
  pins_path = registry.WEIGHTS_DIR / "pins.json"
  pins = json.loads(pins_path.read_text()) if pins_path.exists() else {}
  pins[name] = {**pins.get(name, {}), "repo_id": entry.weights.repo_id,
                "revision": entry.weights.revision, "sha256": digest}
  atomic_write_bytes(pins_path, (json.dumps(pins, indent=2, sort_keys=True) + "\n").encode())
  root = Path(repo_root) if repo_root else Path(__file__).resolve().parent.parent
  if (root / "model_cards").is_dir():
    atomic_write_bytes(root / "model_cards" / f"{name}.md", model.card.encode())
  return digest


def zoo_table() -> str:
  """The README's zoo table, rendered from the registry and each variant's measured metrics."""
  rows = ["| variant | architecture | test MSE | PSNR (dB) | codes used | perplexity | bar |",
          "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
  for name in registry.list_models():
    entry = registry.get_entry(name)
    m = entry.metrics
    bar = ", ".join(f"MSE ≤ {v}" if k == "mse_max" else f"≥ {v:g} codes"
                    for k, v in entry.bar.items())
    if not m:
      rows.append(f"| `{name}` | {entry.description} | not trained | | | | {bar} |")
      continue
    rows.append(f"| `{name}` | {entry.description} | {m['mse']:.5f} | {m['psnr']:.2f} | "
                f"{m['codes_used']} | {m['perplexity']:.1f} | {bar} |")
  return "\n".join(rows)
