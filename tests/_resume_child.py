"""A child process for tests/test_kill_resume.py: one short run of one caller of the loop.

  python tests/_resume_child.py CALLER WORKDIR OUT.npz [--resume] [--pause S]

CALLER is ``train``, ``finetune``, ``prior`` or ``classifier``. ``--pause`` sleeps after every
checkpoint write, so that the parent can kill the process mid-run, between two checkpoints.
Writes the final parameters (and state) to OUT.npz.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from _util import synthetic_images  # noqa: E402
from vqzoo.configs import (ConvConfig, FinetuneConfig, ModelConfig, PriorConfig,  # noqa: E402
                           QuantizerConfig, RunConfig, TrainConfig)
from vqzoo.training import checkpoint  # noqa: E402

STEPS, EVERY = 30, 5
MODEL = ModelConfig(arch="conv", conv=ConvConfig(16, 1, 8),
                    quantizer=QuantizerConfig(32, 8, ema=True, dead_code_threshold=0.5))
RECIPE = TrainConfig(steps=STEPS, batch_size=16, learning_rate=1e-3, warmup_steps=3)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("caller", choices=("train", "finetune", "prior", "classifier"))
  parser.add_argument("workdir")
  parser.add_argument("out")
  parser.add_argument("--resume", action="store_true")
  parser.add_argument("--pause", type=float, default=0.0)
  args = parser.parse_args()
  if args.pause:
    real_save = checkpoint.save

    def save_then_pause(*a, **k):
      real_save(*a, **k)
      print("checkpoint", flush=True)
      time.sleep(args.pause)
    checkpoint.save = save_then_pause
  run = RunConfig(resume=args.resume, checkpoint_every=EVERY, log_every=EVERY, progress=False)
  images = synthetic_images(256)
  if args.caller == "train":
    from vqzoo.training import train
    result = train(MODEL, RECIPE, args.workdir, images, run=run)
    tree = (result.params, result.state)
  elif args.caller == "finetune":
    from vqzoo.training import finetune
    from vqzoo.training.trainer import init_train_state, make_optimizer
    base = Path(args.workdir).parent / "base"
    if not base.exists():
      from vqzoo.pretrained import PretrainedVQVAE
      ts = jax.device_get(init_train_state(MODEL, make_optimizer(RECIPE), 0))
      PretrainedVQVAE(MODEL, ts.params, ts.state).save_pretrained(base)
    folder = Path(args.workdir).parent / "images"
    if not folder.exists():
      from PIL import Image
      folder.mkdir()
      for i, image in enumerate(images[:64]):
        Image.fromarray(image[..., 0]).save(folder / f"{i:03d}.png")
    result = finetune(str(base), Path(args.workdir).parent / "ft-out", FinetuneConfig(
        recipe=RECIPE, freeze=("encoder",)), images_dir=str(folder), workdir=args.workdir,
        run=run)
    tree = (result.model.params, result.model.state)
  elif args.caller == "prior":
    from vqzoo.training.prior_fitting import fit_prior
    codes = np.random.default_rng(0).integers(0, 32, (256, 7, 7)).astype(np.int32)
    labels = np.arange(256) % 3
    config = PriorConfig(num_embeddings=32, num_classes=3, hidden=8, num_layers=1)
    tree = fit_prior(config, RECIPE, codes, labels, workdir=args.workdir, run=run)
  else:
    from vqzoo.training.classifier import train_classifier
    labels = np.arange(256) % 10
    tree = train_classifier(images, labels, STEPS, batch_size=16, workdir=args.workdir, run=run)
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  np.savez(args.out, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})


if __name__ == "__main__":
  main()
