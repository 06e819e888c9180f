"""Colour (32x32x3) models through the library and the CLI: grids, files, errors, fine-tuning.

A tiny fresh conv model stands in for a trained CIFAR-10 model: these tests are about shapes,
channels and messages, not about reconstruction quality.
"""

import numpy as np
import pytest
from PIL import Image

import vqzoo
from vqzoo import cli
from vqzoo.grid import make_grid
from _util import one_line_error as _one_line_error

TINY = dict(num_embeddings=16, embedding_dim=8, num_hiddens=16, num_residual_hiddens=8)


@pytest.fixture(scope="module")
def colour_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("colour") / "model"
  vqzoo.create_model("mnist-conv-ema", image_shape=(32, 32, 3), **TINY).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def grey_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("grey") / "model"
  vqzoo.create_model("mnist-conv-ema", **TINY).save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory):
  """12 random 32x32 RGB images, PNG and JPEG in turn."""
  path = tmp_path_factory.mktemp("rgb")
  rng = np.random.default_rng(0)
  for i in range(12):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
        path / f"im{i:02d}.{'png' if i % 2 else 'jpg'}")
  return path


def _rgb(n=4, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), np.uint8)



def test_make_grid_keeps_colour_in_place():
  a = np.zeros((2, 4, 4, 3), np.float32)
  a[0, ..., 0] = 1.0  # red
  a[1, ..., 2] = 1.0  # blue
  grid = make_grid([a, a[::-1]], pad=1, scale=1)
  assert grid.shape == (2 * 5 + 1, 2 * 5 + 1, 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[1, 1], [255, 0, 0])   # top row, first: red
  np.testing.assert_array_equal(grid[1, 6], [0, 0, 255])   # top row, second: blue
  np.testing.assert_array_equal(grid[6, 1], [0, 0, 255])   # second row reversed
  np.testing.assert_array_equal(grid[0, 0], [255, 255, 255])  # white padding


def test_library_channel_mismatch_errors_name_the_conversion(colour_dir, grey_dir):
  colour, grey = vqzoo.load(str(colour_dir)), vqzoo.load(str(grey_dir))
  x = _rgb()
  assert colour.reconstruct(x).shape == (4, 32, 32, 3)
  assert colour.encode(x).shape == (4, 8, 8)
  with pytest.raises(ValueError, match=r"expected 3 channel.*np\.repeat"):
    colour.encode(x[..., :1])
  with pytest.raises(ValueError, match=r"grey images\? this model reads colour"):
    colour.reconstruct(x[..., 0])
  with pytest.raises(ValueError, match=r"expected 1 channel.*convert\('L'\)"):
    grey.encode(np.zeros((2, 28, 28, 3), np.uint8))
  with pytest.raises(ValueError, match="expected 32x32 pixels"):
    colour.encode(np.zeros((2, 28, 28, 3), np.uint8))
  # The documented conversion works: a grey image repeated to 3 channels.
  grey_x = x[..., :1]
  assert colour.encode(np.repeat(grey_x, 3, axis=-1)).shape == (4, 8, 8)


def test_cli_reconstruct_writes_a_colour_grid(colour_dir, tmp_path, capsys):
  image = _rgb(1, seed=3)[0]
  png = tmp_path / "in.png"
  Image.fromarray(image).save(png)
  out = tmp_path / "grid.png"
  assert cli.main(["reconstruct", str(colour_dir), "--input", str(png), "--out", str(out)]) == 0
  grid = np.asarray(Image.open(out))
  assert grid.ndim == 3 and grid.shape[2] == 3
  # make_grid's layout: pad 2, scale 2; the original sits at (2, 2) in the unscaled grid.
  np.testing.assert_array_equal(grid[4:68:2, 4:68:2], image)
  # A grey file given to a colour model is refused, or converted to RGB with --convert rgb.
  Image.fromarray(image[..., 0]).save(tmp_path / "grey.png")
  capsys.readouterr()
  assert cli.main(["reconstruct", str(colour_dir), "--input", str(tmp_path / "grey.png"),
                   "--out", str(out)]) == 2
  _one_line_error(capsys, "grey.png: a 32x32 L (grey) image", "32x32 colour (3-channel)",
                  "pass --convert rgb")
  assert cli.main(["reconstruct", str(colour_dir), "--input", str(tmp_path / "grey.png"),
                   "--out", str(out), "--convert", "rgb"]) == 0
  grid = np.asarray(Image.open(out))
  np.testing.assert_array_equal(grid[4:68:2, 4:68:2], np.repeat(image[..., :1], 3, -1))
  capsys.readouterr()
  # No input and no dataset: not the bundled 28x28 digits, but a one-line error.
  assert cli.main(["reconstruct", str(colour_dir), "--out", str(out)]) == 2
  _one_line_error(capsys, "reads 32x32x3 images", "--input or --dataset")


def test_cli_reconstruct_defaults_to_the_models_dataset(colour_dir, tmp_path, monkeypatch,
                                                        tfds_dir, capsys):
  monkeypatch.setattr(cli, "_model_dataset", lambda model, spec: "cifar10")
  out = tmp_path / "grid.png"
  assert cli.main(["reconstruct", str(colour_dir), "--count", "3", "--out", str(out),
                   "--data-dir", tfds_dir]) == 0
  from vqzoo.training.data import load_images
  first = load_images("cifar10", "test[:3]", tfds_dir)
  grid = np.asarray(Image.open(out))
  for j in range(3):
    x0 = 4 + j * 68
    np.testing.assert_array_equal(grid[4:68:2, x0:x0 + 64:2], first[j])


def test_cli_eval_on_the_wrong_channels_is_one_line(grey_dir, capsys, tfds_dir):
  assert cli.main(["eval", str(grey_dir), "--dataset", "cifar10", "--split", "test[:8]",
                   "--data-dir", tfds_dir]) == 2
  _one_line_error(capsys, "vqzoo eval", "expected 28x28 pixels")


def test_cli_encode_decode_a_folder_of_rgb_files(colour_dir, rgb_folder, tmp_path, capsys):
  codes = tmp_path / "codes.npz"
  assert cli.main(["encode", str(colour_dir), "--images", str(rgb_folder), "--out", str(codes),
                   "--no-progress"]) == 0
  out = tmp_path / "decoded"
  assert cli.main(["decode", str(colour_dir), str(codes), "--out", str(out),
                   "--no-progress"]) == 0
  files = sorted(out.glob("*.png"))
  assert len(files) == 12
  model = vqzoo.load(str(colour_dir))
  with np.load(codes) as z:
    expected = np.clip(model.decode(z["codes"]) * 255 + 0.5, 0, 255).astype(np.uint8)
  first = np.asarray(Image.open(out / "im00.png"))
  assert first.shape == (32, 32, 3)
  np.testing.assert_array_equal(first, expected[0])
  grid = tmp_path / "grid.png"
  assert cli.main(["decode", str(colour_dir), str(codes), "--out", str(grid),
                   "--no-progress"]) == 0
  assert Image.open(grid).mode == "RGB"


def test_cli_finetune_and_sample_a_colour_model(colour_dir, rgb_folder, tmp_path, capsys):
  tuned = tmp_path / "tuned"
  assert cli.main(["finetune", "--from", str(colour_dir), "--out", str(tuned), "--images",
                   str(rgb_folder), "--steps", "2", "--batch-size", "8", "--warmup-steps", "1",
                   "--no-progress"]) == 0
  model = vqzoo.load(str(tuned))
  assert tuple(model.config.image_shape) == (32, 32, 3)
  assert model.reconstruct(_rgb(2)).shape == (2, 32, 32, 3)
  with_prior = tmp_path / "prior"
  assert cli.main(["fit-prior", str(tuned), "--out", str(with_prior), "--images",
                   str(rgb_folder), "--steps", "2", "--batch-size", "8", "--hidden", "8",
                   "--layers", "1", "--no-progress"]) == 0
  samples = tmp_path / "samples.png"
  assert cli.main(["sample", str(with_prior), "--n", "5", "--per-row", "5", "--out",
                   str(samples), "--no-progress"]) == 0
  image = Image.open(samples)
  assert image.mode == "RGB" and image.size == ((5 * 34 + 2) * 2, (34 + 2) * 2)


def test_a_colour_models_card_says_what_images_it_reads(colour_dir, grey_dir):
  from vqzoo.pretrained.cards import render_card
  colour, grey = (render_card("m", vqzoo.load(d).config) for d in (colour_dir, grey_dir))
  assert "Trained on small 32x32 colour images" in colour and "grayscale" not in colour
  assert "Trained on small 28x28 grayscale images" in grey
