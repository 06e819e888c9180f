"""Datasets: TFDS splits through ``tfds.data_source`` (no TensorFlow), cached as uint8.

The TFDS data directory is, in order: the ``data_dir`` argument, the
``TFDS_DATA_DIR`` environment variable, TFDS's default (``~/tensorflow_datasets``).
Decoded splits are cached as ``.npy`` under ``$VQZOO_CACHE`` (default
``~/.cache/vqzoo``) so later runs skip PNG decoding. The cache file's name is
keyed by the data directory, dataset, split, example count and a digest of the
dataset's source files (sha256 over the name, size and ``st_mtime_ns`` of every
file in the TFDS version directory, e.g. ``mnist/3.0.1``: a stat per file, no
reading, yet any re-preparation of the dataset changes it). Beside each cache
file, ``<file>.json`` records that source digest and the sha256 of the
``.npy`` bytes; a cache that is missing its record, truncated, not a valid
``.npy``, or whose bytes or source digest do not match is never used: the split
is decoded again and the cache rewritten. A cache that cannot be written only
warns.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from vqzoo.images import uint8_to_float
from vqzoo.io import atomic_write_bytes, sha256_file

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
  infos = sorted(Path(where, name.split(":")[0]).glob("*/dataset_info.json"))
  if not infos:
    raise _not_prepared(name, split, where)
  splits = _split_names(infos[-1])
  base_split = split.split("[")[0].split("+")[0].strip()
  if splits and base_split not in splits:
    raise ValueError(f"TFDS dataset {name!r} has no split {base_split!r}; its splits are "
                     f"{', '.join(sorted(splits))} (slices like 'train[:1000]' work too)")
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # TFDS raises assorted types for a missing or partial dataset.
    _check_not_empty(tfds, name, split, data_dir)
    raise _not_prepared(name, split, where, f" ({type(e).__name__}: {e})") from e


def _check_not_empty(tfds, name: str, split: str, data_dir: str | None) -> None:
  """Raises ValueError if ``split`` (a slice, say) selects no examples of a prepared dataset."""
  try:
    count = tfds.builder(name, data_dir=data_dir).info.splits[split].num_examples
  except Exception:  # noqa: BLE001 - unknown: the caller's error stands
    return
  if count == 0:
    raise ValueError(f"split {split!r} of TFDS dataset {name!r} selects no examples; expected "
                     "a non-empty split or slice, e.g. 'train[:1000]'")


def _split_names(info_path: Path) -> set[str]:
  """The split names a prepared dataset's ``dataset_info.json`` lists (empty if unreadable)."""
  import json
  try:
    return {entry["name"] for entry in json.loads(info_path.read_text()).get("splits", [])}
  except (OSError, ValueError, KeyError, TypeError):
    return set()


def load_images(name: str, split: str, data_dir: str | os.PathLike | None = None,
                use_cache: bool = True, progress: bool = True) -> np.ndarray:
  """All images of a TFDS split as ``[N, H, W, C]`` uint8, decoded once and cached.

  Args:
    name: TFDS name, e.g. ``"mnist"`` or ``"fashion_mnist"``.
    split: e.g. ``"train"``, ``"test"`` or ``"test[:1000]"``.
    data_dir: TFDS data directory; see the module docstring.
    use_cache: read and write the decoded ``.npy`` cache.
    progress: show a progress bar while decoding (the first time only; then the cache is read).
  """
  resolved = resolve_data_dir(data_dir)
  source = _data_source(name, split, resolved)
  digest = _source_digest(source)
  key = hashlib.sha256(f"{os.path.abspath(resolved or '~')}|{name}|{split}|{len(source)}|"
                       f"{digest}".encode()).hexdigest()[:16]
  path = cache_dir() / "datasets" / f"{name}-{split.replace(':', '_')}-{key}.npy"
  if use_cache:
    images = _read_cache(path, digest, len(source))
    if images is not None:
      return images
  from tqdm.auto import tqdm
  n, step = len(source), 2000
  images = []
  with tqdm(total=n, desc=f"decode {name} {split}", unit="img", leave=False,
            disable=not progress or n <= step) as bar:
    for start in range(0, n, step):
      examples = source.__getitems__(list(range(start, min(n, start + step))))
      images.extend(np.asarray(ex["image"], dtype=np.uint8) for ex in examples)
      bar.update(len(examples))
  images = np.stack(images)
  if images.ndim == 3:
    images = images[..., None]
  if use_cache:
    _write_cache(path, images, digest)
  return images


def _source_digest(source) -> str:
  """sha256 over ``name, size, st_mtime_ns`` of each file in the split's TFDS directory.

  ``"unknown"`` when the directory cannot be listed; the cache's own sha256
  still guards its content then.
  """
  where = getattr(getattr(source, "dataset_info", None), "data_dir", None)
  if where is None:
    return "unknown"
  try:
    entries = sorted((e.name, e.stat()) for e in os.scandir(os.fspath(where)) if e.is_file())
  except (OSError, TypeError, ValueError):
    return "unknown"
  digest = hashlib.sha256()
  for name, info in entries:
    digest.update(f"{name}|{info.st_size}|{info.st_mtime_ns}\n".encode())
  return digest.hexdigest()


def _record_path(path: Path) -> Path:
  return path.with_name(path.name + ".json")


def _read_cache(path: Path, source_digest: str, count: int) -> np.ndarray | None:
  """The cached ``[N, H, W, C]`` uint8 split, or ``None`` when absent, corrupt or stale."""
  try:
    record = json.loads(_record_path(path).read_text())
    if (not isinstance(record, dict) or record.get("source_digest") != source_digest
        or record.get("npy_sha256") != sha256_file(path)):
      return None
    images = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError):  # missing, unreadable, truncated, not .npy / JSON
    return None
  if images.dtype == np.uint8 and images.ndim == 4 and len(images) == count:
    return images
  return None


def _write_cache(path: Path, images: np.ndarray, source_digest: str) -> None:
  """Writes the ``.npy`` then its record (both atomically); a failure only warns."""
  data = _npy_bytes(images)
  record = {"source_digest": source_digest, "npy_sha256": hashlib.sha256(data).hexdigest(),
            "shape": list(images.shape)}
  try:
    atomic_write_bytes(path, data)
    atomic_write_bytes(_record_path(path), json.dumps(record, indent=1).encode())
  except OSError as e:
    warnings.warn(f"could not write the dataset cache {path}: {e}", stacklevel=3)


def _npy_bytes(array: np.ndarray) -> bytes:
  import io
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  return buffer.getvalue()


def batch_indices(num_examples: int, batch_size: int, seed: int, start_step: int = 0
                  ) -> Iterator[np.ndarray]:
  """The one seeded batch order of every vqzoo training run, resumable at a step.

  Each epoch is a permutation drawn from ``(seed, epoch)`` and cut into
  ``num_examples // batch_size`` batches (the remainder is skipped that epoch), so step ``s``
  gives the same batch whether the run started at 0 or resumed at ``s``.

  Yields:
    ``[batch_size]`` int indices into the examples, endlessly.
  """
  if not 1 <= batch_size <= num_examples:
    raise ValueError(f"batch_size: expected 1..{num_examples} (the dataset size), got "
                     f"{batch_size}")
  per_epoch = num_examples // batch_size
  step, order, order_epoch = start_step, None, None
  while True:
    epoch, index = divmod(step, per_epoch)
    if epoch != order_epoch:
      order, order_epoch = np.random.default_rng([seed, epoch]).permutation(num_examples), epoch
    yield order[index * batch_size:(index + 1) * batch_size]
    step += 1


def batches(images: np.ndarray, batch_size: int, seed: int, start_step: int = 0
            ) -> Iterator[np.ndarray]:
  """Endless seeded shuffled batches of float32 images (:func:`batch_indices`' order).

  Yields:
    ``[batch_size, H, W, C]`` float32 in [0, 1].
  """
  for pick in batch_indices(len(images), batch_size, seed, start_step):
    yield uint8_to_float(images[pick])


def load_labels(name: str, split: str, data_dir: str | os.PathLike | None = None) -> np.ndarray:
  """The integer labels of a TFDS split, in the order :func:`load_images` returns its images.

  Images are not decoded (a raw-bytes decoder skips them), so this is quick and not cached.

  Args:
    name: TFDS name, e.g. ``"mnist"`` or ``"fashion_mnist"``.
    split: e.g. ``"train"``, ``"test"`` or ``"test[:1000]"``.
    data_dir: TFDS data directory; see the module docstring.

  Returns:
    ``[N]`` int32 class labels (0-9 for MNIST and Fashion-MNIST).
  """
  resolved = resolve_data_dir(data_dir)
  _data_source(name, split, resolved)  # the same checks and error messages as load_images
  import tensorflow_datasets as tfds
  source = tfds.data_source(name, split=split, data_dir=resolved, download=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
  examples = source.__getitems__(list(range(len(source))))
  return np.asarray([int(ex["label"]) for ex in examples], dtype=np.int32)
