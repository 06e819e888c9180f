"""The scripts are thin: they parse flags and call tested package code."""

import json
import runpy
import sys

import pytest

SCRIPTS = ["scripts/train.py", "scripts/evaluate.py", "scripts/finetune.py",
           "scripts/push_to_hub.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", [script, "--help"])
  with pytest.raises(SystemExit) as e:
    runpy.run_path(script, run_name="__main__")
  assert e.value.code == 0
  assert "usage" in capsys.readouterr().out


def test_evaluate_script_measures_a_zoo_variant(tfds_dir, capsys):
  evaluate = runpy.run_path("scripts/evaluate.py")["main"]
  assert evaluate(["mnist-mlp", "--data-dir", tfds_dir]) == 0
  out = capsys.readouterr().out
  measured = json.loads(out)
  from vqzoo.pretrained import registry
  assert measured["mse"] == pytest.approx(registry.get_entry("mnist-mlp").metrics["mse"], rel=1e-4)


def test_train_script_reproduces_a_variant_briefly(tmp_path, tfds_dir, capsys):
  """A short run of the registry recipe: the script trains, measures and saves a loadable model."""
  train = runpy.run_path("scripts/train.py")["main"]
  rc = train(["--variant", "mnist-mlp", "--steps", "200", "--workdir", str(tmp_path / "w"),
              "--out", str(tmp_path / "model"), "--data-dir", tfds_dir, "--no-progress"])
  metrics = json.loads(capsys.readouterr().out)
  assert rc == 1  # 200 steps are far from the bar, and the script says so
  assert metrics["num_images"] == 10000 and metrics["mse"] < 0.06
  import vqzoo
  assert vqzoo.load(str(tmp_path / "model")).config == vqzoo.get_config("mnist-mlp")


@pytest.mark.slow
def test_train_script_reproduces_mnist_mlp_within_its_bar(tmp_path, tfds_dir, capsys):
  """The full registry recipe (20,000 steps; 3-4 minutes on 2 cores) meets the bar again."""
  train = runpy.run_path("scripts/train.py")["main"]
  rc = train(["--variant", "mnist-mlp", "--workdir", str(tmp_path / "w"), "--data-dir", tfds_dir,
              "--no-progress"])
  metrics = json.loads(capsys.readouterr().out)
  assert rc == 0, metrics
  assert metrics["mse"] <= 0.0305 and metrics["codes_used"] >= 450
