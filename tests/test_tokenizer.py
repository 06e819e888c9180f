"""The tokenizer workflow: images -> codes on disk -> images, tied to the model that made them."""

import json

import numpy as np
import pytest
from PIL import Image

import vqzoo
from vqzoo.cli import main
from vqzoo.training.data import load_images, load_labels
from vqzoo.pretrained.tokenizing import read_codes

MODEL = "fashion-mnist-conv-ema"


def test_encode_a_dataset_then_decode_it(tmp_path, tfds_dir, capsys):
  codes_file = tmp_path / "codes.npz"
  assert main(["encode", MODEL, "--dataset", "fashion_mnist:test[:300]", "--out",
               str(codes_file), "--data-dir", tfds_dir, "--no-progress", "--json"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["images"] == 300 and summary["codes_shape"] == [300, 7, 7]
  content = read_codes(codes_file)
  images = load_images("fashion_mnist", "test[:300]", tfds_dir)
  model = vqzoo.load(MODEL)
  np.testing.assert_array_equal(content["codes"], model.encode(images))
  np.testing.assert_array_equal(content["labels"], load_labels("fashion_mnist", "test[:300]",
                                                               tfds_dir))
  assert content["model"] == MODEL and content["codec_sha256"] == model.source["codec_sha256"]

  folder = tmp_path / "decoded"
  assert main(["decode", MODEL, str(codes_file), "--out", str(folder), "--no-progress"]) == 0
  pngs = sorted(folder.glob("*.png"))
  assert len(pngs) == 300
  first = np.asarray(Image.open(pngs[0]), np.float32) / 255
  np.testing.assert_allclose(first, model.reconstruct(images[:1])[0, ..., 0], atol=1 / 255 + 1e-6)
  grid = tmp_path / "grid.png"
  assert main(["decode", MODEL, str(codes_file), "--out", str(grid), "--no-progress"]) == 0
  assert grid.stat().st_size > 0
  capsys.readouterr()
  # Codes of one model do not decode with another.
  assert main(["decode", "mnist-conv-ema", str(codes_file), "--out", str(grid)]) == 2
  assert "made by fashion-mnist-conv-ema" in capsys.readouterr().err


def test_encode_a_folder_keeps_file_names(tmp_path, mnist_test):
  folder = tmp_path / "imgs"
  folder.mkdir()
  for i in range(5):
    Image.fromarray(mnist_test[i, ..., 0]).save(folder / f"digit{i}.png")
  out = tmp_path / "c.npz"
  assert main(["encode", "mnist-mlp", "--images", str(folder), "--out", str(out),
               "--no-progress"]) == 0
  content = read_codes(out)
  assert list(content["names"]) == [f"digit{i}.png" for i in range(5)] and "labels" not in content
  np.testing.assert_array_equal(content["codes"], vqzoo.load("mnist-mlp").encode(mnist_test[:5]))
  assert main(["decode", "mnist-mlp", str(out), "--out", str(tmp_path / "back")]) == 0
  assert sorted(p.name for p in (tmp_path / "back").iterdir()) == [f"digit{i}.png" for i in range(5)]


def test_not_a_codes_file_is_a_clear_error(tmp_path, capsys):
  bad = tmp_path / "x.npz"
  np.savez(bad, something=np.zeros(3))
  assert main(["decode", "mnist-mlp", str(bad), "--out", str(tmp_path / "o")]) == 2
  assert "not a vqzoo codes file" in capsys.readouterr().err
