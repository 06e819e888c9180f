"""Reading a codes file (``vqzoo encode``'s ``.npz``) with an error that says what is wrong.

A codes file is a zip (``.npz``, no pickle) of ``codes`` ``[N, *latent]`` integers with
``N >= 1``, ``model``, ``codec_sha256`` and ``format``, and optionally ``labels`` ``[N]``
integers, ``names`` ``[N]`` strings (file names, without NUL bytes) and ``conversion``, a
JSON string ``{"convert", "resize"}`` saying how image files were converted (see
:mod:`vqzoo.image_folder`).
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

EXPECTED = "expected a codes file written by `vqzoo encode`"
_SIGNATURES = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image",
               b"\x93NUMPY": "a .npy array", b"GIF8": "a GIF image"}


def _kind(head: bytes) -> str | None:
  return next((kind for sig, kind in _SIGNATURES.items() if head.startswith(sig)), None)


def _arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
  with open(path, "rb") as f:
    head = f.read(8)
  if not head.startswith(b"PK"):
    what = _kind(head) or ("an empty file" if not head else "not a zip (.npz) archive")
    raise ValueError(f"{path}: is {what}; {EXPECTED} (an .npz)")
  try:
    with np.load(path, allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise ValueError(f"{path}: is truncated or corrupt ({type(e).__name__}: {e}); {EXPECTED}, "
                     "complete") from None
  except ValueError as e:  # an object array: np.load refuses pickled data
    raise ValueError(f"{path}: holds an array of Python objects, which a codes file never "
                     f"does ({e.__class__.__name__}); {EXPECTED}") from None


def _check(path: str | os.PathLike, content: dict[str, np.ndarray]) -> None:
  codes = content["codes"]
  if not np.issubdtype(codes.dtype, np.integer) or codes.ndim < 1:
    raise ValueError(f"{path}: its codes are {codes.dtype} of shape {codes.shape}; expected "
                     "integers [N, *latent]")
  if len(codes) == 0:
    raise ValueError(f"{path}: holds no codes (0 images); expected the codes of at least one "
                     "image")
  for key in ("labels", "names"):
    if key in content and content[key].shape != (len(codes),):
      raise ValueError(f"{path}: holds {len(codes)} codes but {key} of shape "
                       f"{content[key].shape}; expected one {key[:-1]} per image ({len(codes)})")
  if "labels" in content and not np.issubdtype(content["labels"].dtype, np.integer):
    raise ValueError(f"{path}: its labels are {content['labels'].dtype}; expected integers")
  if "names" in content:
    if content["names"].dtype.kind != "U":
      raise ValueError(f"{path}: its names are {content['names'].dtype}; expected strings")
    for i, name in enumerate(content["names"]):
      if "\0" in str(name):
        raise ValueError(f"{path}: name {i} ({str(name)!r}) holds a NUL byte; expected file "
                         "names, which never do")


def read(path: str | os.PathLike, fmt: str) -> dict[str, Any]:
  """A codes file -> ``{"codes", "labels"?, "names"?, "conversion"?, "model", "codec_sha256"}``.

  Raises:
    ValueError: not a codes file of format ``fmt``, truncated, empty, or its names or labels
      do not match its codes (the message says which).
    OSError: the file cannot be read.
  """
  content = _arrays(path)
  if str(content.get("format", "")) != fmt or "codes" not in content:
    raise ValueError(f"{path}: not a vqzoo codes file (expected format {fmt!r})")
  _check(path, content)
  out = {"codes": content["codes"], "model": str(content.get("model", "")),
         "codec_sha256": str(content.get("codec_sha256", ""))}
  for key in ("labels", "names"):
    if key in content:
      out[key] = content[key]
  if "conversion" in content:
    try:
      out["conversion"] = json.loads(str(content["conversion"]))
    except ValueError as e:
      raise ValueError(f"{path}: its conversion record is not JSON ({e})") from e
  return out
