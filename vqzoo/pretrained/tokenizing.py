"""A VQ-VAE as a tokenizer: images to codes on disk, and codes back to images.

A codes file is an ``.npz`` (no pickle) holding ``codes`` ``[N, *latent]`` int32 and, when
known, ``labels`` ``[N]`` int32 and ``names`` ``[N]`` (source file names), plus ``model`` (the
model spec it was encoded with), ``codec_sha256`` (the digest of that model's ``config.json``
and ``model.safetensors``: decoding with another model is refused) and ``format``.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Sequence

import numpy as np

from vqzoo.io import atomic_write_bytes
from vqzoo.pretrained.integrity import IntegrityError

FORMAT = "vqzoo-codes-1"


def codec_digest(model: Any) -> str:
  """The digest that identifies a model's encoder/decoder (``source["codec_sha256"]``)."""
  digest = model.source.get("codec_sha256")
  if digest is None:
    raise ValueError("this model was not loaded from files, so its codes cannot be tied to it; "
                     "save it with save_pretrained and load it back first")
  return digest


def encode_to_file(model: Any, model_spec: str, images: np.ndarray, out: str | os.PathLike,
                   labels: np.ndarray | None = None, names: Sequence[str] | None = None,
                   batch_size: int = 1000, progress: bool = True,
                   conversion: dict[str, Any] | None = None) -> dict[str, Any]:
  """Encodes ``images`` ``[N, H, W(, C)]`` in batches and writes a codes file atomically.

  ``conversion`` (``{"convert", "resize"}`` of image files, see :mod:`vqzoo.image_folder`)
  is stored in the file and in the summary when given.

  Returns:
    A summary: ``{"out", "images", "codes_shape", "codes_used", "codec_sha256"}``.
  """
  from tqdm.auto import tqdm
  digest = codec_digest(model)
  parts = [model.encode(images[i:i + batch_size]) for i in tqdm(
      range(0, len(images), batch_size), disable=not progress, desc="encode", unit="batch")]
  codes = np.concatenate(parts).astype(np.int32)
  arrays: dict[str, np.ndarray] = {"codes": codes, "model": np.asarray(model_spec),
                                   "codec_sha256": np.asarray(digest),
                                   "format": np.asarray(FORMAT)}
  if labels is not None:
    arrays["labels"] = np.asarray(labels, np.int32)
  if names is not None:
    arrays["names"] = np.asarray([str(n) for n in names])
  if conversion is not None:
    arrays["conversion"] = np.asarray(json.dumps(conversion, sort_keys=True))
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  atomic_write_bytes(out, buffer.getvalue())
  return {"out": os.fspath(out), "images": int(len(codes)), "codes_shape": list(codes.shape),
          "codes_used": int(len(np.unique(codes))), "codec_sha256": digest,
          **({"conversion": conversion} if conversion is not None else {})}


def read_codes(path: str | os.PathLike) -> dict[str, Any]:
  """A codes file -> ``{"codes", "labels"?, "names"?, "model", "codec_sha256"}``.

  Raises:
    ValueError: not a vqzoo codes file, or a truncated, empty or inconsistent one (see
      :mod:`vqzoo.pretrained.codes_file`).
  """
  from vqzoo.pretrained import codes_file
  return codes_file.read(path, FORMAT)


def decode_file(model: Any, path: str | os.PathLike, batch_size: int = 1000,
                progress: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
  """Decodes a codes file with ``model`` -> ``([N, H, W, C] float32 images, the file's content)``.

  Raises:
    IntegrityError: the codes were made by another model (its digest differs).
  """
  from tqdm.auto import tqdm
  content = read_codes(path)
  digest = codec_digest(model)
  if content["codec_sha256"] != digest:
    raise IntegrityError(f"refusing {path}: its codes were made by {content['model']} (codec "
                         f"sha256 {content['codec_sha256']}), not by this model ({digest})")
  codes = content["codes"]
  parts = [model.decode(codes[i:i + batch_size]) for i in tqdm(
      range(0, len(codes), batch_size), disable=not progress, desc="decode", unit="batch")]
  return np.concatenate(parts), content
