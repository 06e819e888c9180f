"""Integrity checks: files against the digests they are pinned to, and bounded reads.

A model is an *artifact*: the files that change its behaviour (:data:`ARTIFACT_FILES`). Its
pin is the sha256 of a manifest, the canonical JSON ``{file name: sha256 of its bytes}``
(:func:`manifest_digest`), so one digest covers every file; the zoo's registry keeps the
per-file digests too, so an error can name the file that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from typing import Mapping

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PRIOR_CONFIG_NAME = "prior.json"
PRIOR_WEIGHTS_NAME = "prior.safetensors"
ARTIFACT_FILES = (CONFIG_NAME, WEIGHTS_NAME)  # the model card is documentation, not behaviour
PRIOR_FILES = (PRIOR_CONFIG_NAME, PRIOR_WEIGHTS_NAME)  # part of the artifact when present
MAX_BYTES = {CONFIG_NAME: 1 << 20, WEIGHTS_NAME: 1 << 31, CARD_NAME: 1 << 22,
             PRIOR_CONFIG_NAME: 1 << 20, PRIOR_WEIGHTS_NAME: 1 << 31}


class IntegrityError(ValueError):
  """A file whose digest differs from its pin (corrupt, truncated or altered)."""


def sha256_bytes(data: bytes) -> str:
  """Hex sha256 of ``data``."""
  return hashlib.sha256(data).hexdigest()


def verify_sha256_bytes(data: bytes, expected: str | None, name: str | os.PathLike) -> str:
  """Returns ``data``'s sha256; raises :class:`IntegrityError` if it is not ``expected``."""
  actual = sha256_bytes(data)
  if expected is not None and actual != expected:
    raise IntegrityError(f"refusing {name}: sha256 is {actual}, expected {expected} "
                         "(the file is corrupt or was altered)")
  return actual


def manifest_digest(digests: Mapping[str, str]) -> str:
  """sha256 of the canonical JSON of ``{file name: sha256}``: one pin for a whole artifact."""
  canonical = json.dumps(dict(sorted(digests.items())), separators=(",", ":"), sort_keys=True)
  return sha256_bytes(canonical.encode())


def git_blob_sha1(data: bytes) -> str:
  """The git object id of ``data`` (what the Hub's ETag is for a file not stored in LFS)."""
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def verify_hub_blob(data: bytes, path: str | os.PathLike, filename: str) -> None:
  """Checks bytes from the Hub cache against the object id the Hub announced for them.

  ``huggingface_hub`` names each cache blob by the file's ETag: the sha256 for LFS files, the
  git blob sha1 for others. Bytes that do not hash to their blob's name were altered in the
  cache or in transit.

  Raises:
    IntegrityError: the bytes do not match the announced id.
  """
  blob = os.path.basename(os.path.realpath(path))
  if re.fullmatch(r"[0-9a-f]{64}", blob):
    actual, kind = sha256_bytes(data), "sha256"
  elif re.fullmatch(r"[0-9a-f]{40}", blob):
    actual, kind = git_blob_sha1(data), "git blob id"
  else:
    return  # not a content-addressed blob: nothing was announced to check against
  if actual != blob:
    raise IntegrityError(f"refusing {filename} from the Hub: its {kind} is {actual}, but the Hub "
                         f"announced {blob} (altered in the cache or in transit)")


def read_bounded(path: str | os.PathLike, name: str) -> bytes:
  """Reads a regular file of at most ``MAX_BYTES[name]`` bytes (checked before reading).

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a regular file (a device, FIFO, directory), or larger than the limit.
  """
  limit = MAX_BYTES.get(name, 1 << 31)
  info = os.stat(path)
  if not stat.S_ISREG(info.st_mode):
    raise ValueError(f"{path}: expected a regular file, got a "
                     f"{'directory' if stat.S_ISDIR(info.st_mode) else 'special file'}")
  if info.st_size > limit:
    raise ValueError(f"{path}: {info.st_size} bytes, more than the {limit} bytes a vqzoo "
                     f"{name} may have")
  with open(path, "rb") as f:
    data = f.read(limit + 1)
  if len(data) > limit:
    raise ValueError(f"{path}: more than the {limit} bytes a vqzoo {name} may have")
  return data
