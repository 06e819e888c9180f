"""Every CPU-specific performance trick vqzoo uses, in one place, applied on the CPU backend only.

Model code (:mod:`vqzoo.nn`) is the plain architecture: ``hk.Conv2D`` layers, an ``argmin``
nearest-code search, whole batches. XLA's CPU backend runs some of that faster when it is
phrased differently, so vqzoo's own entry points (the trainer, the loaded-model container,
evaluation) run their Haiku functions through :func:`tuned` and compile them with :func:`jit`.
Each trick computes the same function, checked by the tests, and reaches a module only through
the hooks it declares (:mod:`vqzoo.nn.hooks`); nothing is written onto a module:

1. **Compiler options.** XLA:CPU hands each convolution to YNNPACK by default
   (``xla_cpu_experimental_ynn_fusion_type``); its own convolution path is faster for the zoo's
   layer shapes, so vqzoo compiles with YNNPACK kept for dots only. Per compiled function:
   nothing changes for the rest of the process.
2. **Convolution formulation.** ``hk.Conv2D`` layers with a 1x1 kernel or a tiny fan-in
   (``kh*kw*C <= 16``: the first layer on grayscale images) run as one matrix product over
   im2col patches, forward and backward, instead of an XLA convolution.
3. **Batch slicing.** :class:`~vqzoo.nn.hooks.IndependentRows` modules (the zoo's conv encoder
   and decoder) run on slices of the batch inside one compiled function, so each slice's
   activations stay in cache; a slice's size follows the module's input (:func:`slice_rows`).
4. **Chunked inference.** The loaded-model container and :func:`vqzoo.evaluate` dispatch large
   conv batches in host chunks, back to back (:func:`inference_chunks`), sized by the image
   shape: a small compiled function, where one over a whole large batch would unroll many
   slices (3) and take seconds longer to compile.
5. **Nearest-code search.** For :class:`~vqzoo.nn.hooks.CodeSearch` modules (the quantizers)
   and distance matrices that fit in cache, the first minimum is found by two vectorised
   reductions instead of ``argmin``'s (value, index) reduction.
6. **Run-once functions compiled quickly.** An initialisation runs once, on a dummy batch:
   :func:`jit_once` compiles it at LLVM optimisation level 1, 2-3x faster to compile than the
   default level for the zoo's models, with the same values (the tests compare them).

The measured effect of each is in BENCHMARKS.md. Beside them, :func:`memoize` (on every
backend) keeps the functions vqzoo compiles one per configuration in a process, so a second
run, load or measurement of a config compiles nothing. The six tricks do not apply when

* the default backend is not the CPU (GPU and TPU get the plain model),
* ``VQZOO_CPU_TUNING=0`` is set or :func:`disabled` is active (all six tricks off), or, for
  the compiler options only,
* ``VQZOO_XLA_DEFAULTS=1`` is set, the user's ``XLA_FLAGS`` already set the YNNPACK option, or the
  installed jaxlib does not know it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import math
import os
from typing import Any, Callable, Iterator, Sequence, TypeVar

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from vqzoo.nn import hooks

F = TypeVar("F", bound=Callable[..., Any])

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_COMPILER_OPTIONS = {YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
# Batch slicing (3), measured for 28x28x1 and 32x32x3 images (BENCHMARKS.md): a slice holds
# SLICE_BYTES of a module's input (64 rows of 28x28x1 float32) but no fewer than MIN_SLICE_ROWS
# rows (smaller slices lose more to per-operation overhead than they gain in cache), and a call
# makes at most MAX_SLICES slices.
SLICE_BYTES = 64 * 28 * 28 * 4
MIN_SLICE_ROWS = 32
MAX_SLICES = 16
# Inference chunks (4): bytes of float32 images per host chunk (two encoder slices).
CHUNK_BYTES = 2 * SLICE_BYTES
# Distance matrices up to this many entries (4 MiB of float32) use the two-reduction search.
TWO_PASS_MAX_DISTANCES = 1 << 20
# hk.Conv2D layers with at most this fan-in (kh * kw * C) run as matrix products.
MATMUL_MAX_FAN_IN = 16


_DISABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("vqzoo_cpu_tuning_disabled",
                                                                default=False)


def enabled() -> bool:
  """Whether the CPU tricks apply: the CPU backend, no ``VQZOO_CPU_TUNING=0``, no :func:`disabled`."""
  return (not _DISABLED.get() and os.environ.get("VQZOO_CPU_TUNING", "1") != "0"
          and jax.default_backend() == "cpu")


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


RUN_ONCE_OPTIONS = {"xla_backend_optimization_level": 1}


def jit_once(fn: Callable, **kwargs: Any) -> Callable:
  """``jax.jit(fn, **kwargs)`` for a function called once (an init): on the CPU, compiled at
  optimisation level 1 (:data:`RUN_ONCE_OPTIONS`), which spends less time compiling than the
  function will ever run."""
  plain = jax.jit(fn, **kwargs)
  if not enabled() or "compiler_options" not in inspect.signature(jax.jit).parameters:
    return plain
  quick = jax.jit(fn, compiler_options=dict(RUN_ONCE_OPTIONS), **kwargs)

  @functools.wraps(fn)
  def call(*args: Any, **call_kwargs: Any) -> Any:
    try:
      return quick(*args, **call_kwargs)
    except ValueError as e:  # inside the caller's jit (or eval_shape): compiled with it
      if "compiler_options" not in str(e):
        raise
      return plain(*args, **call_kwargs)
  return call


def memoize(builder: F) -> F:
  """``builder`` memoised on its (hashable) arguments and on the tricks in force.

  For the functions that build what ``jax.jit`` compiles. JAX caches compiled programs per
  function object, so a builder that made a new closure each call would trace, lower and
  compile its program again (or fetch it from the persistent cache: 0.3-0.7 s for a zoo
  model's step or init on the CPU) each time the same model is trained, loaded or measured in
  one process: a resume, a second ``train()`` in a notebook, a fine-tune after a training run.
  The key holds :func:`enabled` and :func:`compiler_options`, so a trace made with the tricks on
  never serves a call made with them off (:func:`tuned` decides when the function is traced).
  Not CPU-specific: it applies on every backend.
  """
  cached = functools.lru_cache(maxsize=32)(lambda tricks, *args: builder(*args))

  @functools.wraps(builder)
  def call(*args: Any) -> Any:
    return cached((enabled(), repr(compiler_options())), *args)
  return call  # type: ignore[return-value]


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


def slice_rows(row_shape: Sequence[int], dtype: Any) -> int:
  """Rows per slice of an :class:`~vqzoo.nn.hooks.IndependentRows` module's input.

  Args:
    row_shape: the shape of one input row (``x.shape[1:]``), e.g. ``(28, 28, 1)`` for images or
      ``(7, 7, 16)`` for a decoder's latents.
    dtype: the input's dtype.

  Returns:
    ``SLICE_BYTES // bytes per row``, at least ``MIN_SLICE_ROWS``: 64 rows of 28x28x1 float32
    images (or of 7x7x16 latents), 128 of bfloat16 28x28x1, 32 of 32x32x3 (where 16 would
    fill ``SLICE_BYTES``).
  """
  row_bytes = max(1, math.prod(row_shape) * np.dtype(dtype).itemsize)
  return max(MIN_SLICE_ROWS, SLICE_BYTES // row_bytes, 1)


# ----------------------------------------------------------------------------- 5. code search


def first_min_index(distances: jax.Array) -> jax.Array:
  """``[N, K] -> [N]`` int32 index of each row's first minimum by two vectorised reductions."""
  num_codes = distances.shape[1]
  smallest = jnp.min(distances, axis=1, keepdims=True)
  index = jnp.arange(num_codes, dtype=jnp.int32)
  first = jnp.min(jnp.where(distances == smallest, index, num_codes), axis=1)
  return jnp.minimum(first, num_codes - 1)  # a row with NaN matches nothing: a valid index still


# ----------------------------------------------------------------------------- applying them


# The IndependentRows modules whose per-slice calls are running (the interceptor sees them again).
_SLICING: contextvars.ContextVar[tuple[hk.Module, ...]] = contextvars.ContextVar(
    "vqzoo_cpu_tuning_slicing", default=())


def _sliced(module: hk.Module, x: jax.Array) -> jax.Array:
  token = _SLICING.set((*_SLICING.get(), module))
  try:  # calling the module itself (not next_f) keeps its sub-modules' names per slice
    return apply_in_slices(module, x, slice_rows(x.shape[1:], x.dtype))
  finally:
    _SLICING.reset(token)


def _interceptor(next_f, args, kwargs, context):
  module, method = context.module, context.method_name
  if hk.running_init():
    return next_f(*args, **kwargs)
  if method == hooks.CODE_SEARCH_METHOD and isinstance(module, hooks.CodeSearch):
    (distances,) = args
    if distances.size <= TWO_PASS_MAX_DISTANCES:
      return first_min_index(distances)
    return next_f(*args, **kwargs)
  if method != "__call__" or kwargs or len(args) != 1:
    return next_f(*args, **kwargs)
  if isinstance(module, hk.Conv2D) and _matmul_conv_applies(module, args[0]):
    return _conv_by_matmul(module, args[0])
  if isinstance(module, hooks.IndependentRows) and not any(m is module for m in _SLICING.get()):
    return _sliced(module, args[0])
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


def inference_chunk_rows(image_shape: Sequence[int], arch: str) -> int | None:
  """Trick 4's host chunk, in images: for conv models on the CPU, :data:`CHUNK_BYTES` of float32
  images of ``image_shape`` (128 of 28x28x1, 32 of 32x32x3); otherwise ``None`` (one call)."""
  if arch != "conv" or not enabled():
    return None
  return max(1, CHUNK_BYTES // (math.prod(image_shape) * 4))


def inference_chunks(batch: np.ndarray, image_shape: Sequence[int], arch: str
                     ) -> Iterator[np.ndarray]:
  """Trick 4: ``[B, ...]`` in the chunks of :func:`inference_chunk_rows`, dispatched back to back
  by a loaded model (and by :func:`vqzoo.evaluate`)."""
  size = inference_chunk_rows(image_shape, arch)
  if size is None:
    yield batch
    return
  if len(batch) == 0:
    yield batch
  for i in range(0, len(batch), size):
    yield batch[i:i + size]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
  """Within this context (for tests and benchmarks), every trick is off.

  Context-local (a ``contextvars`` variable): the environment and other threads are untouched.
  """
  token = _DISABLED.set(True)
  try:
    yield
  finally:
    _DISABLED.reset(token)
