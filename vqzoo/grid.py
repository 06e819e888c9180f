"""Image grids as PNG: originals in the top row(s), reconstructions below."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from vqzoo.io import atomic_write_bytes


def make_grid(rows: list[np.ndarray], pad: int = 2, scale: int = 2) -> np.ndarray:
  """Stacks each ``[N, H, W, C]`` float array in [0, 1] as one row -> uint8 ``[H', W', C]``."""
  n = max(len(r) for r in rows)
  h, w, c = rows[0].shape[1:]
  grid = np.ones((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), np.float32)
  for i, row in enumerate(rows):
    for j, image in enumerate(row):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      grid[y:y + h, x:x + w] = image
  grid = np.clip(grid * 255 + 0.5, 0, 255).astype(np.uint8)
  return grid.repeat(scale, 0).repeat(scale, 1)


FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
  """Atomically writes a uint8 ``[H, W, C]`` image in the format its suffix names.

  Raises:
    ValueError: a suffix other than ``.png``, ``.jpg`` or ``.jpeg``.
  """
  import io
  suffix = os.path.splitext(os.fspath(path))[1].lower()
  if suffix not in FORMATS:
    raise ValueError(f"{path}: expected a .png, .jpg or .jpeg file name, got {suffix!r}")
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      buffer, format=FORMATS[suffix])
  atomic_write_bytes(path, buffer.getvalue())


def save_comparison(path: str | os.PathLike, originals: np.ndarray, reconstructions: np.ndarray,
                    per_row: int = 16) -> None:
  """Writes originals above reconstructions, ``per_row`` images per row pair."""
  rows = []
  for start in range(0, len(originals), per_row):
    rows += [originals[start:start + per_row], reconstructions[start:start + per_row]]
  save_png(path, make_grid(rows))
