"""Every CPU-specific performance trick vqzoo uses, in one place, applied on the CPU backend only.

Model code (:mod:`vqzoo.nn`) is the plain architecture: ``hk.Conv2D`` layers, an ``argmin``
nearest-code search, whole batches. XLA's CPU backend runs some of that faster when it is
phrased differently, so vqzoo's own entry points (the trainer, the loaded-model container,
evaluation) run their Haiku functions through :func:`tuned` and compile them with :func:`jit`
/ :func:`pmap`. Each trick computes the same function, checked by the tests:

1. **Compiler options.** XLA:CPU hands each convolution to YNNPACK by default
   (``xla_cpu_experimental_ynn_fusion_type``); its own convolution path is faster for the zoo's
   layer shapes, so vqzoo compiles with YNNPACK kept for dots only. Per compiled function:
   nothing changes for the rest of the process.
2. **Convolution formulation.** ``hk.Conv2D`` layers with a 1x1 kernel or a tiny fan-in
   (``kh*kw*C <= 16``: the first layer on grayscale images) run as one matrix product over
   im2col patches, forward and backward, instead of an XLA convolution.
3. **Batch slicing.** Modules that declare ``independent_rows = True`` (the zoo's conv encoder
   and decoder) run on slices of the batch inside one compiled function, so each slice's
   activations stay in cache.
4. **Chunked inference.** The loaded-model container dispatches large conv batches in host
   chunks, back to back (:func:`inference_chunks`).
5. **Nearest-code search.** For distance matrices that fit in cache the first minimum is found by
   two vectorised reductions instead of ``argmin``'s (value, index) reduction.

The measured effect of each is in BENCHMARKS.md. Nothing here applies when

* the default backend is not the CPU (GPU and TPU get the plain model),
* ``VQZOO_CPU_TUNING=0`` is set (all five tricks off), or, for the compiler options only,
* ``VQZOO_XLA_DEFAULTS=1`` is set, the user's ``XLA_FLAGS`` already set the YNNPACK option, or the
  installed jaxlib does not know it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
from typing import Any, Callable, Iterator, Sequence, TypeVar

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

F = TypeVar("F", bound=Callable[..., Any])

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_COMPILER_OPTIONS = {YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
# Input elements per slice for independent-row modules: 64 images of 28x28x1 (or 7x7x16 latents).
SLICE_ELEMENTS = 64 * 28 * 28
MAX_SLICES = 16
# Image elements per host chunk for conv inference: 128 images of 28x28x1.
CHUNK_ELEMENTS = 128 * 28 * 28
# Distance matrices up to this many entries (4 MiB of float32) use the two-reduction search.
TWO_PASS_MAX_DISTANCES = 1 << 20
# hk.Conv2D layers with at most this fan-in (kh * kw * C) run as matrix products.
MATMUL_MAX_FAN_IN = 16


def enabled() -> bool:
  """Whether the CPU tricks apply: the CPU backend, and no ``VQZOO_CPU_TUNING=0``."""
  return os.environ.get("VQZOO_CPU_TUNING", "1") != "0" and jax.default_backend() == "cpu"


# ----------------------------------------------------------------------------- 1. compiling


@functools.lru_cache(maxsize=None)
def _jaxlib_knows_option() -> bool:
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
  if not enabled() or not _jaxlib_knows_option():
    return None
  return dict(CPU_COMPILER_OPTIONS)


def jit(fn: Callable, **kwargs: Any) -> Callable:
  """``jax.jit(fn, **kwargs)`` compiled with :func:`compiler_options`."""
  options = compiler_options()
  return jax.jit(fn, **kwargs) if options is None else jax.jit(fn, compiler_options=options, **kwargs)


def _signature(args: Any) -> Any:
  """Tree structure, shapes and dtypes: what a compiled executable is specific to (cheap)."""
  leaves, tree = jax.tree_util.tree_flatten(args)
  return tree, tuple((x.shape, x.dtype) if hasattr(x, "dtype") else (np.shape(x), type(x))
                     for x in leaves)


def pmap(fn: Callable, **kwargs: Any) -> Callable:
  """``jax.pmap(fn, **kwargs)`` compiled with :func:`compiler_options`.

  ``jax.pmap`` takes no compiler options, so each new argument signature is lowered and
  compiled once with them and the executable is reused. The options are decided here, once.
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


# ----------------------------------------------------------------------------- 2. convolutions


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, tuple[int, int]]:
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return out, (total // 2, total - total // 2)


def conv_as_matmul(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
  """SAME NHWC convolution as one matrix product over im2col patches.

  ``x`` ``[B, H, W, C]``, ``w`` ``[kh, kw, C, O]`` -> ``[B, H/stride, W/stride, O]``; equal to
  ``lax.conv_general_dilated(x, w, (stride, stride), "SAME")`` up to summation order.
  """
  kh, kw, cin, cout = w.shape
  b, h, wd, _ = x.shape
  oh, pad_h = _same_padding(h, kh, stride)
  ow, pad_w = _same_padding(wd, kw, stride)
  if kh == kw == 1 and stride == 1:
    return (x.reshape(-1, cin) @ w.reshape(cin, cout)).reshape(b, h, wd, cout)
  x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  patches = jnp.concatenate(
      [x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]
       for i in range(kh) for j in range(kw)], axis=-1)
  return (patches.reshape(-1, kh * kw * cin) @ w.reshape(-1, cout)).reshape(b, oh, ow, cout)


def _matmul_conv_applies(conv: hk.Conv2D, x: jax.Array) -> bool:
  """A plain SAME, NHWC, undilated, ungrouped, unmasked 2-D conv with a 1x1 or tiny kernel."""
  if (conv.padding != "SAME" or conv.data_format != "NHWC" or conv.feature_group_count != 1
      or conv.mask is not None or x.ndim != 4 or set(conv.kernel_dilation) != {1}
      or len(set(conv.stride)) != 1):
    return False
  kh, kw = conv.kernel_shape
  return kh == kw == 1 or kh * kw * x.shape[-1] <= MATMUL_MAX_FAN_IN


def _conv_by_matmul(conv: hk.Conv2D, x: jax.Array) -> jax.Array:
  # Apply time only: the parameters exist (created by hk.Conv2D itself at init).
  w = hk.get_parameter("w", (*conv.kernel_shape, x.shape[-1], conv.output_channels), x.dtype)
  out = conv_as_matmul(x, w, conv.stride[0])
  if conv.with_bias:
    out = out + hk.get_parameter("b", (conv.output_channels,), x.dtype)
  return out


# ----------------------------------------------------------------------------- 3. batch slicing


def apply_in_slices(fn: Callable[[jax.Array], jax.Array], x: jax.Array, max_rows: int
                    ) -> jax.Array:
  """``fn(x)`` computed on consecutive slices of ``x``'s leading axis and concatenated.

  Uses ``ceil(B / max_rows)`` slices (at most ``MAX_SLICES``: larger batches get larger
  slices, so the unrolled graph stays small); ``fn`` must treat rows independently.
  """
  rows = x.shape[0]
  if rows <= max_rows:
    return fn(x)
  size = -(-rows // min(MAX_SLICES, -(-rows // max_rows)))
  return jnp.concatenate([fn(x[i:i + size]) for i in range(0, rows, size)])


def _rows_per_slice(x: jax.Array) -> int:
  return max(1, SLICE_ELEMENTS // max(1, math.prod(x.shape[1:])))


# ----------------------------------------------------------------------------- 5. code search


def first_min_index(distances: jax.Array) -> jax.Array:
  """``[N, K] -> [N]`` int32 index of each row's first minimum by two vectorised reductions."""
  num_codes = distances.shape[1]
  smallest = jnp.min(distances, axis=1, keepdims=True)
  index = jnp.arange(num_codes, dtype=jnp.int32)
  first = jnp.min(jnp.where(distances == smallest, index, num_codes), axis=1)
  return jnp.minimum(first, num_codes - 1)  # a row with NaN matches nothing: a valid index still


# ----------------------------------------------------------------------------- applying them


def _interceptor(next_f, args, kwargs, context):
  module = context.module
  if hk.running_init() or context.method_name not in ("__call__", "argmin_rows"):
    return next_f(*args, **kwargs)
  if context.method_name == "argmin_rows":
    (distances,) = args
    if distances.size <= TWO_PASS_MAX_DISTANCES:
      return first_min_index(distances)
    return next_f(*args, **kwargs)
  if isinstance(module, hk.Conv2D) and not kwargs and _matmul_conv_applies(module, args[0]):
    return _conv_by_matmul(module, args[0])
  if getattr(type(module), "independent_rows", False) and len(args) == 1 and not kwargs:
    if getattr(module, "_vqzoo_slicing", False):  # the per-slice calls below
      return next_f(*args)
    x = args[0]
    module._vqzoo_slicing = True
    try:  # calling the module itself (not next_f) keeps its sub-modules' names per slice
      return apply_in_slices(module, x, _rows_per_slice(x))
    finally:
      module._vqzoo_slicing = False
  return next_f(*args, **kwargs)


def tuned(fn: F) -> F:
  """Wraps a Haiku function (to be transformed) so its modules run with tricks 2, 3 and 5.

  A no-op unless :func:`enabled`; decided when ``fn`` runs (is traced).
  """

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if not enabled():
      return fn(*args, **kwargs)
    with hk.intercept_methods(_interceptor):
      return fn(*args, **kwargs)
  return wrapper  # type: ignore[return-value]


def inference_chunks(batch: np.ndarray, image_shape: Sequence[int], arch: str
                     ) -> Iterator[np.ndarray]:
  """Trick 4: ``[B, ...]`` in the slices a loaded model dispatches back to back.

  Conv models on the CPU: chunks of :data:`CHUNK_ELEMENTS` image elements; otherwise one call.
  """
  if arch != "conv" or not enabled():
    yield batch
    return
  size = max(1, CHUNK_ELEMENTS // math.prod(image_shape))
  if len(batch) == 0:
    yield batch
  for i in range(0, len(batch), size):
    yield batch[i:i + size]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
  """Within this context (for tests and benchmarks), every trick is off."""
  old = os.environ.get("VQZOO_CPU_TUNING")
  os.environ["VQZOO_CPU_TUNING"] = "0"
  try:
    yield
  finally:
    if old is None:
      del os.environ["VQZOO_CPU_TUNING"]
    else:
      os.environ["VQZOO_CPU_TUNING"] = old
