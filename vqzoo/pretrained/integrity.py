"""Integrity checks: a file's bytes against the sha256 they are pinned to."""

from __future__ import annotations

import hashlib
import os


class IntegrityError(ValueError):
  """A file whose sha256 differs from its pin (corrupt, truncated or altered)."""


def verify_sha256_bytes(data: bytes, expected: str | None, name: str | os.PathLike) -> str:
  """Returns ``data``'s sha256; raises :class:`IntegrityError` if it is not ``expected``."""
  actual = hashlib.sha256(data).hexdigest()
  if expected is not None and actual != expected:
    raise IntegrityError(f"refusing {name}: sha256 is {actual}, expected {expected} "
                         "(the file is corrupt or was altered)")
  return actual
