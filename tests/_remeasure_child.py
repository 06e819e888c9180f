"""A child process for tests/test_zoo.py: a zoo model re-measured on its full splits.

  python tests/_remeasure_child.py NAME TFDS_DIR

Prints ``{"evaluate": ..., "prior": ...}`` as JSON: :func:`vqzoo.evaluate` on the test split
and, for a model with a prior, ``prior_fitting.prior_nll`` on the codes of that same pass (the
unigram baseline from the training split's codes). It runs in its own process with XLA's
default flags (``_util.user_env``), as a user runs it: encoding and decoding whole splits and
the prior's pass compute far more than they compile, and at the suite's ``FAST_COMPILE``
level they took twice the CPU time (cifar10-conv-ema's prior: 155 CPU-s against 81).
"""

import json
import sys

import vqzoo
from vqzoo.pretrained import load, registry
from vqzoo.training.data import load_images, load_labels
from vqzoo.training.prior_fitting import encode_images, prior_nll


def main(name: str, tfds_dir: str) -> None:
  model = load(name)
  dataset = registry.get_entry(name).eval_dataset
  test_images = load_images(dataset, "test", tfds_dir)
  measured, test_codes = vqzoo.evaluate(model.config, model.params, model.state, test_images,
                                        return_codes=True)
  prior = None
  if model.prior is not None:
    train_codes = encode_images(model, load_images(dataset, "train", tfds_dir), progress=False)
    prior = prior_nll(model, test_codes, load_labels(dataset, "test", tfds_dir), train_codes,
                      marginal=False)
  print(json.dumps({"evaluate": measured, "prior": prior}))


if __name__ == "__main__":
  main(*sys.argv[1:])
