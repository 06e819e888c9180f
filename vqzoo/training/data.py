"""Datasets: TFDS splits through ``tfds.data_source`` (no TensorFlow), cached as uint8.

The TFDS data directory is, in order: the ``data_dir`` argument, the
``TFDS_DATA_DIR`` environment variable, TFDS's default (``~/tensorflow_datasets``).
Decoded splits are cached as ``.npy`` under ``$VQZOO_CACHE`` (default
``~/.cache/vqzoo``) so later runs skip PNG decoding.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from vqzoo.images import uint8_to_float
from vqzoo.io import atomic_write_bytes

DATA_INSTALL_HINT = "pip install 'vqzoo[data]'"


def cache_dir() -> Path:
  """Root of vqzoo's local caches (``$VQZOO_CACHE`` or ``~/.cache/vqzoo``)."""
  return Path(os.environ.get("VQZOO_CACHE", Path.home() / ".cache" / "vqzoo"))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str | None:
  """``data_dir`` argument, else ``$TFDS_DATA_DIR``, else ``None`` (TFDS's default)."""
  if data_dir is not None:
    return os.fspath(data_dir)
  return os.environ.get("TFDS_DATA_DIR") or None


def _not_prepared(name: str, split: str, where: str, detail: str = "") -> FileNotFoundError:
  return FileNotFoundError(
      f"TFDS dataset {name!r} (split {split!r}) is not prepared in {where}{detail}. "
      f"Prepare it once, with TensorFlow and a network: `pip install 'vqzoo[data]' tensorflow "
      f"&& python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
      f"data_dir='{where}', file_format='array_record').download_and_prepare()\"`; or point "
      f"TFDS_DATA_DIR (or --data-dir) at a directory that holds it.")


def _data_source(name: str, split: str, data_dir: str | None):
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"Reading TFDS datasets needs the data extra: {DATA_INSTALL_HINT}") from e
  where = data_dir or os.path.expanduser("~/tensorflow_datasets")
  if not any(Path(where, name.split(":")[0]).glob("*/dataset_info.json")):
    raise _not_prepared(name, split, where)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # TFDS raises assorted types for a missing or partial dataset.
    raise _not_prepared(name, split, where, f" ({type(e).__name__}: {e})") from e


def load_images(name: str, split: str, data_dir: str | os.PathLike | None = None,
                use_cache: bool = True) -> np.ndarray:
  """All images of a TFDS split as ``[N, H, W, C]`` uint8, decoded once and cached.

  Args:
    name: TFDS name, e.g. ``"mnist"`` or ``"fashion_mnist"``.
    split: e.g. ``"train"``, ``"test"`` or ``"test[:1000]"``.
    data_dir: TFDS data directory; see the module docstring.
    use_cache: read and write the decoded ``.npy`` cache.
  """
  resolved = resolve_data_dir(data_dir)
  source = _data_source(name, split, resolved)
  key = hashlib.sha256(f"{os.path.abspath(resolved or '~')}|{name}|{split}|{len(source)}"
                       .encode()).hexdigest()[:16]
  path = cache_dir() / "datasets" / f"{name}-{split.replace(':', '_')}-{key}.npy"
  if use_cache and path.exists():
    images = np.load(path, allow_pickle=False)
    if images.dtype == np.uint8 and images.ndim == 4 and len(images) == len(source):
      return images
  examples = source.__getitems__(list(range(len(source))))
  images = np.stack([np.asarray(ex["image"], dtype=np.uint8) for ex in examples])
  if images.ndim == 3:
    images = images[..., None]
  if use_cache:
    atomic_write_bytes(path, _npy_bytes(images))
  return images


def _npy_bytes(array: np.ndarray) -> bytes:
  import io
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  return buffer.getvalue()


def batches(images: np.ndarray, batch_size: int, seed: int, start_step: int = 0
            ) -> Iterator[np.ndarray]:
  """Endless seeded shuffled batches of float32 images, resumable at a step.

  Each epoch is a permutation drawn from ``(seed, epoch)``, so step ``s`` gives
  the same batch whether the run started at 0 or resumed at ``s``.

  Yields:
    ``[batch_size, H, W, C]`` float32 in [0, 1].
  """
  if batch_size > len(images):
    raise ValueError(f"batch_size: expected <= {len(images)} (the dataset size), got {batch_size}")
  per_epoch = len(images) // batch_size
  step = start_step
  while True:
    epoch, index = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(len(images))
    yield uint8_to_float(images[order[index * batch_size:(index + 1) * batch_size]])
    step += 1
