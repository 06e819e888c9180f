"""Quick start: load a zoo model, encode and decode images, sample from its prior, save it.

  python examples/quick_start.py [OUT_DIR]
"""

import sys
from importlib import resources
from pathlib import Path

import numpy as np

import vqzoo


def main(out: Path) -> None:
  print(vqzoo.list_models())
  model = vqzoo.load("mnist-conv-ema")            # bundled, integrity-checked, offline
  with resources.files("vqzoo.assets").joinpath("mnist_test_digits.npy").open("rb") as f:
    digits = np.load(f)                           # 32 real MNIST test digits, uint8
  codes = model.encode(digits)                    # [32, 7, 7] int32
  recon = model.decode(codes)                     # [32, 28, 28, 1] float32 in [0, 1]
  mse = float(np.mean((recon - digits / 255.0) ** 2))
  print(f"codes {codes.shape}, reconstruction MSE {mse:.5f}")
  samples = model.sample(10, seed=0, label=np.arange(10))  # one sample of each digit
  print(f"samples {samples.shape}, prior bits of the codes: {model.prior_bits(codes[:4])}")
  model.save_pretrained(out / "my-model")         # loads back with vqzoo.load("./...")
  again = vqzoo.load(out / "my-model")
  assert np.array_equal(again.encode(digits), codes)
  print(f"saved and reloaded {out / 'my-model'}")


if __name__ == "__main__":
  main(Path(sys.argv[1] if len(sys.argv) > 1 else "example_output"))
