"""Serialization: params and state <-> one flat safetensors file (``/``-joined keys, float32).

Keys are ``params/<module>/<name>`` and ``state/<module>/<name>``; haiku module
paths already use ``/`` and ``~``, which safetensors keys allow.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from vqzoo.io import atomic_write_bytes

SEP = "/"


def flatten(tree: Mapping[str, Mapping[str, Any]], prefix: str) -> dict[str, np.ndarray]:
  """Two-level haiku mapping -> ``{prefix/module/name: array}``."""
  flat = {}
  for module, leaves in tree.items():
    for name, value in leaves.items():
      flat[SEP.join((prefix, module, name))] = np.asarray(jax.device_get(value))
  return flat


def unflatten(flat: Mapping[str, np.ndarray], prefix: str) -> dict[str, dict[str, np.ndarray]]:
  """Inverse of :func:`flatten` for the keys under ``prefix``."""
  tree: dict[str, dict[str, np.ndarray]] = {}
  for key, value in flat.items():
    head, _, rest = key.partition(SEP)
    if head != prefix:
      continue
    module, _, name = rest.rpartition(SEP)
    tree.setdefault(module, {})[name] = value
  return tree


def to_bytes(params, state, extra: Mapping[str, np.ndarray] | None = None,
             metadata: Mapping[str, str] | None = None) -> bytes:
  """Serialises params and state (and optional extra arrays) to safetensors bytes."""
  flat = {**flatten(params, "params"), **flatten(state, "state"), **(extra or {})}
  return st_save(flat, metadata=dict(metadata or {}))


def from_bytes(data: bytes):
  """safetensors bytes -> ``(params, state, flat)``."""
  flat = st_load(data)
  return unflatten(flat, "params"), unflatten(flat, "state"), flat


def parse_weights(data: bytes, where: str) -> tuple[dict, dict]:
  """Weights file bytes -> ``(params, state)``.

  Raises:
    ValueError: not a safetensors file (truncated, empty, pickle, npz, ...), naming ``where``.
  """
  try:
    params, state, _ = from_bytes(data)
  except Exception as e:  # safetensors raises its own SafetensorError for every bad file
    raise ValueError(f"{where}: not a readable safetensors weights file "
                     f"({type(e).__name__}: {e})") from None
  return params, state


def save(path: str | os.PathLike, params, state, metadata: Mapping[str, str] | None = None):
  """Atomically writes ``model.safetensors`` holding params and state."""
  return atomic_write_bytes(path, to_bytes(params, state, metadata=metadata))


def load(path: str | os.PathLike):
  """Reads a file written by :func:`save` -> ``(params, state)``."""
  with open(path, "rb") as f:
    params, state, _ = from_bytes(f.read())
  return params, state


def check_values(expected: Any, got: Any, what: str) -> None:
  """Raises ``ValueError`` unless every array of ``got`` has ``expected``'s dtype and is finite."""
  for module, leaves in got.items():
    for name, value in leaves.items():
      want = np.dtype(expected[module][name].dtype)  # check_structure ran first: keys match
      array = np.asarray(value)
      if array.dtype != want:
        raise ValueError(f"{what}: {module}/{name}: expected dtype {want}, got {array.dtype}")
      if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: {module}/{name}: expected finite numbers, found NaN or Inf")


def check_structure(expected, got, what: str) -> None:
  """Raises ``ValueError`` naming missing/extra/mis-shaped entries of ``got``."""
  exp = {(m, n): np.shape(v) for m, d in expected.items() for n, v in d.items()}
  have = {(m, n): np.shape(v) for m, d in got.items() for n, v in d.items()}
  missing = sorted(set(exp) - set(have))
  extra = sorted(set(have) - set(exp))
  shapes = sorted(k for k in set(exp) & set(have) if exp[k] != have[k])
  if missing or extra or shapes:
    detail = []
    if missing:
      detail.append(f"missing {['/'.join(k) for k in missing]}")
    if extra:
      detail.append(f"unexpected {['/'.join(k) for k in extra]}")
    if shapes:
      detail.append("shape mismatch " + ", ".join(
          f"{'/'.join(k)}: expected {exp[k]}, got {have[k]}" for k in shapes))
    raise ValueError(f"{what} do not match the config: " + "; ".join(detail))
