"""Fine-tune a zoo model on your own folder of PNG/JPEG images.

  python examples/finetune_own_images.py IMAGE_DIR OUT_DIR [STEPS]

in the environment README.md sets up (``source .venv-test/bin/activate``); IMAGE_DIR is a folder
of PNG/JPEG images (28x28 grey, as the MNIST model reads; others are refused unless
``finetune(..., convert="grey", resize=True)`` converts them). A fifth is held out to measure the
model: with fewer than 100 images that is under 20, and vqzoo warns that the metrics are noise.

(The same from the shell: `vqzoo finetune --from mnist-mlp --images IMAGE_DIR --out OUT_DIR`,
with `--convert grey --resize` for other images.)
"""

import sys

import vqzoo
from vqzoo.training import finetune


def main(images: str, out: str, steps: int = 200) -> None:
  recipe = vqzoo.TrainConfig(steps=steps, batch_size=32, learning_rate=1e-3, warmup_steps=10)
  config = vqzoo.FinetuneConfig(recipe=recipe, freeze=("codebook",), holdout_fraction=0.2)
  result = finetune("mnist-mlp", out, config, images_dir=images,
                    run=vqzoo.RunConfig(progress=False))
  print(f"held-out MSE {result.metrics_before['mse']:.5f} -> {result.metrics_after['mse']:.5f}")
  model = vqzoo.load(f"./{out}" if not out.startswith(("/", ".")) else out)
  print(model, model.source)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 200)
