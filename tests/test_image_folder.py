"""Image folders, ``reconstruct --input`` and the dataset cache against hostile or odd files."""

import io
import json
import os
import re
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from vqzoo.cli import _read_input, main
from vqzoo.training import data
from vqzoo.image_folder import MAX_IMAGE_PIXELS, load_image_folder, open_image

MNIST = (28, 28, 1)


def _bomb_png(width: int, height: int) -> bytes:
  """A 1x1 PNG whose IHDR (CRC fixed up) claims ``width`` x ``height``: a header-only bomb."""
  buffer = io.BytesIO()
  Image.new("L", (1, 1)).save(buffer, "PNG")
  png = bytearray(buffer.getvalue())
  assert png[12:16] == b"IHDR"
  png[16:24] = struct.pack(">II", width, height)
  png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
  return bytes(png)


def _save_digits(folder, digits, prefix="digit"):
  folder.mkdir(parents=True, exist_ok=True)
  for i, digit in enumerate(digits):
    Image.fromarray(digit[..., 0]).save(folder / f"{prefix}_{i}.png")


def _load_warning(folder, image_shape=MNIST):
  """``load_image_folder`` -> (images, paths, the text of its one warning)."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    images, paths = load_image_folder(folder, image_shape)
  assert len(caught) == 1, [str(w.message) for w in caught]
  assert caught[0].category is UserWarning
  return images, paths, str(caught[0].message)


def _decoded_sizes(monkeypatch):
  """Records the size of every image whose pixel data PIL decodes."""
  sizes, load = [], ImageFile.ImageFile.load

  def spy(self):
    sizes.append(self.size)
    return load(self)
  monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
  return sizes


def test_bombs_and_oversized_images_are_skipped_unread(tmp_path, mnist_test, monkeypatch):
  folder = tmp_path / "digits"
  _save_digits(folder, mnist_test[:3])
  (folder / "bomb_error.png").write_bytes(_bomb_png(100_000, 100_000))  # PIL raises
  (folder / "bomb_warning.png").write_bytes(_bomb_png(10_000, 10_000))  # PIL only warns
  (folder / "bomb_header.png").write_bytes(_bomb_png(5_000, 5_000))  # under PIL's limits
  Image.new("L", (4100, 4100)).save(folder / "valid_but_huge.png")  # decodable, over our limit
  assert 4100 * 4100 > MAX_IMAGE_PIXELS == 4096 * 4096
  sizes = _decoded_sizes(monkeypatch)
  images, paths, message = _load_warning(folder)
  assert images.shape == (3, 28, 28, 1) and np.array_equal(images, mnist_test[:3])
  assert message.startswith("skipped 4 ")
  for name in ("bomb_error", "bomb_warning", "bomb_header", "valid_but_huge"):
    assert f"{name}.png (image too large to decode" in message
  assert set(sizes) == {(28, 28)}  # only the digits were decoded
  # A smaller limit applies to one file too, also before decoding.
  with pytest.raises(ValueError, match="28x28 = 784 pixels; limit 100 pixels"):
    open_image(folder / "digit_0.png", "L", max_pixels=100)


def test_reconstruct_input_refuses_bombs_with_a_clear_error(tmp_path, capsys):
  for width, pattern in ((100_000, "possible decompression bomb"),
                         (5_000, r"5000x5000 = 25,000,000 pixels; limit 16,777,216")):
    bomb = tmp_path / f"bomb_{width}.png"
    bomb.write_bytes(_bomb_png(width, width))
    out = tmp_path / "grid.png"
    assert main(["reconstruct", "mnist-mlp", "--input", str(bomb), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "vqzoo reconstruct: error:" in err and "Traceback" not in err
    assert "image too large to decode" in err and re.search(pattern, err)
    assert not out.exists()


def test_sixteen_bit_pngs_are_scaled_not_saturated(tmp_path, mnist_test):
  digits = mnist_test[:4]
  folder = tmp_path / "deep"
  folder.mkdir()
  for i, digit in enumerate(digits):
    Image.fromarray(digit[..., 0].astype(np.uint16) * 257).save(folder / f"d{i}.png")
    with Image.open(folder / f"d{i}.png") as im:
      assert im.mode == "I;16"
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    gray, _ = load_image_folder(folder, MNIST)
    rgb, _ = load_image_folder(folder, (28, 28, 3), convert="rgb")
  assert np.abs(gray.astype(int) - digits).max() <= 1
  assert np.abs(rgb.astype(int) - np.repeat(digits, 3, -1)).max() <= 1
  # reconstruct --input reads it through the same helper.
  read = _read_input(str(folder / "d0.png"), MNIST)
  assert read.shape == (1, 28, 28, 1) and np.abs(read.astype(int) - digits[:1]).max() <= 1


def test_reconstruct_input_converts_color_images_and_keeps_npy(tmp_path, mnist_test, capsys):
  digit = mnist_test[7]
  rgb, rgba = tmp_path / "rgb.png", tmp_path / "rgba.png"
  Image.fromarray(np.repeat(digit, 3, -1)).save(rgb)
  Image.fromarray(np.concatenate([np.repeat(digit, 3, -1), np.full_like(digit, 128)], -1)
                  ).save(rgba)
  for path in (rgb, rgba):
    read = _read_input(str(path), MNIST, convert="grey")
    assert read.shape == (1, 28, 28, 1) and np.abs(read.astype(int) - digit).max() <= 1
  assert _read_input(str(tmp_path / "rgb.png"), (28, 28, 3)).shape == (1, 28, 28, 3)
  out = tmp_path / "grid.png"
  assert main(["reconstruct", "mnist-mlp", "--input", str(rgb), "--out", str(out), "--json",
               "--convert", "grey"]) == 0
  assert json.loads(capsys.readouterr().out)["images"] == 1 and out.exists()
  batch = tmp_path / "digits.npy"
  np.save(batch, mnist_test[:5])
  assert main(["reconstruct", "mnist-mlp", "--input", str(batch), "--out", str(out),
               "--json"]) == 0
  assert json.loads(capsys.readouterr().out)["images"] == 5
  (tmp_path / "empty.npy").write_bytes(b"")
  assert main(["reconstruct", "mnist-mlp", "--input", str(tmp_path / "empty.npy"),
               "--out", str(out)]) == 2
  assert "not a complete .npy file" in capsys.readouterr().err


def test_special_entries_and_outside_symlinks_are_reported(tmp_path, mnist_test):
  folder = tmp_path / "digits"
  _save_digits(folder, mnist_test[:2])
  _save_digits(tmp_path / "outside", mnist_test[2:3], prefix="secret")
  (folder / "sub").mkdir()
  os.symlink(folder / "digit_1.png", folder / "sub" / "inside_link.png")  # fine: inside
  os.symlink(tmp_path / "outside" / "secret_0.png", folder / "outside_link.png")
  os.symlink(folder / "gone.png", folder / "dangling.png")
  os.symlink("/dev/null", folder / "device_link.png")  # a device, and outside the folder
  os.symlink(folder / "sub", folder / "dir_link")
  os.symlink(tmp_path / "outside", folder / "outside_dir_link")
  os.mkfifo(folder / "pipe.png")
  (folder / "folder.png").mkdir()
  _, paths, message = _load_warning(folder)
  assert sorted(os.path.basename(p) for p in paths) == ["digit_0.png", "digit_1.png",
                                                        "inside_link.png"]
  assert message.startswith("skipped 7 ")
  for fragment in ("dangling.png (dangling symlink)", "pipe.png (a FIFO, not a regular file)",
                   "folder.png (a directory, not an image file)",
                   "dir_link (symlink to a directory, not followed)",
                   "outside_link.png (symlink to", "device_link.png (symlink to /dev/null, "
                   "outside the folder)", "outside_dir_link (symlink to"):
    assert fragment in message, fragment
  assert message.count("outside the folder") == 3
  # Opened directly, a FIFO or a device is refused without blocking or reading.
  with pytest.raises(ValueError, match="a FIFO, not a regular file"):
    open_image(folder / "pipe.png", "L")
  with pytest.raises(ValueError, match="a character device, not a regular file"):
    open_image("/dev/null", "L")


def test_unreadable_subfolder_is_reported(tmp_path, mnist_test, monkeypatch):
  folder = tmp_path / "digits"
  _save_digits(folder, mnist_test[:1])
  locked = folder / "locked"
  _save_digits(locked, mnist_test[1:2])
  scandir = os.scandir

  def refuse_locked(path="."):  # a directory without read permission, even for root
    if os.fspath(path) == str(locked):
      raise PermissionError(13, "Permission denied", str(locked))
    return scandir(path)
  monkeypatch.setattr(os, "scandir", refuse_locked)
  images, _, message = _load_warning(folder)
  assert len(images) == 1 and message.startswith("skipped 1 ")
  assert "locked (unreadable directory: Permission denied)" in message


def _cache_files(cache):
  return sorted(p for p in (cache / "datasets").iterdir() if p.suffix == ".npy")


def test_corrupt_or_wrong_dataset_cache_is_rebuilt(tmp_path, monkeypatch, tfds_dir, mnist_test):
  monkeypatch.setenv("VQZOO_CACHE", str(tmp_path))
  expected = mnist_test[:200]
  assert np.array_equal(data.load_images("mnist", "test[:200]", tfds_dir), expected)
  [path] = _cache_files(tmp_path)
  written = path.stat().st_mtime_ns
  assert np.array_equal(data.load_images("mnist", "test[:200]", tfds_dir), expected)
  assert path.stat().st_mtime_ns == written  # a valid cache is read, not rewritten
  full = path.read_bytes()
  for corrupt in (full[:len(full) // 2], b"not a .npy file", b""):
    path.write_bytes(corrupt)
    assert np.array_equal(data.load_images("mnist", "test[:200]", tfds_dir), expected)
    assert path.read_bytes() == full  # rebuilt
  np.save(path, 255 - expected)  # a valid .npy of the right shape, wrong content
  assert np.array_equal(data.load_images("mnist", "test[:200]", tfds_dir), expected)
  assert path.read_bytes() == full
  path.with_name(path.name + ".json").unlink()  # no record: not trusted
  np.save(path, 255 - expected)
  assert np.array_equal(data.load_images("mnist", "test[:200]", tfds_dir), expected)
  assert _cache_files(tmp_path) == [path]


def test_dataset_cache_follows_its_source_files(tmp_path, monkeypatch, tfds_dir, mnist_test):
  copy = tmp_path / "tfds" / "mnist"
  version = next(p for p in (Path(tfds_dir) / "mnist").iterdir() if p.is_dir())
  (copy / version.name).mkdir(parents=True)
  for source in version.iterdir():
    if "train" not in source.name:
      shutil.copy(source, copy / version.name / source.name)
  monkeypatch.setenv("VQZOO_CACHE", str(tmp_path / "cache"))
  data_dir = str(tmp_path / "tfds")
  assert np.array_equal(data.load_images("mnist", "test[:200]", data_dir), mnist_test[:200])
  [first] = _cache_files(tmp_path / "cache")
  record = json.loads(first.with_name(first.name + ".json").read_text())
  assert record["source_digest"] == data._source_digest(data._data_source(
      "mnist", "test[:200]", data_dir))
  records = next((copy / version.name).glob("mnist-test.array_record*"))
  os.utime(records, ns=(records.stat().st_atime_ns, records.stat().st_mtime_ns + 10**9))
  assert np.array_equal(data.load_images("mnist", "test[:200]", data_dir), mnist_test[:200])
  assert len(_cache_files(tmp_path / "cache")) == 2  # re-prepared sources: a new cache


def test_unwritable_dataset_cache_only_warns(tmp_path, monkeypatch, tfds_dir, mnist_test):
  blocker = tmp_path / "not_a_dir"
  blocker.write_text("a file where the cache folder should be")
  monkeypatch.setenv("VQZOO_CACHE", str(blocker))
  with pytest.warns(UserWarning, match="could not write the dataset cache"):
    images = data.load_images("mnist", "test[:200]", tfds_dir)
  assert np.array_equal(images, mnist_test[:200])
