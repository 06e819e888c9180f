"""Fine-tuning from a zoo model onto real TFDS data and onto a folder of real digits as PNGs."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from vqzoo import FinetuneConfig, RunConfig, TrainConfig
from vqzoo.nn import part_of, part_prefixes
from vqzoo.pretrained import load
from vqzoo.training import finetuning as ft
from vqzoo.image_folder import load_image_folder

QUIET = RunConfig(progress=False)
BASE = "mnist-mlp"


def _folder_digest(folder):
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
          if p.is_file()}


def _assert_parts(base, tuned, frozen):
  prefixes = part_prefixes(base.config)
  for module, leaves in base.params.items():
    for name, value in leaves.items():
      same = np.array_equal(np.asarray(value), np.asarray(tuned.params[module][name]))
      assert same == (part_of(module, prefixes) in frozen), (module, name)


def test_finetune_on_tfds_subset(tmp_path, tfds_dir):
  out = tmp_path / "ft"
  recipe = TrainConfig(split="train[:3000]", steps=60, batch_size=64, learning_rate=1e-3,
                       warmup_steps=5)
  config = FinetuneConfig(recipe=recipe, eval_split="test[:1000]", freeze=("codebook",))
  result = ft.finetune(BASE, out, config, dataset="fashion_mnist", data_dir=tfds_dir,
                       run=RunConfig(progress=False, log_every=10))
  assert result.metrics_after["mse"] < result.metrics_before["mse"]
  lines = [json.loads(l) for l in (tmp_path / "ft.work" / "metrics.jsonl").read_text().splitlines()]
  assert lines[-1]["loss"] < lines[0]["loss"]
  tuned = load(str(out))
  base = load(BASE)
  _assert_parts(base, tuned, {"codebook"})
  card = (out / "README.md").read_text()
  assert f'"base": "{BASE}"' in card and base.source["sha256"] in card
  assert '"dataset": "fashion_mnist"' in card and '"steps": 60' in card
  assert "| base model | fine-tuned |" in card
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["lineage"]["finetune"]["freeze"] == ["codebook"]
  assert saved["after"]["mse"] == pytest.approx(result.metrics_after["mse"])


def test_finetune_on_image_folder_skips_broken_files(tmp_path, mnist_test, capsys):
  folder = tmp_path / "digits"
  (folder / "nested").mkdir(parents=True)
  for i, image in enumerate(mnist_test[:300]):
    target = folder / ("nested" if i % 2 else "") / f"digit_{i:03d}.png"
    Image.fromarray(image[..., 0]).save(target)
  # One RGB JPEG at another size: converted to grayscale and resized, as asked.
  Image.fromarray(np.repeat(mnist_test[300], 3, -1)).resize((56, 56)).save(folder / "big.jpg")
  (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
  (folder / "notes.txt").write_text("not an image")
  before = _folder_digest(folder)
  out = tmp_path / "ft"
  with pytest.warns(UserWarning, match=r"skipped 2 .*broken\.png.*notes\.txt"):
    config = FinetuneConfig(
        recipe=TrainConfig(steps=40, batch_size=32, learning_rate=1e-3, warmup_steps=5),
        holdout_fraction=0.2, freeze=("encoder", "codebook"))
    result = ft.finetune(BASE, out, config, images_dir=str(folder),
                         run=RunConfig(progress=False, log_every=10), convert="grey",
                         resize=True)
  assert result.lineage["data"]["conversion"] == {"convert": "grey", "resize": True}
  assert _folder_digest(folder) == before  # the folder is never modified
  assert result.lineage["data"]["images"] == 301 and result.lineage["data"]["held_out"] == 60
  tuned = load(str(out))
  _assert_parts(load(BASE), tuned, {"encoder", "codebook"})
  lines = [json.loads(l) for l in (tmp_path / "ft.work" / "metrics.jsonl").read_text().splitlines()]
  assert lines[-1]["mse"] < lines[0]["mse"]


def test_folder_errors(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="no readable PNG/JPEG"):
    load_image_folder(empty, (28, 28, 1))
  junk = tmp_path / "junk"
  junk.mkdir()
  (junk / "a.png").write_bytes(b"garbage")
  with pytest.warns(UserWarning, match="a.png"), pytest.raises(ValueError, match="no readable"):
    load_image_folder(junk, (28, 28, 1))
  with pytest.raises(FileNotFoundError):
    load_image_folder(tmp_path / "missing", (28, 28, 1))


def test_reseed_before_moves_only_unused_codes(mnist_test):
  base = load(BASE)
  images = mnist_test[:200]  # 200 images use at most 200 of 512 codes
  params, state, n = ft.reseed_unused_codes(base, images, seed=0)
  used = np.unique(base.encode(images))
  old = base.codebook
  new = load(BASE)
  new.params, new.state = params, state
  new = new.codebook
  assert n == 512 - len(used)
  np.testing.assert_array_equal(new[used], old[used])
  moved = np.setdiff1d(np.arange(512), used)
  assert not np.any(np.all(new[moved] == old[moved], axis=1))


def test_cli_finetune_help_states_the_folder_rule(capsys):
  from vqzoo.cli import main
  with pytest.raises(SystemExit):
    main(["finetune", "--help"])
  text = capsys.readouterr().out
  assert "must match the model's image shape" in text
  assert "--convert {grey,rgb}" in text and "--resize" in text


def _digit_folder(tmp_path, mnist_test, n=40):
  folder = tmp_path / "pngs"
  folder.mkdir()
  for i, image in enumerate(mnist_test[:n]):
    Image.fromarray(image[..., 0]).save(folder / f"{i}.png")
  return folder


def test_reseeding_is_reported_as_run_and_can_be_turned_off(tmp_path, mnist_test):
  folder = _digit_folder(tmp_path, mnist_test)
  base = load(BASE)
  moved = {}
  for threshold in (None, 2.0, 0.0):
    out = tmp_path / f"ft-{threshold}"
    config = FinetuneConfig(
        recipe=TrainConfig(steps=5, batch_size=16, learning_rate=1e-4, warmup_steps=1),
        freeze=("encoder", "decoder"), reseed_threshold=threshold)
    result = ft.finetune(BASE, out, config, images_dir=str(folder), run=QUIET)
    card = (out / "README.md").read_text()
    used = result.lineage["reseed_threshold_used"]
    if threshold is None:  # the base model's own threshold (0.05 for mnist-mlp)
      assert used == base.config.quantizer.dead_code_threshold == 0.05
      assert "re-seeding while fine-tuning: codes used by fewer than 0.05" in card
    elif threshold:
      assert used == 2.0 and "codes used by fewer than 2.0 vectors per batch" in card
    else:
      assert used == 0.0 and "re-seeding while fine-tuning: off" in card
    moved[threshold] = int(np.sum(np.any(load(str(out)).codebook != base.codebook, axis=1)))
  # 32 training images use few of the 512 codes: with a threshold above every code's usage,
  # the unused codes move onto encoder outputs; with re-seeding off only the used ones move.
  assert moved[0.0] < 40 and moved[2.0] > 400, moved


def test_image_folder_cards_and_lineage_are_true(tmp_path, mnist_test):
  from huggingface_hub import ModelCard
  folder = _digit_folder(tmp_path, mnist_test)
  local_base = tmp_path / "base-model"
  load(BASE).save_pretrained(local_base)
  out = tmp_path / "ft"
  config = FinetuneConfig(recipe=TrainConfig(steps=3, batch_size=16, warmup_steps=1),
                          holdout_fraction=0.25)
  result = ft.finetune(str(local_base), out, config, images_dir=str(folder), run=QUIET)
  card = (out / "README.md").read_text()
  parsed = ModelCard(card)
  dataset = parsed.data.eval_results[0]
  assert dataset.dataset_type == "image-folder" and dataset.dataset_split == "held-out"
  assert "10 held-out images" in dataset.dataset_name
  assert "full test split" not in card and "the 10 images of the folder held out" in card
  assert "Image conversion" not in card  # the files matched the model: nothing converted
  assert result.lineage["data"]["conversion"] == {"convert": None, "resize": False}
  assert str(tmp_path) not in card and str(tmp_path) not in (out / "metrics.json").read_text()
  assert result.lineage["base_source"]["directory"] == "base-model"
  assert result.lineage["vqzoo_version"]
  zoo = ft.finetune(BASE, tmp_path / "ft2", config, images_dir=str(folder), run=QUIET)
  assert zoo.lineage["base_source"]["zoo"] == BASE
  assert zoo.lineage["base_source"]["sha256"] == load(BASE).source["sha256"]
