"""A folder of PNG/JPEG images as a uint8 array, converted to a model's input shape.

The rule (also in ``vqzoo finetune --help``): every ``*.png``, ``*.jpg`` and
``*.jpeg`` under the folder (recursively, sorted by path) is opened read-only,
converted to grayscale (``L``) for 1-channel models or RGB for 3-channel
models (alpha is dropped), and resized to the model's H x W with bilinear
filtering, ignoring aspect ratio. Files that are not such images, or that fail
to decode, are skipped with one warning listing them. The folder is never
modified.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOLDER_RULE = ("PNG/JPEG files under DIR (recursive) are converted to grayscale for 1-channel "
               "models or RGB for 3-channel models and resized to the model's HxW (bilinear, "
               "aspect ratio not kept); unreadable or non-image files are skipped with one "
               "warning; the folder is never modified")


def load_image_folder(folder: str | os.PathLike, image_shape) -> tuple[np.ndarray, list[str]]:
  """Reads every image under ``folder`` -> ``([N, H, W, C] uint8, list of their paths)``.

  Raises:
    FileNotFoundError: ``folder`` does not exist or is not a directory.
    ValueError: no readable image in the folder.
  """
  from PIL import Image, UnidentifiedImageError

  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"image folder {folder} does not exist or is not a directory")
  h, w, c = image_shape
  if c not in (1, 3):
    raise ValueError(f"image folders feed 1- or 3-channel models, this one has {c} channels")
  mode = "L" if c == 1 else "RGB"
  images, paths, skipped = [], [], []
  for path in sorted(p for p in folder.rglob("*") if p.is_file()):
    if path.suffix.lower() not in IMAGE_SUFFIXES:
      skipped.append(f"{path} (not a PNG/JPEG)")
      continue
    try:
      with Image.open(path) as im:
        im = im.convert(mode).resize((w, h), Image.BILINEAR)
        array = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
      skipped.append(f"{path} ({type(e).__name__}: {e})")
      continue
    images.append(array.reshape(h, w, c))
    paths.append(str(path))
  if skipped:
    warnings.warn(f"skipped {len(skipped)} unreadable or non-image file(s) in {folder}: "
                  + "; ".join(skipped), stacklevel=2)
  if not images:
    raise ValueError(f"image folder {folder} holds no readable PNG/JPEG image "
                     f"({len(skipped)} file(s) skipped)")
  return np.stack(images), paths


def split_holdout(images: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Seeded split into ``(train, held_out)``; at least one image each when possible."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"holdout fraction: expected a number in [0, 1), got {fraction}")
  order = np.random.default_rng(seed).permutation(len(images))
  n_eval = int(round(len(images) * fraction))
  if fraction > 0 and len(images) > 1:
    n_eval = min(max(n_eval, 1), len(images) - 1)
  return images[order[n_eval:]], images[order[:n_eval]]
