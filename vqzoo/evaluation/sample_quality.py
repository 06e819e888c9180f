"""Sample quality of a model with a prior, measured with vqzoo's own classifier.

"Classifier Fréchet distance" (:mod:`vqzoo.evaluation.frechet`) in the 128-d features of the
small classifier shipped for the dataset: not FID. Every row is measured against the full test
split, with reference rows measured the same way in the same call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vqzoo.training import classifier as classifier_lib
from vqzoo.training.data import load_images, load_labels
from vqzoo.evaluation.frechet import feature_moments, frechet_distance_from_moments
from vqzoo.training.prior_fitting import encode_images, sample_unigram


def _draw(model: Any, labels: np.ndarray | None, num: int, seed: int, batch: int = 500,
          progress: bool = True) -> np.ndarray:
  from tqdm.auto import tqdm
  out = []
  for i, start in enumerate(tqdm(range(0, num, batch), disable=not progress, desc="sample",
                                 leave=False)):
    n = min(batch, num - start)
    label = None if labels is None else labels[start:start + n]
    out.append(model.sample(n, seed=seed + i, label=label))
  return np.concatenate(out)


def sample_quality(model: Any, dataset: str, data_dir: str | None = None, seed: int = 0,
                   progress: bool = True) -> dict[str, Any]:
  """Classifier Fréchet distances to the test split, and the class accuracy of samples.

  Draws as many samples as the test split has images, with the test split's labels for a
  class-conditional prior (so the class mix matches).

  Returns:
    ``frechet``: ``{"samples", "train_split" (the floor), "reconstructions",
    "unigram_samples"}``; for class-conditional priors ``class_accuracy`` (share of samples
    the classifier assigns to the requested class) and ``class_accuracy_per_class``.
  """
  params = classifier_lib.load_classifier(dataset)
  test = load_images(dataset, "test", data_dir)
  train = load_images(dataset, "train", data_dir)
  labels = load_labels(dataset, "test", data_dir) if model.prior.num_classes else None
  k = model.config.quantizer.num_embeddings
  per_stage = model.config.quantizer.kind == "rvq"  # a residual model: a codebook per stage
  train_codes = encode_images(model, train, progress=progress)
  sets = {
      "samples": _draw(model, labels, len(test), seed, progress=progress),
      "train_split": train[np.random.default_rng(seed).permutation(len(train))[:len(test)]],
      "reconstructions": model.reconstruct(test),
      "unigram_samples": model.decode(sample_unigram(train_codes, len(test), k, seed,
                                                     per_stage)),
  }
  reference = feature_moments(classifier_lib.features(params, test))
  out: dict[str, Any] = {"frechet": {}, "num_images": int(len(test))}
  for name, images in sets.items():
    moments = feature_moments(classifier_lib.features(params, images))
    out["frechet"][name] = frechet_distance_from_moments(*moments, *reference)
  if labels is not None:
    predicted = classifier_lib.predict(params, sets["samples"])
    out["class_accuracy"] = float(np.mean(predicted == labels))
    out["class_accuracy_per_class"] = {
        int(c): float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)}
  return out
