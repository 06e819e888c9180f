"""Fresh weights for a config, without compiling the network.

``build(config).init`` under ``jax.jit`` compiles one random-number program per parameter
shape: 4-10 s on a CPU for a conv model, for weights that take milliseconds to draw. Here the
network is only traced (``jax.eval_shape``, nothing runs) while a Haiku creator records each
parameter and state entry, and the values are then drawn on the host with numpy, with the
distribution of Haiku's own initialiser (:class:`hk.initializers.VarianceScaling`,
``TruncatedNormal``, ``RandomNormal``, ``RandomUniform``, ``Constant``, zeros, ones). Any other
initialiser (a module's own function) runs as it is, in JAX, compiled for its one shape.

The values are not those ``build(config).init(PRNGKey(seed), ...)`` gives (a different random
generator), but the same ``seed`` always gives the same weights.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from vqzoo import cpu_tuning
from vqzoo.configs import ModelConfig
from vqzoo.nn import build

_TRUNCATED_STD = .87962566103423978  # std of a unit normal truncated to [-2, 2] (Haiku's)


def _fans(shape: tuple[int, ...], fan_in_axes: Any) -> tuple[float, float]:
  """Haiku's ``_compute_fans``."""
  if len(shape) < 1:
    return 1.0, 1.0
  if len(shape) == 1:
    return float(shape[0]), float(shape[0])
  if len(shape) == 2:
    return float(shape[0]), float(shape[1])
  if fan_in_axes is not None:
    fan_in = np.prod([shape[i] for i in fan_in_axes])
    return float(fan_in), float(np.prod(shape) / fan_in)
  receptive = float(np.prod(shape[:-2]))
  return shape[-2] * receptive, shape[-1] * receptive


def _truncated(rng: np.random.Generator, lower: float, upper: float,
               shape: tuple[int, ...]) -> np.ndarray:
  out = rng.standard_normal(shape)
  bad = (out < lower) | (out > upper)
  while bad.any():  # resample the tails: a unit normal truncated to [lower, upper]
    out[bad] = rng.standard_normal(int(bad.sum()))
    bad = (out < lower) | (out > upper)
  return out


def _on_host(init: Any, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | None:
  """``init``'s draw for ``shape`` in numpy, or ``None`` when ``init`` is not a known kind."""
  inits = hk.initializers
  if init is jnp.zeros or init is np.zeros:
    return np.zeros(shape)
  if init is jnp.ones or init is np.ones:
    return np.ones(shape)
  if type(init) is inits.Constant and np.ndim(init.constant) == 0:
    return np.full(shape, float(init.constant))
  if type(init) is inits.RandomNormal:
    return init.mean + init.stddev * rng.standard_normal(shape)
  if type(init) is inits.TruncatedNormal:
    return init.mean + init.stddev * _truncated(rng, init.lower, init.upper, shape)
  if type(init) is inits.RandomUniform:
    return rng.uniform(init.minval, init.maxval, shape)
  if type(init) is inits.VarianceScaling:
    fan_in, fan_out = _fans(shape, init.fan_in_axes)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[init.mode]
    scale = init.scale / max(1.0, fan)
    if init.distribution == "uniform":
      limit = np.sqrt(3.0 * scale)
      return rng.uniform(-limit, limit, shape)
    if init.distribution == "normal":
      return np.sqrt(scale) * rng.standard_normal(shape)
    return np.sqrt(scale) / _TRUNCATED_STD * _truncated(rng, -2.0, 2.0, shape)
  return None


def _in_jax(init: Callable, shape: tuple[int, ...], dtype: Any, seed: int, name: str
            ) -> np.ndarray:
  """``init(shape, dtype)`` run by Haiku, compiled for this one shape (at the optimisation
  level of :func:`vqzoo.cpu_tuning.jit_once`: a codebook's uniform draw compiled in 1.8 s at
  XLA's default level on 2 cores)."""
  fn = hk.transform(lambda: init(shape, dtype))
  key = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(name.encode()))
  return np.asarray(cpu_tuning.jit_once(fn.apply)({}, key))


def initial_weights(config: ModelConfig, seed: int = 0) -> tuple[hk.Params, hk.State]:
  """Freshly initialised ``(params, state)`` of ``build(config)``, as numpy arrays.

  Args:
    config: the model.
    seed: the same int gives the same weights.

  Returns:
    Two-level Haiku mappings ``{module: {name: array}}`` with the shapes and dtypes
    ``build(config).init`` gives.
  """
  if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
    raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
  drawn: dict[str, dict[str, dict[str, np.ndarray]]] = {"params": {}, "state": {}}
  pending: list[tuple[str, str, str, Callable, tuple[int, ...], Any]] = []

  def recorder(kind: str) -> Callable:
    def creator(next_creator, shape, dtype, init, context):
      module, _, name = context.full_name.rpartition("/")
      shape = tuple(int(d) for d in shape)
      key = f"{kind}/{context.full_name}"
      value = _on_host(init, shape, np.random.default_rng([int(seed), zlib.crc32(key.encode())]))
      if value is None:
        pending.append((kind, module, name, init, shape, dtype))
      else:
        drawn[kind].setdefault(module, {})[name] = value.astype(dtype)
      return next_creator(shape, dtype, init)
    return creator

  def recording(forward: Callable) -> Callable:
    def recorded(*args, **kwargs):
      with hk.custom_creator(recorder("params"), params=True, state=False), \
          hk.custom_creator(recorder("state"), params=False, state=True):
        return forward(*args, **kwargs)
    return recorded

  x = jax.ShapeDtypeStruct((1, *config.image_shape), jnp.float32)
  jax.eval_shape(lambda x: build(config, wrap=recording).init(jax.random.PRNGKey(0), x, True), x)
  for kind, module, name, fn, shape, dtype in pending:
    try:
      value = _in_jax(fn, shape, dtype, int(seed), f"{kind}/{module}/{name}")
    except Exception:  # an initialiser that needs its module's context: the whole init, once
      full = _full_init(config, int(seed))
      value = np.asarray(full[kind == "state"][module][name])
    drawn[kind].setdefault(module, {})[name] = value
  return drawn["params"], drawn["state"]


@functools.lru_cache(maxsize=2)
def _full_init(config: ModelConfig, seed: int) -> tuple[hk.Params, hk.State]:
  """``build(config).init`` itself, compiled (the slow path, for unknown initialisers only) at
  the optimisation level of :func:`vqzoo.cpu_tuning.jit_once`: the op-by-op values, and a few
  seconds of compilation where a plain ``jax.jit`` takes 10-20 s for a conv model on the CPU."""
  init = lambda rng: build(config).init(rng, jnp.zeros((1, *config.image_shape)), True)
  return cpu_tuning.jit_once(init)(jax.random.PRNGKey(seed))
