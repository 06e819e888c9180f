"""A folder of PNG/JPEG images as a uint8 array, converted to a model's input shape.

The rule (also in ``vqzoo finetune --help``): every ``*.png``, ``*.jpg`` and
``*.jpeg`` regular file under the folder (recursively, sorted by path) is opened
read-only and decoded only if its header says it has at most
:data:`MAX_IMAGE_PIXELS` pixels (4096 x 4096; checked before any pixel is
decoded, so decompression bombs cost nothing). The format is judged by content:
only PNG and JPEG decoders are tried. 16-bit grayscale PNGs are scaled to 8
bits (``value >> 8``) rather than saturated. Each image is converted to grayscale
(``L``) for 1-channel models or RGB for 3-channel models (alpha is dropped)
and resized to the model's H x W with bilinear filtering, ignoring aspect
ratio.

Skipped, each listed with its reason in one warning: files that are not
PNG/JPEG, that fail to decode or that are too large; entries that are not
regular files (FIFOs, sockets, devices, dangling symlinks, directories named
like images); symlinks that resolve outside the folder; symlinks to
directories (never followed); and unreadable subdirectories. Symlinks to files
inside the folder are read. The folder is never modified.

:func:`open_image` (one file, same conversion and limits) also reads
``vqzoo reconstruct --input``.
"""

from __future__ import annotations

import os
import stat
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_FORMATS = ("PNG", "JPEG")  # PIL formats tried; a renamed TIFF, GIF, ... is refused
MAX_IMAGE_PIXELS = 4096 * 4096  # 16,777,216 pixels; larger images are refused unread
FOLDER_RULE = ("PNG/JPEG files under DIR (recursive; symlinks only to files inside DIR) are "
               "converted to grayscale for 1-channel models or RGB for 3-channel models (16-bit "
               "PNGs scaled to 8 bits) and resized to the model's HxW (bilinear, aspect ratio "
               f"not kept); images over {MAX_IMAGE_PIXELS:,} pixels (4096x4096), unreadable or "
               "non-image files, and entries that are not regular files are skipped with one "
               "warning; the folder is never modified")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# What PIL can raise for a corrupt file whose header looked fine (beyond OSError / ValueError).
_DECODE_ERRORS = (SyntaxError, EOFError, IndexError, struct.error, zlib.error)


def _file_kind(mode: int) -> str:
  for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                     (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                     (stat.S_ISBLK, "a block device")):
    if test(mode):
      return kind
  return "a special file"


def _open_regular(path: Path):
  """Opens ``path`` read-only as a binary file object, refusing anything but a regular file.

  ``O_NONBLOCK`` keeps a FIFO from blocking the open; the type check is on the
  open descriptor, so the file cannot be swapped between check and read.
  """
  fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
  try:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
      raise ValueError(f"{path}: {_file_kind(mode)}, not a regular file")
    return os.fdopen(fd, "rb")
  except BaseException:
    os.close(fd)
    raise


def open_image(path: str | os.PathLike, mode: str, size: tuple[int, int] | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
  """Decodes one PNG/JPEG file -> ``[H, W, C]`` uint8 in ``mode`` (``"L"`` or ``"RGB"``).

  Only the header is read before the size check, so an image that claims more
  than ``max_pixels`` pixels (a decompression bomb) costs nothing. 16-bit
  grayscale (``I;16`` or ``I``) is scaled to 8 bits with ``value >> 8`` rather
  than saturated; alpha is dropped.

  Args:
    path: the image file.
    mode: ``"L"`` (grayscale, C = 1) or ``"RGB"`` (C = 3).
    size: ``(width, height)`` to resize to (bilinear, aspect ratio not kept);
      ``None`` keeps the file's size.
    max_pixels: largest ``width * height`` decoded.

  Raises:
    ValueError: not a regular file, or more than ``max_pixels`` pixels.
    OSError: unreadable, not a PNG/JPEG (``PIL.UnidentifiedImageError``), or
      corrupt pixel data.
  """
  from PIL import Image, UnidentifiedImageError

  if mode not in ("L", "RGB"):
    raise ValueError(f"mode: expected 'L' or 'RGB', got {mode!r}")
  path = Path(path)
  with _open_regular(path) as f:
    try:
      with warnings.catch_warnings():  # PIL's own bomb warning is an error here
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(f, formats=IMAGE_FORMATS)
    except UnidentifiedImageError as e:
      raise UnidentifiedImageError(f"{path}: not a PNG/JPEG image PIL can read") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
      raise ValueError(f"{path}: image too large to decode, refused as a possible "
                       f"decompression bomb (limit {max_pixels:,} pixels; {e})") from e
    with im:
      width, height = im.size
      if width * height > max_pixels:
        raise ValueError(f"{path}: image too large to decode ({width}x{height} = "
                         f"{width * height:,} pixels; limit {max_pixels:,} pixels)")
      try:
        if im.mode in _SIXTEEN_BIT_MODES:
          wide = np.asarray(im).astype(np.int64)
          im = Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8))  # mode L
        im = im.convert(mode)
        if size is not None and im.size != tuple(size):
          im = im.resize(tuple(size), Image.BILINEAR)
        array = np.asarray(im, dtype=np.uint8)
      except (OSError, *_DECODE_ERRORS) as e:  # truncated, corrupt or unreadable pixel data
        raise OSError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
  return array.reshape(array.shape[0], array.shape[1], 1 if mode == "L" else 3)


def _scan(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
  """Walks ``folder`` without following directory symlinks.

  Returns:
    ``(candidate files, [(path, reason skipped)])``; candidates are regular
    files, or symlinks to regular files inside the folder.
  """
  root = folder.resolve()
  files, skipped = [], []

  def on_error(e: OSError) -> None:
    skipped.append((Path(e.filename or folder), f"unreadable directory: {e.strerror or e}"))

  for dirpath, dirnames, filenames in os.walk(folder, onerror=on_error, followlinks=False):
    for name in dirnames + filenames:
      path = Path(dirpath, name)
      try:
        own = os.lstat(path)
      except OSError as e:
        skipped.append((path, f"cannot stat: {e.strerror or e}"))
        continue
      if stat.S_ISDIR(own.st_mode):  # os.walk descends into it
        if path.suffix.lower() in IMAGE_SUFFIXES:
          skipped.append((path, "a directory, not an image file"))
        continue
      if stat.S_ISLNK(own.st_mode):
        try:
          target = path.resolve(strict=True)
          info = os.stat(target)
        except FileNotFoundError:
          skipped.append((path, "dangling symlink"))
          continue
        except (OSError, RuntimeError) as e:  # a symlink loop, a permission error
          skipped.append((path, f"unresolvable symlink: {e}"))
          continue
        if not target.is_relative_to(root):
          skipped.append((path, f"symlink to {target}, outside the folder"))
          continue
        if stat.S_ISDIR(info.st_mode):
          skipped.append((path, "symlink to a directory, not followed"))
          continue
      else:
        info = own
      if not stat.S_ISREG(info.st_mode):
        skipped.append((path, f"{_file_kind(info.st_mode)}, not a regular file"))
      elif path.suffix.lower() not in IMAGE_SUFFIXES:
        skipped.append((path, "not a PNG/JPEG"))
      else:
        files.append(path)
  return files, skipped


def load_image_folder(folder: str | os.PathLike, image_shape) -> tuple[np.ndarray, list[str]]:
  """Reads every image under ``folder`` -> ``([N, H, W, C] uint8, list of their paths)``.

  Follows the module docstring's rule; every skipped entry is counted and
  listed, with its reason, in one ``UserWarning``.

  Raises:
    FileNotFoundError: ``folder`` does not exist or is not a directory.
    ValueError: no readable image in the folder.
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"image folder {folder} does not exist or is not a directory")
  h, w, c = image_shape
  if c not in (1, 3):
    raise ValueError(f"image folders feed 1- or 3-channel models, this one has {c} channels")
  mode = "L" if c == 1 else "RGB"
  files, skipped = _scan(folder)
  images, paths = [], []
  for path in sorted(files):
    try:
      images.append(open_image(path, mode, size=(w, h)))
    except (OSError, ValueError) as e:
      why = str(e).removeprefix(f"{path}: ")
      skipped.append((path, why if why != str(e) else f"{type(e).__name__}: {e}"))
      continue
    paths.append(str(path))
  if skipped:
    warnings.warn(f"skipped {len(skipped)} unreadable, too large, non-image or non-regular "
                  f"entr{'y' if len(skipped) == 1 else 'ies'} in {folder}: "
                  + "; ".join(f"{p} ({why})" for p, why in sorted(skipped)), stacklevel=2)
  if not images:
    raise ValueError(f"image folder {folder} holds no readable PNG/JPEG image "
                     f"({len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} skipped)")
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
