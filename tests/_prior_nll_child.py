"""A child process for tests/test_zoo.py: a zoo model's prior re-measured on its full splits.

  python tests/_prior_nll_child.py NAME TFDS_DIR

Prints ``prior_fitting.prior_nll``'s figures as JSON. It runs in its own process with XLA's
default flags (``_util.user_env``): encoding both splits and the prior's pass over the test
codes compute far more than they compile, and at the suite's ``FAST_COMPILE`` level they took
twice the CPU time (cifar10-conv-ema: 155 CPU-s against 81).
"""

import json
import sys

from vqzoo.pretrained import load, registry
from vqzoo.training.data import load_images, load_labels
from vqzoo.training.prior_fitting import encode_images, prior_nll


def main(name: str, tfds_dir: str) -> None:
  model = load(name)
  dataset = registry.get_entry(name).eval_dataset
  test_codes = encode_images(model, load_images(dataset, "test", tfds_dir), progress=False)
  train_codes = encode_images(model, load_images(dataset, "train", tfds_dir), progress=False)
  measured = prior_nll(model, test_codes, load_labels(dataset, "test", tfds_dir), train_codes,
                       marginal=False)
  print(json.dumps(measured))


if __name__ == "__main__":
  main(*sys.argv[1:])
