"""``jit`` and ``pmap`` with the XLA:CPU compiler options these models run fastest with.

XLA's CPU backend hands each convolution to YNNPACK by default
(``xla_cpu_experimental_ynn_fusion_type`` includes ``INDIVIDUAL_CONVOLUTION``). For the
zoo's layer shapes its own convolution path is about 2x faster, forward and backward
(``benchmarks/conv_profile.py``; BENCHMARKS.md), so vqzoo compiles its functions with
YNNPACK kept for dots only. The option is per compiled function: nothing global changes
for the rest of the process. It is not applied

* off the CPU (GPU/TPU compilers ignore CPU options anyway),
* when the user's ``XLA_FLAGS`` already set ``xla_cpu_experimental_ynn_fusion_type``,
* when the installed jaxlib does not know the option (older XLA), or
* when ``VQZOO_XLA_DEFAULTS=1`` asks for XLA's own defaults.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable

import jax
import numpy as np

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_COMPILER_OPTIONS = {YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


@functools.lru_cache(maxsize=None)
def _probe() -> bool:
  if "compiler_options" not in inspect.signature(jax.jit).parameters:
    return False
  try:
    jax.jit(lambda x: x + 1).lower(np.float32(0)).compile(compiler_options=CPU_COMPILER_OPTIONS)
    return True
  except Exception:  # an XLA that does not know the option rejects it at compile time
    return False


def compiler_options() -> dict[str, str] | None:
  """The options vqzoo compiles with on this backend, or ``None`` for XLA's defaults."""
  if os.environ.get("VQZOO_XLA_DEFAULTS") == "1" or YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
    return None
  if jax.default_backend() != "cpu" or not _probe():
    return None
  return dict(CPU_COMPILER_OPTIONS)


def jit(fn: Callable, **kwargs) -> Callable:
  """``jax.jit(fn, **kwargs)`` compiled with :func:`compiler_options`."""
  options = compiler_options()
  return jax.jit(fn, **kwargs) if options is None else jax.jit(fn, compiler_options=options, **kwargs)


def _signature(args) -> Any:
  """Tree structure, shapes and dtypes: what a compiled executable is specific to (cheap)."""
  leaves, tree = jax.tree_util.tree_flatten(args)
  return tree, tuple((x.shape, x.dtype) if hasattr(x, "dtype") else (np.shape(x), type(x))
                     for x in leaves)


def pmap(fn: Callable, **kwargs) -> Callable:
  """``jax.pmap(fn, **kwargs)`` compiled with :func:`compiler_options`.

  ``jax.pmap`` takes no compiler options, so each new argument signature (shapes, dtypes)
  is lowered and compiled once with them and the executable is reused. As with :func:`jit`,
  the options are decided here, once, not on every call of the training loop.
  """
  pmapped = jax.pmap(fn, **kwargs)
  options = compiler_options()
  if options is None:
    return pmapped
  executables: dict[Any, Callable] = {}

  @functools.wraps(fn)
  def call(*args):
    key = _signature(args)
    if key not in executables:
      executables[key] = pmapped.lower(*args).compile(compiler_options=options)
    return executables[key](*args)
  return call
