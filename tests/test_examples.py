"""Every example in examples/ runs as documented (on small settings)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _util import REPO, user_env  # noqa: E402
EXAMPLES = REPO / "examples"


def _run(args, cwd, timeout=600):
  env = user_env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
  result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  return result.stdout


def test_quick_start(tmp_path):
  out = _run([sys.executable, str(EXAMPLES / "quick_start.py"), str(tmp_path)], tmp_path)
  assert "reconstruction MSE 0.00" in out and "saved and reloaded" in out


def test_finetune_own_images(tmp_path, mnist_test):
  folder = tmp_path / "pngs"
  folder.mkdir()
  for i, image in enumerate(mnist_test[:60]):
    Image.fromarray(image[..., 0]).save(folder / f"{i}.png")
  out = _run([sys.executable, str(EXAMPLES / "finetune_own_images.py"), str(folder),
              str(tmp_path / "ft"), "20"], tmp_path)
  assert "held-out MSE" in out


@pytest.mark.heavy
def test_tokenizer_and_prior(tmp_path):
  _run(["bash", str(EXAMPLES / "tokenizer_and_prior.sh"), str(tmp_path / "o"), "test[:200]",
        "5", "train[:5000]"], tmp_path)
  from vqzoo.pretrained.tokenizing import read_codes
  assert read_codes(tmp_path / "o" / "codes.npz")["codes"].shape == (200, 7, 7)
  with Image.open(tmp_path / "o" / "sneakers.png") as im:
    assert np.asarray(im).size > 0
