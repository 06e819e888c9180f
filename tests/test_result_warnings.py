"""Results and recipes that should not be trusted say so, on the command line and in the card;
generated cards load as their usage snippet says and keep the base model's data credit."""

import re
import subprocess
import sys

import pytest
from PIL import Image

from vqzoo.configs import TrainConfig
from vqzoo import result_warnings
from vqzoo.training.loop import learning_rate_schedule


def test_checks_name_each_problem_and_stay_quiet_when_there_is_none():
  assert result_warnings.recipe_warnings(TrainConfig(steps=100, warmup_steps=10, batch_size=32), 1000) == []
  warm, batch = result_warnings.recipe_warnings(TrainConfig(steps=10, warmup_steps=10, batch_size=128), 45)
  assert "warm-up (10 steps) is not shorter than the run (10 steps)" in warm
  assert ("compressed to 9 steps, so the rate climbs to its peak (0.001) by the run's last "
          "step, by 0.000111111 a step instead of 0.0001") in warm
  schedule = learning_rate_schedule(TrainConfig(steps=10, warmup_steps=10, learning_rate=1e-3))
  assert [float(schedule(count)) for count in (1, 9)] == pytest.approx([1e-3 / 9, 1e-3])
  (one,) = result_warnings.recipe_warnings(TrainConfig(steps=1, warmup_steps=5))
  assert "compressed to 0 steps, so its one step runs at the peak rate (0.001)" in one
  assert "batch size 128 is larger than the 45 training images" in batch
  assert result_warnings.held_out_warnings(result_warnings.MIN_HELD_OUT) == []
  assert "only 5 held-out images" in result_warnings.held_out_warnings(5)[0]
  good = {"prior_bits": 170.0, "unigram_bits": 300.0, "uniform_bits": 343.0}
  assert result_warnings.prior_warnings(good) == []
  (bad,) = result_warnings.prior_warnings({**good, "prior_bits": 1069.7, "eval_split": "held-out"})
  assert "1069.7 bits per image" in bad and "unigram baseline (300.0)" in bad
  assert "uniform one (343.0)" in bad
  collapsed = {"perplexity": 1.0, "codes_used": 1, "num_images": 10000}
  (message,) = result_warnings.code_usage_warnings(collapsed, 49)
  assert "collapsed: over 490000 latent positions of the held-out images" in message
  assert "perplexity is 1.00 (1 distinct code)" in message and "levels of 4 or more" in message
  assert result_warnings.code_usage_warnings({**collapsed, "perplexity": 2.0}, 49) == []
  assert result_warnings.code_usage_warnings({**collapsed, "num_images": 4}, 1) == []  # too few
  assert result_warnings.code_usage_warnings({**collapsed, "num_images": 3}, 49)  # 147 positions
  assert result_warnings.card_section([]) == {}
  assert result_warnings.card_section(["a problem"]) == {"Warnings": "- A problem."}


@pytest.fixture(scope="module")
def pngs(tmp_path_factory, mnist_test):
  folder = tmp_path_factory.mktemp("pngs")
  for i, image in enumerate(mnist_test[:36]):
    Image.fromarray(image[..., 0]).save(folder / f"{i:02d}.png")
  return folder


def _warnings(err: str) -> list[str]:
  return [line for line in err.splitlines() if "warning:" in line]


def test_finetune_warns_and_its_card_loads_as_it_says_and_credits_the_base(tmp_path, capsys,
                                                                          pngs):
  from vqzoo.cli import main
  out = tmp_path / "my-ft"
  assert main(["finetune", "--from", "mnist-mlp", "--images", str(pngs), "--out", str(out),
               "--steps", "3", "--warmup-steps", "5", "--batch-size", "128",
               "--no-progress"]) == 0
  lines = _warnings(capsys.readouterr().err)
  assert any("warm-up (5 steps) is not shorter than the run (3 steps)" in w for w in lines), lines
  assert any("batch size 128 is larger than the 32 training images" in w for w in lines), lines
  assert any("only 4 held-out images" in w for w in lines), lines
  assert all(w.startswith("vqzoo finetune: warning: ") for w in lines), lines
  card = (out / "README.md").read_text()
  assert "## Warnings" in card and "held-out images" in card
  assert 'vqzoo.load("./my-ft")' in card
  assert "## Data and credit" in card and "base model was trained on MNIST" in card
  snippet = re.search(r"```python\n(.*?)```", card.split("## Usage")[1], re.S).group(1)
  script = ("import numpy as np\nimages = np.zeros((2, 28, 28, 1), np.uint8)\n" + snippet
            + "assert recon.shape == (2, 28, 28, 1)\n")
  result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]


def test_fit_prior_worse_than_unigram_warns_and_its_card_names_the_prior(tmp_path, capsys, pngs):
  from vqzoo.cli import main
  out = tmp_path / "with-prior"
  assert main(["fit-prior", "mnist-conv-ema", "--images", str(pngs), "--out", str(out),
               "--steps", "2", "--no-progress"]) == 0
  captured = capsys.readouterr()
  lines = _warnings(captured.err)
  assert any("worse than the unigram baseline" in w for w in lines), captured
  assert any("only 4 held-out images" in w for w in lines), lines
  card = (out / "README.md").read_text()
  assert "gated PixelCNN" in card and "| this prior |" in card and "| unigram code" in card
  assert "worse than the unigram baseline" in card.split("## Warnings")[1]
  assert 'vqzoo.load("./with-prior")' in card
  assert "base model was trained on MNIST" in card


def test_a_good_zoo_recipe_raises_no_warning(recwarn):
  from vqzoo.pretrained import registry
  for name in registry.list_models():
    entry = registry.get_entry(name)
    assert result_warnings.recipe_warnings(entry.recipe) == [], name
