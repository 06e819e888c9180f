"""Training: data (TFDS, image folders), the training and fine-tuning loops, reconstruction
metrics (the other measurements are in :mod:`vqzoo.evaluation`, the layer above).

Every run (training, fine-tuning, prior fitting, classifier training) goes through the one loop
of :mod:`vqzoo.training.loop` and the one checkpoint format and resume rule of
:mod:`vqzoo.training.checkpoint`, data-parallel by ``jax.jit`` over a device mesh
(:mod:`vqzoo.training.parallel`). The loops take config objects (:class:`~vqzoo.TrainConfig`,
:class:`~vqzoo.FinetuneConfig`, :class:`~vqzoo.RunConfig`); argument parsing lives in
``vqzoo.cli`` and ``scripts/``.
"""

from vqzoo.configs import FinetuneConfig, RunConfig, TrainConfig
from vqzoo.training.data import batch_indices, batches, load_images
from vqzoo.training.metrics import evaluate, measure
from vqzoo.training.finetuning import FinetuneResult, finetune, reseed_unused_codes
from vqzoo.image_folder import load_image_folder, split_holdout
from vqzoo.training.trainer import TrainResult, TrainState, train

__all__ = ["FinetuneConfig", "RunConfig", "TrainConfig", "batch_indices", "batches", "load_images", "evaluate", "measure",
           "FinetuneResult", "finetune", "reseed_unused_codes", "load_image_folder",
           "split_holdout", "TrainResult", "TrainState", "train"]
