"""``make bench``'s last table: every speed target of a measured row, marked met or missed."""

import importlib.util

from _util import REPO


def _run_all():
  spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_each_measured_row_gets_its_target_marked():
  result = {
      "rows": [{"what": "train", "model": "mnist-conv-ema", "batch": 128, "ratio": 1.02},
               {"what": "train", "model": "cifar10-conv-ema", "batch": 128, "ratio": 0.83},
               {"what": "train", "model": "mnist-mlp", "batch": 128, "ratio": 2.0},
               {"what": "reconstruct", "model": "mnist-conv-ema", "batch": 128, "ratio": 0.5}],
      "first_step": [{"model": "mnist-conv-ema", "vqzoo_first_run_s": 8.0,
                      "vqzoo_cached_s": 3.2}],
      "short_run": {"model": "mnist-conv-ema", "steps": 400, "ratio": 0.91},
  }
  marked = {target: met for target, _, _, met in _run_all().targets(result)}
  assert marked == {
      "first training step, first run, mnist-conv-ema": True,  # at most 8 s
      "first training step, compilation cache filled, mnist-conv-ema": False,
      "steady training, mnist-conv-ema, batch 128, vqzoo / PyTorch": True,
      "steady training, cifar10-conv-ema, batch 128, vqzoo / PyTorch": False,
      "400-step mnist-conv-ema run with start-up, vqzoo / PyTorch images/s": True,
  }
  assert _run_all().targets({"rows": []}) == []  # nothing measured, nothing claimed
