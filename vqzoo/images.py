"""Checking and converting user images: uint8 [0, 255] or float [0, 1], with or without channels."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def uint8_to_float(images: np.ndarray) -> np.ndarray:
  """uint8 (or any integer in 0-255) ``[...]`` -> float32 in [0, 1]: the one conversion rule."""
  return np.asarray(images).astype(np.float32) / np.float32(255)


def as_image_batch(images, image_shape: Sequence[int]) -> np.ndarray:
  """Checks layout and dtype; returns ``[B, H, W, C]`` in the input's dtype (no value checks).

  Raises:
    ValueError: not an integer or float array; wrong rank, size or channel count; empty.
  """
  h, w, c = image_shape
  expected = f"[B, {h}, {w}, {c}]" + (f" or [B, {h}, {w}]" if c == 1 else "")
  x = np.asarray(images)
  if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer)
                                 or np.issubdtype(x.dtype, np.floating)):
    raise ValueError(f"images: expected uint8 or float arrays, got dtype {x.dtype}")
  if x.ndim == 2 or (x.ndim == 3 and x.shape == (h, w, c) and c != x.shape[0]):
    x = x[None]  # a single image
  if x.ndim == 3 and c == 1:
    x = x[..., None]
  if x.ndim != 4:
    hint = ("; a batch of grey images? this model reads colour (RGB): np.repeat(x[..., None], "
            "3, axis=-1)" if x.ndim == 3 and c == 3 and tuple(x.shape[1:]) == (h, w) else "")
    raise ValueError(f"images: expected shape {expected}, got {x.shape} (rank {x.ndim}){hint}")
  if tuple(x.shape[1:3]) != (h, w):
    raise ValueError(f"images: expected {h}x{w} pixels ({expected}), got {x.shape[1]}x"
                     f"{x.shape[2]} (shape {x.shape})")
  if x.shape[3] != c:
    hint = {(3, 1): "; this model reads colour (RGB): repeat a grey image's channel, "
                    "np.repeat(x, 3, axis=-1)",
            (1, 3): "; this model reads grey images: convert colour first, e.g. "
                    "PIL's Image.convert('L')"}.get((c, x.shape[3]), "")
    raise ValueError(f"images: expected {c} channel(s) ({expected}), got {x.shape[3]} "
                     f"(shape {x.shape}){hint}")
  if x.shape[0] == 0:
    raise ValueError(f"images: expected at least one image ({expected}), got an empty batch")
  return x


def check_pixel_range(lo: float, hi: float, integer: bool) -> None:
  """Raises ``ValueError`` unless ``[lo, hi]`` lies in 0-255 (integers) or [0, 1] (floats)."""
  if integer:
    if lo < 0 or hi > 255:
      raise ValueError(f"images: integer pixels must be in 0-255, got values in "
                       f"[{int(lo)}, {int(hi)}]")
  elif not (lo >= 0.0 and hi <= 1.0):  # NaN fails both comparisons; Inf is out of range
    if np.isnan(lo) or np.isnan(hi):
      raise ValueError("images: expected finite floats in [0, 1], found NaN")
    raise ValueError(f"images: float pixels must be in [0, 1], got values in [{lo:.4g}, {hi:.4g}]"
                     "; divide uint8 data by 255")


def to_float_images(images, image_shape: Sequence[int]) -> np.ndarray:
  """Validates ``images`` and returns ``[B, H, W, C]`` float32 in [0, 1].

  Args:
    images: ``[B, H, W, C]``, ``[B, H, W]`` (single channel), ``[H, W, C]`` or
      ``[H, W]`` (a single image); uint8 in [0, 255] or float in [0, 1].
    image_shape: the model's ``(H, W, C)``.

  Raises:
    ValueError: wrong rank, size or channel count; integers outside 0-255;
      floats outside [0, 1]; NaN or Inf; an empty batch.
  """
  x = as_image_batch(images, image_shape)
  integer = bool(np.issubdtype(x.dtype, np.integer))
  if x.dtype != np.uint8:
    check_pixel_range(float(x.min()), float(x.max()), integer)
  if integer:
    return uint8_to_float(x)
  return np.asarray(x, dtype=np.float32)  # no copy for float32 input


def check_codes(codes, num_embeddings: int, latent_shape: Sequence[int]) -> np.ndarray:
  """Validates code indices ``[B, *latent_shape]`` in ``[0, K)``; returns them as int32.

  Raises:
    ValueError: not integers, wrong shape, or values outside ``[0, num_embeddings)``.
  """
  codes = np.asarray(codes)
  k, expected = num_embeddings, tuple(latent_shape)
  if not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(f"codes: expected integers in [0, {k}), got dtype {codes.dtype}")
  if codes.ndim != 1 + len(expected) or tuple(codes.shape[1:]) != expected:
    raise ValueError(f"codes: expected shape [B{''.join(', ' + str(s) for s in expected)}], "
                     f"got {codes.shape}")
  if codes.size and (codes.min() < 0 or codes.max() >= k):
    raise ValueError(f"codes: expected integers in [0, {k}), got values in "
                     f"[{codes.min()}, {codes.max()}]")
  return codes.astype(np.int32)
