"""Drawing many images from a model's prior in equal batches, with a progress bar."""

from __future__ import annotations

from typing import Any

import numpy as np

BATCH = 256


def batch_seed(seed: int, index: int) -> int:
  """The ``seed`` (a uint32) that batch ``index`` of a draw made with ``seed`` is drawn with."""
  return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def sample_images(model: Any, num_samples: int, *, seed: int = 0, temperature: float = 1.0,
                  label: int | None = None, batch_size: int = BATCH,
                  progress: bool = True) -> np.ndarray:
  """``[N, H, W, C]`` float32 images drawn from ``model``'s prior.

  Up to ``batch_size`` images are exactly ``model.sample(N, seed=seed, ...)``. More are drawn
  ``batch_size`` at a time (one compilation: the last batch is drawn whole and cut), batch
  ``i`` with :func:`batch_seed` ``(seed, i)``, so the same arguments give the same images.

  Args:
    model: a :class:`~vqzoo.PretrainedVQVAE` with a prior.
    num_samples: N.
    seed, temperature: as :meth:`~vqzoo.PretrainedVQVAE.sample`.
    label: a class for every image, or ``None`` (drawn at random).
    batch_size: images per batch.
    progress: show a progress bar (only when there is more than one batch).
  """
  if num_samples <= batch_size:
    return model.sample(num_samples, seed=seed, temperature=temperature, label=label)
  from tqdm.auto import tqdm
  parts = []
  with tqdm(total=num_samples, desc="sample", unit="img", disable=not progress) as bar:
    for index, start in enumerate(range(0, num_samples, batch_size)):
      images = model.sample(batch_size, seed=batch_seed(seed, index), temperature=temperature,
                            label=label)
      parts.append(images[:num_samples - start])
      bar.update(len(parts[-1]))
  return np.concatenate(parts)
