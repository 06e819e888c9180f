"""Writing decoded images: one file per image, never over a file unasked, never over an input.

Each image gets the name of its source file, flattened (``sub/b.jpg`` -> ``sub_b.png``), or
its index (``000007.png``). Names that would collide (``a.png`` and ``a.jpg``; ``sub/b.png``
and ``sub_b.png``; ``A.png`` and ``a.png`` on a case-insensitive disk) are told apart by a
``-2``, ``-3``... suffix. Written images carry a PNG text chunk ``vqzoo: decoded``, so a file
without it is the user's: overwriting one needs ``overwrite``, and one named like a source
image of the codes (the folder that was encoded) is never overwritten.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, PngImagePlugin

MARK = ("vqzoo", "decoded")


def file_names(names: Sequence[str] | None, count: int
               ) -> tuple[list[str], list[tuple[str, str]]]:
  """``count`` distinct ``.png`` names, and ``(source name, the name it got)`` for each
  renamed one. A source already named so (``a.png``) keeps its name; of the others that share
  one, the first keeps it."""
  sources = [str(names[i]) if names is not None else str(i) for i in range(count)]
  natural = [f"{_flat(s) if names is not None else ''}" or f"{i:06d}" for i, s in
             enumerate(sources)]
  natural = [f"{stem}.png" for stem in natural]
  taken = {n.casefold() for n in natural}
  out: list[str | None] = [None] * count
  claimed: set[str] = set()
  exact_first = sorted(range(count), key=lambda i: natural[i] != sources[i])
  for i in exact_first:
    if natural[i].casefold() not in claimed:
      out[i] = natural[i]
      claimed.add(natural[i].casefold())
  renamed = []
  for i in range(count):
    if out[i] is None:
      stem, k = natural[i][:-len(".png")], 2
      while f"{stem}-{k}.png".casefold() in taken:
        k += 1
      out[i] = f"{stem}-{k}.png"
      taken.add(out[i].casefold())
      renamed.append((sources[i], out[i]))
  return out, renamed


def _flat(name: str) -> str:
  """``sub/b.jpg`` -> ``sub_b``; the extension goes, separators become ``_``."""
  parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
  flat = "_".join(parts)
  stem, ext = os.path.splitext(flat)
  return stem if stem and ext else flat


def is_decoded(path: str | os.PathLike) -> bool:
  """Whether ``path`` is an image this module wrote."""
  try:
    with Image.open(path) as image:
      return image.info.get(MARK[0]) == MARK[1]
  except (OSError, ValueError, Image.DecompressionBombError):
    return False


def check_targets(paths: Sequence[Path], names: Sequence[str] | None, overwrite: bool) -> None:
  """Refuses to write over existing files (unless ``overwrite``) and over source images.

  Args:
    paths: the files about to be written.
    names: the source file names the codes carry (relative to the folder that was encoded).
    overwrite: replace existing files (except source images).

  Raises:
    FileExistsError: naming the first files in the way and what to do.
  """
  existing = [p for p in paths if os.path.lexists(p)]
  if not existing:
    return
  sources = {str(n) for n in names} if names is not None else set()
  inputs = [p for p in existing if p.name in sources and not is_decoded(p)]
  if inputs:
    raise FileExistsError(
        f"{inputs[0].parent}: holds {_some(inputs)}, named like the images these codes were "
        "made from, so it looks like the folder that was encoded; decoding never writes over "
        "them: expected another --out folder")
  if not overwrite:
    raise FileExistsError(f"{existing[0].parent}: holds {_some(existing)}, which decoding would "
                          "overwrite; expected a new or empty --out, or --overwrite")


def _some(paths: Sequence[Path]) -> str:
  shown = ", ".join(p.name for p in paths[:3])
  return f"{len(paths)} such files ({shown}{', ...' if len(paths) > 3 else ''})"


def png_bytes(image: np.ndarray) -> bytes:
  """A uint8 ``[H, W, C]`` image as PNG bytes carrying the ``vqzoo: decoded`` mark."""
  info = PngImagePlugin.PngInfo()
  info.add_text(*MARK)
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      buffer, format="PNG", pnginfo=info)
  return buffer.getvalue()
