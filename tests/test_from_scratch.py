"""Training a new model from scratch (``vqzoo train``): a loadable folder with a true card."""

import json

import pytest
from PIL import Image

import vqzoo
from _util import synthetic_images
from vqzoo.configs import ConvConfig, ModelConfig, QuantizerConfig, RunConfig, TrainConfig
from vqzoo.training.from_scratch import read_model_config, train_new_model

SMALL = ModelConfig(arch="conv", conv=ConvConfig(16, 1, 8),
                    quantizer=QuantizerConfig(32, 8, ema=True, dead_code_threshold=0.5))


def _folder(tmp_path, n=40):
  folder = tmp_path / "pngs"
  folder.mkdir()
  for i, image in enumerate(synthetic_images(n)):
    Image.fromarray(image[..., 0]).save(folder / f"{i:02d}.png")
  return folder


def test_a_new_model_trained_on_a_folder_loads_and_its_card_is_true(tmp_path):
  folder = _folder(tmp_path)
  recipe = TrainConfig(dataset="image-folder", steps=4, batch_size=8, warmup_steps=1)
  result = train_new_model(SMALL, recipe, tmp_path / "new", images_dir=str(folder),
                           holdout_fraction=0.25, run=RunConfig(progress=False))
  model = vqzoo.load(str(tmp_path / "new"))
  assert model.config == SMALL
  card = (tmp_path / "new" / "README.md").read_text()
  assert "the 10 images of the folder held out" in card and "vqzoo train" in card
  recorded = json.loads((tmp_path / "new" / "metrics.json").read_text())
  assert recorded["metrics"]["mse"] == pytest.approx(result.metrics["mse"])
  assert recorded["data"]["train"] == 30 and recorded["recipe"]["steps"] == 4
  # The one resume rule: a second run over the same workdir must say resume or overwrite.
  with pytest.raises(FileExistsError, match="--resume"):
    train_new_model(SMALL, recipe, tmp_path / "new", images_dir=str(folder),
                    run=RunConfig(progress=False))


def test_a_model_config_file_is_read_strictly(tmp_path):
  path = tmp_path / "model.json"
  path.write_text(json.dumps(SMALL.to_dict()))
  assert read_model_config(path) == SMALL
  path.write_text(json.dumps({**SMALL.to_dict(), "hidden": 3}))
  with pytest.raises(ValueError, match="unknown keys.*hidden"):
    read_model_config(path)
  path.write_text("{not json")
  with pytest.raises(ValueError, match="not a readable JSON model config"):
    read_model_config(path)
