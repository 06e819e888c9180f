"""Bad input gets one line on stderr and exit status 2, saying what was wrong and what is expected.

One test per case of issue 20 (5-13): codes files that are truncated, mismatched, empty, an
image or hold a NUL byte; an out-of-range --seed, --n or --count; a read-only workdir; an
empty split; and a reader of the output that goes away.
"""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vqzoo
from vqzoo.cli import MAX_COUNT, MAX_SAMPLES, main
from vqzoo.pretrained.tokenizing import encode_to_file
from _util import REPO, one_line_error as _one_line_error

MODEL = "mnist-mlp"


def _status(argv) -> int:
  """``main``'s exit status, whether it returns it or argparse exits with it."""
  try:
    return main(argv)
  except SystemExit as e:
    return e.code



@pytest.fixture(scope="module")
def codes(tmp_path_factory) -> dict:
  """A good codes file of 10 bundled digits, and its arrays."""
  path = tmp_path_factory.mktemp("codes") / "codes.npz"
  digits = vqzoo.cli._bundled_digits()[:10]
  encode_to_file(vqzoo.load(MODEL), MODEL, digits, path, names=[f"{i}.png" for i in range(10)],
                 progress=False)
  with np.load(path) as data:
    return {"path": path, "arrays": {k: data[k] for k in data.files}}


def _decode(tmp_path, codes_path) -> int:
  return _status(["decode", MODEL, str(codes_path), "--out", str(tmp_path / "out"),
                  "--no-progress"])


def _variant(tmp_path, good, **changes) -> Path:
  path = tmp_path / "variant.npz"
  np.savez(path, **{**good["arrays"], **changes})
  return path


def test_5_a_truncated_codes_file(tmp_path, codes, capsys):
  data = codes["path"].read_bytes()
  for cut in (len(data) // 2, 30):
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[:cut])
    assert _decode(tmp_path, bad) == 2
    _one_line_error(capsys, "truncated.npz", "truncated or corrupt", "vqzoo encode")
  assert not (tmp_path / "out").exists()


def test_6_names_and_codes_of_different_counts(tmp_path, codes, capsys):
  bad = _variant(tmp_path, codes, names=np.asarray(["a.png", "b.png", "c.png"]))
  assert _decode(tmp_path, bad) == 2
  _one_line_error(capsys, "10 codes", "names of shape (3,)", "one name per image")
  bad = _variant(tmp_path, codes, labels=np.zeros(4, np.int32))
  assert _decode(tmp_path, bad) == 2
  _one_line_error(capsys, "labels of shape (4,)", "one label per image")


def test_7_a_seed_out_of_range(capsys):
  for seed in ("99999999999999999999999", "-1", "2.5"):
    assert _status(["sample", "mnist-conv-ema", "--seed", seed]) == 2
    _one_line_error(capsys, "--seed", "expected an integer from 0 to 4294967295", seed)
  assert _status(["fit-prior", MODEL, "--dataset", "mnist", "--out", "x", "--seed",
                  "1" + "0" * 30]) == 2
  _one_line_error(capsys, "--seed")
  assert _status(["finetune", "--from", MODEL, "--dataset", "mnist", "--out", "x", "--seed",
                  str(2**32)]) == 2
  _one_line_error(capsys, "--seed")


@pytest.fixture
def read_only_dir(tmp_path):
  """A folder nobody, not even root, can write: a read-only tmpfs (root) or mode 0555."""
  where = tmp_path / "ro"
  where.mkdir()
  if os.geteuid() == 0:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
      pytest.skip(f"root, yet no read-only tmpfs can be mounted ({done.stderr.strip()})")
    yield where
    subprocess.run(["umount", str(where)], check=True)
  else:
    where.chmod(0o555)
    yield where
    where.chmod(0o755)


def test_8_train_script_with_a_read_only_workdir(read_only_dir, tfds_dir, capsys):
  train = runpy.run_path(str(REPO / "scripts" / "train.py"))["main"]
  with pytest.raises(SystemExit) as e:
    train(["--variant", MODEL, "--steps", "300", "--workdir", str(read_only_dir / "w"),
           "--data-dir", tfds_dir, "--no-progress"])
  assert e.value.code == 2
  _one_line_error(capsys, "Read-only file system" if os.geteuid() == 0 else "Permission denied",
                  str(read_only_dir / "w"), "expected folders this user can write")


def test_9_an_empty_split(tmp_path, tfds_dir, capsys):
  for argv in (["eval", MODEL, "--split", "train[:0]"],
               ["fit-prior", MODEL, "--dataset", "mnist", "--split", "test[5:5]",
                "--out", str(tmp_path / "p")]):
    assert _status([*argv, "--data-dir", tfds_dir]) == 2
    err = _one_line_error(capsys, "selects no examples", "expected a non-empty split")
    assert "not prepared" not in err and "tensorflow" not in err.lower()
  assert not (tmp_path / "p").exists()


def test_10_sample_limits_are_stated_enforced_and_long_draws_show_progress(tmp_path, capsys):
  with pytest.raises(SystemExit):
    main(["sample", "--help"])
  assert f"1 to {MAX_SAMPLES}" in capsys.readouterr().out.replace("\n", " ")
  assert _status(["sample", MODEL, "--n", str(MAX_SAMPLES + 1)]) == 2
  _one_line_error(capsys, "--n", f"expected an integer from 1 to {MAX_SAMPLES}")
  grid = tmp_path / "s.png"
  assert _status(["sample", MODEL, "--n", "300", "--out", str(grid)]) == 0
  err = capsys.readouterr().err
  assert "sample" in err and "300/300" in err  # the progress bar, at its end
  with Image.open(grid) as image:
    assert image.size[0] > 0


def test_10_batched_samples_are_reproducible(monkeypatch):
  from vqzoo.sampling import sample_images
  model = vqzoo.load(MODEL)
  calls = []
  real = model.sample
  monkeypatch.setattr(model, "sample", lambda n, **kw: calls.append(n) or real(n, **kw))
  first = sample_images(model, 10, seed=3, batch_size=4, progress=False)
  assert first.shape == (10, 28, 28, 1) and calls == [4, 4, 4]  # equal batches: one compile
  np.testing.assert_array_equal(first, sample_images(model, 10, seed=3, batch_size=4,
                                                     progress=False))
  assert not np.array_equal(first, sample_images(model, 10, seed=4, batch_size=4,
                                                 progress=False))
  np.testing.assert_array_equal(sample_images(model, 4, seed=3, batch_size=4, progress=False),
                                real(4, seed=3))


def test_11_reconstruct_count_is_capped_and_stated(capsys):
  with pytest.raises(SystemExit):
    main(["reconstruct", "--help"])
  assert f"1 to {MAX_COUNT}" in capsys.readouterr().out.replace("\n", " ")
  assert _status(["reconstruct", MODEL, "--count", "1000000000"]) == 2
  _one_line_error(capsys, "--count", f"from 1 to {MAX_COUNT}")
  assert _status(["reconstruct", MODEL, "--count", "33"]) == 2  # 32 bundled digits
  _one_line_error(capsys, "--count 33", "hold 32 images", "expected --count <= 32")


def test_12_unclear_codes_files_are_named_clearly(tmp_path, codes, capsys):
  empty = _variant(tmp_path, codes, codes=codes["arrays"]["codes"][:0],
                   names=np.asarray([], "U1"))
  assert _decode(tmp_path, empty) == 2
  err = _one_line_error(capsys, "holds no codes", "at least one image")
  assert "concatenate" not in err
  png = tmp_path / "digit.png"
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(png)
  assert _decode(tmp_path, png) == 2
  err = _one_line_error(capsys, "is a PNG image", "expected a codes file written by")
  assert "pickled" not in err
  nul = _variant(tmp_path, codes, names=np.asarray(["ok.png"] * 9 + ["a\0b.png"]))
  assert _decode(tmp_path, nul) == 2
  err = _one_line_error(capsys, "name 9", "NUL byte", "expected file names")
  assert "embedded null byte" not in err
  assert not (tmp_path / "out").exists()


def test_13_a_reader_that_goes_away_ends_the_output_quietly(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  command = [sys.executable, "-m", "vqzoo.cli", "list", "--json"]
  # The reader is gone before the first write: the write fails at once.
  child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
  child.stdout.close()
  err = child.stderr.read().decode()
  assert child.wait() == 141 and err == "", err
  # The shell pipeline of the issue: head's one line, and nothing on stderr.
  done = subprocess.run(["bash", "-c", " ".join(command) + " | head -1"], capture_output=True,
                        text=True, env=env)
  assert done.stdout == "[\n" and done.stderr == "", done.stderr
