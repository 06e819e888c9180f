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


@pytest.mark.heavy
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


def test_vqzoo_train_from_flags_then_resume_rule(tmp_path, capsys):
  from vqzoo.cli import main
  folder = _folder(tmp_path)
  common = ["train", "--images", str(folder), "--out", str(tmp_path / "m"), "--arch", "conv",
            "--image-shape", "28x28x1", "--num-embeddings", "32", "--embedding-dim", "8",
            "--hidden", "16", "--ema", "--steps", "3", "--batch-size", "8", "--warmup-steps", "1",
            "--no-progress"]
  assert main(common + ["--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  model = vqzoo.load(str(tmp_path / "m"))
  assert model.config.quantizer.num_embeddings == 32 and model.config.quantizer.ema
  assert out["config"] == model.config.to_dict() and out["mse"] > 0
  assert main(common) == 2  # the workdir holds a checkpoint: --resume or --overwrite
  assert "--overwrite" in capsys.readouterr().err
  assert main(common + ["--overwrite", "--steps", "4"]) == 0
  assert "trained" in capsys.readouterr().out
  assert main(["train", "--images", str(folder), "--out", str(tmp_path / "x"),
               "--image-shape", "28x28"]) == 2
  assert "--image-shape: expected HxWxC" in capsys.readouterr().err


def test_vqzoo_train_from_a_config_file(tmp_path, capsys):
  from vqzoo.cli import main
  folder = _folder(tmp_path)
  path = tmp_path / "model.json"
  path.write_text(json.dumps(SMALL.to_dict()))
  assert main(["train", "--images", str(folder), "--out", str(tmp_path / "m"), "--config",
               str(path), "--steps", "2", "--batch-size", "8", "--warmup-steps", "1",
               "--no-progress"]) == 0
  assert vqzoo.load(str(tmp_path / "m")).config == SMALL


def test_every_subcommand_is_in_the_table_and_the_docstring(capsys):
  import vqzoo.cli as cli
  names = [c.name for c in cli.COMMANDS]
  usage = cli.build_parser().format_usage()
  assert "{" + ",".join(names) + "}" in usage
  for name in names:
    assert name in cli.__doc__
    with pytest.raises(SystemExit) as e:
      cli.main([name, "--help"])
    assert e.value.code == 0 and "--json" in capsys.readouterr().out
