"""JAX's persistent compilation cache for vqzoo's own entry points.

A training step takes 20-40 s to compile on a 2-core CPU; with the cache, a second run of the
same command loads it in a few seconds. :func:`enable` is called by the ``vqzoo`` command and
the scripts in ``scripts/``, whose processes are vqzoo's alone. The library never calls it: the
cache is process-wide in JAX, and a user's own JAX code keeps the settings the user chose.

The cache lives in ``$VQZOO_CACHE/jax`` (default ``~/.cache/vqzoo/jax``), beside vqzoo's
dataset cache, bounded to :data:`MAX_BYTES` (least recently used entries are evicted). JAX
writes its entries atomically and locks the directory for eviction, so several processes may
share it. ``VQZOO_COMPILATION_CACHE=0`` turns it off; a cache directory set through JAX's own
``JAX_COMPILATION_CACHE_DIR`` (or ``jax.config``) is used as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

MAX_BYTES = 2 << 30  # 2 GiB
MIN_COMPILE_SECONDS = 0.5  # smaller compiles are not worth a file


def cache_path() -> Path:
  """Where :func:`enable` puts the cache: ``$VQZOO_CACHE/jax`` or ``~/.cache/vqzoo/jax``."""
  return Path(os.environ.get("VQZOO_CACHE", Path.home() / ".cache" / "vqzoo")) / "jax"


def enable() -> Path | None:
  """Turns the persistent compilation cache on for this process; returns its directory.

  Returns ``None`` (and changes nothing) with ``VQZOO_COMPILATION_CACHE=0``. A directory that
  JAX was already given wins over vqzoo's. A cache that cannot be created is skipped: the
  command still runs, compiling as usual.
  """
  if os.environ.get("VQZOO_COMPILATION_CACHE", "1") == "0":
    return None
  configured = jax.config.jax_compilation_cache_dir
  if configured:
    return Path(configured)
  path = cache_path()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path
