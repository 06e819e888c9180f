"""Training: data (TFDS, image folders), the training and fine-tuning loops, evaluation.

The loops take config objects (:class:`~vqzoo.TrainConfig`, :class:`~vqzoo.FinetuneConfig`);
argument parsing lives in ``vqzoo.cli`` and ``scripts/``.
"""

from vqzoo.configs import FinetuneConfig, TrainConfig
from vqzoo.training.data import batches, load_images
from vqzoo.training.metrics import evaluate, measure
from vqzoo.training.finetuning import FinetuneResult, finetune, reseed_unused_codes
from vqzoo.training.image_folder import load_image_folder, split_holdout
from vqzoo.training.trainer import TrainResult, TrainState, train

__all__ = ["FinetuneConfig", "TrainConfig", "batches", "load_images", "evaluate", "measure",
           "FinetuneResult", "finetune", "reseed_unused_codes", "load_image_folder",
           "split_holdout", "TrainResult", "TrainState", "train"]
