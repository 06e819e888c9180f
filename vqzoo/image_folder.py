"""A folder of PNG/JPEG images as a uint8 array in a model's input shape.

The rule (also in ``vqzoo finetune --help``): every ``*.png``, ``*.jpg`` and
``*.jpeg`` regular file under the folder (recursively, sorted by path) is opened
read-only and decoded only if its header says it has at most
:data:`MAX_IMAGE_PIXELS` pixels (4096 x 4096; checked before any pixel is
decoded, so decompression bombs cost nothing). The format is judged by content:
only PNG and JPEG decoders are tried.

The model's image shape decides. A file counts as grey if its PIL mode is one of
:data:`GREY_MODES` (``1``, ``L``, ``LA``, ``I``, ``I;16*``) and as colour
otherwise (``RGB``, ``RGBA``, ``P``, ``PA``, ``CMYK``, ``YCbCr``). A file whose
kind matches the model's channels (grey for 1, colour for 3) and whose size is
the model's H x W is read as is: alpha is dropped, a palette is expanded to RGB
and 16-bit grey is scaled to 8 bits (``value >> 8``) rather than saturated. Any
other file is an error naming it, unless conversion is asked for:
``convert="grey"`` (``--convert grey``, for 1-channel models) turns colour into
grey (PIL's ``L``, ITU-R 601-2 luma) and ``convert="rgb"`` (``--convert rgb``,
for 3-channel models) copies grey into three channels; ``resize=True``
(``--resize``) resizes to the model's H x W with bilinear filtering, ignoring
aspect ratio. A ``convert`` that names the other channel count is an error.

Skipped, each listed with its reason in one warning: files that are not
PNG/JPEG, that fail to decode or that are too large; entries that are not
regular files (FIFOs, sockets, devices, dangling symlinks, directories named
like images); symlinks that resolve outside the folder; symlinks to
directories (never followed); and unreadable subdirectories. Symlinks to files
inside the folder are read. The folder is never modified.

:func:`read_image` (one file, the same rule and limits) reads
``vqzoo reconstruct --input``; :func:`open_image` is the decoder beneath both,
converting to whatever mode it is given.
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
FOLDER_RULE = ("PNG/JPEG files under DIR (recursive; symlinks only to files inside DIR) must "
               "match the model's image shape: grey files (PIL modes 1, L, LA, I, I;16) for "
               "1-channel models, colour files (RGB, RGBA, P) for 3-channel models, at the "
               "model's HxW (alpha dropped, 16-bit PNGs scaled to 8 bits); any other file is an "
               "error unless --convert grey|rgb converts its channels and --resize resizes it "
               "(bilinear, aspect ratio not kept); images over "
               f"{MAX_IMAGE_PIXELS:,} pixels (4096x4096), unreadable or "
               "non-image files, and entries that are not regular files are skipped with one "
               "warning; the folder is never modified")
CONVERSIONS = ("grey", "rgb")  # ``convert=`` values; "grey" feeds 1-channel models, "rgb" 3
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N")


class ImageMismatchError(ValueError):
  """An image file whose size or channel kind differs from the model's, with no flag to convert."""

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

  The low-level decoder: it converts to ``mode`` and resizes to ``size`` whatever
  the file holds. :func:`read_image` applies the image rule of the module
  docstring on top. Only the header is read before the size check, so an image
  that claims more than ``max_pixels`` pixels (a decompression bomb) costs
  nothing. 16-bit grayscale (``I;16`` or ``I``) is scaled to 8 bits with
  ``value >> 8`` rather than saturated; alpha is dropped.

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
  return _decode(path, mode, size, max_pixels)


def _decode(path, mode: str, size, max_pixels: int, check=None) -> np.ndarray:
  """:func:`open_image`, calling ``check(file_mode, (width, height))`` before any pixel."""
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
      if check is not None:
        check(im.mode, (width, height))
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


def _model_mode(image_shape, convert: str | None) -> str:
  """The PIL mode a model of ``image_shape`` reads; checks ``convert`` against it."""
  channels = image_shape[-1]
  if channels not in (1, 3):
    raise ValueError(f"image files feed 1- or 3-channel models, this one has {channels} "
                     "channels")
  if convert not in (None, *CONVERSIONS):
    raise ValueError(f"convert: expected 'grey', 'rgb' or None, got {convert!r}")
  wanted = "grey" if channels == 1 else "rgb"
  if convert is not None and convert != wanted:
    raise ValueError(f"--convert {convert}: the model reads {channels}-channel "
                     f"({'grey' if channels == 1 else 'colour'}) images; expected "
                     f"--convert {wanted} (convert={wanted!r})")
  return "L" if channels == 1 else "RGB"


def conversion_record(convert: str | None = None, resize: bool = False) -> dict:
  """What cards, lineages and codes files record of a conversion: ``{"convert", "resize"}``."""
  return {"convert": convert, "resize": bool(resize)}


def conversion_section(record: dict | None, image_shape) -> dict[str, str]:
  """A card section saying how image files were converted; empty when none was asked for."""
  if not record or not (record.get("convert") or record.get("resize")):
    return {}
  h, w, _ = image_shape
  done = []
  if record.get("convert"):
    done.append(f"files of the other channel kind converted to {record['convert']} "
                f"(`--convert {record['convert']}`)")
  if record.get("resize"):
    done.append(f"files of another size resized to {h}x{w}, bilinear, aspect ratio not kept "
                "(`--resize`)")
  return {"Image conversion": "The training images were read from files: "
                              + "; ".join(done) + "."}


def read_image(path: str | os.PathLike, image_shape, convert: str | None = None,
               resize: bool = False, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
  """Reads one PNG/JPEG file for a model of ``image_shape`` -> ``[H, W, C]`` uint8.

  The module docstring's rule: a file whose channel kind or size differs from
  the model's is an error unless ``convert`` / ``resize`` ask for conversion.

  Args:
    path: the image file.
    image_shape: the model's ``(H, W, C)``, C 1 or 3.
    convert: ``"grey"`` (1-channel models) or ``"rgb"`` (3-channel models) to
      convert a file of the other kind; ``None`` refuses one.
    resize: resize a file of another size to H x W (bilinear); ``False``
      refuses one.
    max_pixels: largest ``width * height`` decoded.

  Raises:
    ImageMismatchError: the file differs from the model and no flag converts it.
    ValueError: a bad ``convert``, not a regular file, or too many pixels.
    OSError: unreadable, not a PNG/JPEG, or corrupt pixel data.
  """
  h, w, c = image_shape
  mode = _model_mode(image_shape, convert)
  path = Path(path)

  def check(file_mode: str, file_size: tuple[int, int]) -> None:
    grey = file_mode in GREY_MODES
    flags = []
    if grey != (c == 1) and convert is None:
      flags.append(f"--convert {'grey' if c == 1 else 'rgb'} to convert its channels")
    if tuple(file_size) != (w, h) and not resize:
      flags.append("--resize to resize it")
    if flags:
      raise ImageMismatchError(
          f"{path}: a {file_size[1]}x{file_size[0]} {file_mode} ({'grey' if grey else 'colour'})"
          f" image, but the model reads {h}x{w} {'grey' if c == 1 else 'colour'} ({c}-channel) "
          f"images; pass {' and '.join(flags)}")

  return _decode(path, mode, (w, h), max_pixels, check)


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


def load_image_folder(folder: str | os.PathLike, image_shape, convert: str | None = None,
                      resize: bool = False) -> tuple[np.ndarray, list[str]]:
  """Reads every image under ``folder`` -> ``([N, H, W, C] uint8, list of their paths)``.

  Follows the module docstring's rule (each file as :func:`read_image` reads it);
  every skipped entry is counted and listed, with its reason, in one
  ``UserWarning``.

  Args:
    folder: the image folder.
    image_shape: the model's ``(H, W, C)``, C 1 or 3.
    convert: ``"grey"`` or ``"rgb"`` to convert files of the other channel kind.
    resize: resize files of another size to the model's H x W.

  Raises:
    FileNotFoundError: ``folder`` does not exist or is not a directory.
    ImageMismatchError: a file differs from the model's shape and no flag converts
      it (the message names the first such file and counts the others).
    ValueError: no readable image in the folder, or a bad ``convert``.
  """
  folder = Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"image folder {folder} does not exist or is not a directory")
  _model_mode(image_shape, convert)
  files, skipped = _scan(folder)
  images, paths, mismatched = [], [], []
  for path in sorted(files):
    try:
      images.append(read_image(path, image_shape, convert, resize))
    except ImageMismatchError as e:
      mismatched.append(e)
      continue
    except (OSError, ValueError) as e:
      why = str(e).removeprefix(f"{path}: ")
      skipped.append((path, why if why != str(e) else f"{type(e).__name__}: {e}"))
      continue
    paths.append(str(path))
  if mismatched:
    more = len(mismatched) - 1
    raise ImageMismatchError(f"{mismatched[0]}" + (
        f" ({more} more file{'' if more == 1 else 's'} in {folder} differ{'s' if more == 1 else ''}"
        " too)" if more else ""))
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
