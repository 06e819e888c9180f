"""One image rule for every command that reads image files: the model's shape decides.

A file of another size or channel kind is a one-line error naming it, unless ``--convert``
or ``--resize`` asks for the conversion, which then gives the pixels of the old silent
conversion and is recorded in codes files, cards and ``metrics.json``.
"""

import json

import numpy as np
import pytest
from PIL import Image

import vqzoo
from vqzoo.cli import main
from vqzoo.image_folder import (FOLDER_RULE, ImageMismatchError, load_image_folder, open_image,
                                read_image)
from vqzoo.pretrained.tokenizing import read_codes
from vqzoo.training.metrics import evaluate
from _util import one_line_error as _one_line_error

MNIST = (28, 28, 1)
BASE = "mnist-mlp"


@pytest.fixture
def rgb32(tmp_path):
  """10 random 32x32 RGB files, PNG and JPEG in turn: not what a 28x28 grey model reads."""
  folder = tmp_path / "rgb32"
  folder.mkdir()
  rng = np.random.default_rng(1)
  for i in range(10):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
        folder / f"im{i}.{'png' if i % 2 else 'jpg'}")
  return folder


@pytest.fixture
def digits(tmp_path, mnist_test):
  """8 real 28x28 grey MNIST digits as PNGs: exactly what mnist-mlp reads."""
  folder = tmp_path / "digits"
  folder.mkdir()
  for i, digit in enumerate(mnist_test[:8]):
    Image.fromarray(digit[..., 0]).save(folder / f"d{i}.png")
  return folder


def _silent(folder, mode="L", size=(28, 28)):
  """The pixels of the conversion every command used to make without a word."""
  return np.stack([open_image(p, mode, size=size) for p in sorted(folder.iterdir())])



def test_library_rule_refuses_mismatches_and_converts_on_request(rgb32, tmp_path):
  first = sorted(rgb32.iterdir())[0]
  with pytest.raises(ImageMismatchError, match=r"im0\.jpg: a 32x32 RGB \(colour\) image, but the "
                     r"model reads 28x28 grey \(1-channel\) images; pass --convert grey to "
                     r"convert its channels and --resize to resize it \(9 more files"):
    load_image_folder(rgb32, MNIST)
  with pytest.raises(ImageMismatchError, match="pass --resize to resize it$"):
    read_image(first, MNIST, convert="grey")
  with pytest.raises(ImageMismatchError, match="pass --convert grey to convert its channels$"):
    read_image(first, MNIST, resize=True)
  assert read_image(first, (32, 32, 3)).shape == (32, 32, 3)  # a match needs no flag
  with pytest.raises(ValueError, match="--convert rgb: the model reads 1-channel .* expected "
                                       "--convert grey"):
    load_image_folder(rgb32, MNIST, convert="rgb", resize=True)
  images, paths = load_image_folder(rgb32, MNIST, "grey", True)  # positional, as documented
  np.testing.assert_array_equal(images, _silent(rgb32))
  assert len(paths) == 10
  # Grey to colour: the grey value copied into three channels, as before.
  grey = tmp_path / "grey"
  grey.mkdir()
  Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32).astype(np.uint8)).save(
      grey / "g.png")
  with pytest.raises(ImageMismatchError, match="pass --convert rgb to convert its channels$"):
    load_image_folder(grey, (32, 32, 3))
  np.testing.assert_array_equal(load_image_folder(grey, (32, 32, 3), convert="rgb")[0],
                                _silent(grey, "RGB", (32, 32)))
  assert "--convert grey|rgb" in FOLDER_RULE and "--resize" in FOLDER_RULE


def test_encode_refuses_mismatches_and_records_the_conversion(rgb32, tmp_path, capsys):
  out = tmp_path / "codes.npz"
  assert main(["encode", BASE, "--images", str(rgb32), "--out", str(out), "--no-progress"]) == 2
  _one_line_error(capsys, "vqzoo encode: error:", "im0.jpg", "32x32 RGB (colour)",
                  "28x28 grey (1-channel)", "--convert grey", "--resize")
  assert not out.exists()
  # Size alone: only --resize is named.
  grey32 = tmp_path / "grey32"
  grey32.mkdir()
  Image.fromarray(np.full((32, 32), 7, np.uint8)).save(grey32 / "a.png")
  assert main(["encode", BASE, "--images", str(grey32), "--out", str(out)]) == 2
  err = _one_line_error(capsys, "a.png: a 32x32 L (grey) image", "pass --resize to resize it")
  assert "--convert" not in err
  assert main(["encode", BASE, "--images", str(rgb32), "--out", str(out), "--no-progress",
               "--convert", "grey", "--resize", "--json"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["conversion"] == {"convert": "grey", "resize": True}
  content = read_codes(out)
  assert content["conversion"] == {"convert": "grey", "resize": True}
  np.testing.assert_array_equal(content["codes"], vqzoo.load(BASE).encode(_silent(rgb32)))


def test_reconstruct_reads_a_folder_under_the_same_rule(rgb32, digits, mnist_test, tmp_path,
                                                        capsys):
  grid = tmp_path / "grid.png"
  assert main(["reconstruct", BASE, "--input", str(rgb32), "--out", str(grid)]) == 2
  _one_line_error(capsys, "vqzoo reconstruct: error:", "im0.jpg", "--convert grey", "--resize")
  assert main(["reconstruct", BASE, "--input", str(sorted(rgb32.iterdir())[1]),
               "--out", str(grid)]) == 2
  _one_line_error(capsys, "im1.png: a 32x32 RGB (colour) image")
  assert not grid.exists()
  assert main(["reconstruct", BASE, "--input", str(digits), "--out", str(grid), "--json"]) == 0
  s = json.loads(capsys.readouterr().out)
  model = vqzoo.load(BASE)
  x = model.preprocess(mnist_test[:8])
  assert s["images"] == 8
  assert s["mse"] == pytest.approx(float(np.mean((model.reconstruct(x) - x) ** 2)), rel=1e-5)
  assert main(["reconstruct", BASE, "--input", str(rgb32), "--out", str(grid), "--json",
               "--convert", "grey", "--resize"]) == 0
  assert json.loads(capsys.readouterr().out)["images"] == 10
  assert main(["reconstruct", BASE, "--input", str(digits), "--out", str(grid), "--json",
               "--count", "3"]) == 0  # a folder's first --count files
  assert json.loads(capsys.readouterr().out)["images"] == 3


def test_eval_measures_a_folder_under_the_same_rule(rgb32, digits, mnist_test, capsys):
  assert main(["eval", BASE, "--images", str(rgb32)]) == 2
  _one_line_error(capsys, "vqzoo eval: error:", "im0.jpg", "--convert grey", "--resize")
  assert main(["eval", BASE, "--images", str(digits), "--json"]) == 0
  got = json.loads(capsys.readouterr().out)
  model = vqzoo.load(BASE)
  want = evaluate(model.config, model.params, model.state, mnist_test[:8], progress=False)
  assert got["num_images"] == 8 and got["conversion"] == {"convert": None, "resize": False}
  assert got["mse"] == pytest.approx(want["mse"], rel=1e-5)
  assert got["codes_used"] == want["codes_used"]
  assert main(["eval", BASE, "--images", str(rgb32), "--convert", "grey", "--resize",
               "--json"]) == 0
  converted = json.loads(capsys.readouterr().out)
  assert converted["conversion"] == {"convert": "grey", "resize": True}
  want = evaluate(model.config, model.params, model.state, _silent(rgb32), progress=False)
  assert converted["mse"] == pytest.approx(want["mse"], rel=1e-5)


def test_finetune_refuses_mismatches_and_its_card_records_the_conversion(rgb32, tmp_path,
                                                                        capsys):
  out = tmp_path / "ft"
  common = ["finetune", "--from", BASE, "--images", str(rgb32), "--out", str(out), "--steps",
            "2", "--batch-size", "8", "--warmup-steps", "1", "--no-progress"]
  assert main(common) == 2
  _one_line_error(capsys, "vqzoo finetune: error:", "im0.jpg", "32x32 RGB (colour)",
                  "--convert grey", "--resize")
  assert not out.exists()
  assert main(common + ["--convert", "grey", "--resize"]) == 0
  record = {"convert": "grey", "resize": True}
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["lineage"]["data"]["conversion"] == record
  card = (out / "README.md").read_text()
  assert '"convert": "grey"' in card
  assert "## Image conversion" in card and "converted to grey (`--convert grey`)" in card
  assert "resized to 28x28" in card


def test_fit_prior_refuses_mismatches_and_its_card_records_the_conversion(rgb32, tmp_path,
                                                                         capsys):
  out = tmp_path / "prior"
  common = ["fit-prior", BASE, "--images", str(rgb32), "--out", str(out), "--steps", "2",
            "--batch-size", "8", "--no-progress"]
  assert main(common) == 2
  _one_line_error(capsys, "vqzoo fit-prior: error:", "im0.jpg", "--convert grey")
  assert main(common + ["--convert", "grey", "--resize"]) == 0
  card = (out / "README.md").read_text()
  assert '"conversion": {\n' in card and '"convert": "grey"' in card and '"resize": true' in card
  assert "## Image conversion" in card and "resized to 28x28" in card


def test_train_refuses_mismatches_and_records_the_conversion(rgb32, tmp_path, capsys):
  out = tmp_path / "new"
  common = ["train", "--images", str(rgb32), "--out", str(out), "--image-shape", "28x28x1",
            "--num-embeddings", "16", "--embedding-dim", "4", "--hidden", "8", "--ema",
            "--steps", "2", "--batch-size", "8", "--warmup-steps", "1",
            "--holdout-fraction", "0.2", "--no-progress"]
  assert main(common) == 2
  _one_line_error(capsys, "vqzoo train: error:", "im0.jpg", "--convert grey", "--resize")
  assert not out.exists()
  assert main(common + ["--convert", "grey", "--resize"]) == 0
  record = {"convert": "grey", "resize": True}
  assert json.loads((out / "metrics.json").read_text())["data"]["conversion"] == record
  card = (out / "README.md").read_text()
  assert '"convert": "grey"' in card
  assert "## Image conversion" in card and "converted to grey (`--convert grey`)" in card
  assert "resized to 28x28" in card


@pytest.mark.parametrize("argv", [
    ["encode", BASE, "--dataset", "mnist:test[:4]", "--out", "c.npz", "--convert", "grey"],
    ["eval", BASE, "--resize"],
    ["reconstruct", BASE, "--resize"],
    ["fit-prior", BASE, "--dataset", "mnist", "--out", "p", "--convert", "grey"],
])
def test_conversion_flags_without_image_files_are_refused(argv, tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  assert main(argv) == 2
  _one_line_error(capsys, "converts image files", "this command reads none")
  assert not any(tmp_path.iterdir())
