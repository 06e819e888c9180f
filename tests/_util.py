"""Helpers shared by the tests: the repository root, tree equality, synthetic images."""

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

#: For processes that compile far more than they compute (a few steps of a small model): LLVM's
#: optimisation passes are most of XLA:CPU's compile time. Without them, test_quantizer_family
#: and test_train took 182 CPU-s instead of 342 on 2 cores (convolutions and matrix products
#: run in Eigen either way). Imported before JAX, so the conftest can set it first.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def user_env(**extra: str) -> dict[str, str]:
  """The environment of a subprocess that runs as a user runs vqzoo: XLA's default flags (not
  the suite's eight simulated devices, nor :data:`FAST_COMPILE`) on the CPU, plus ``extra``.

  For what computes more than it compiles: a whole recipe, whole-split measurements, the
  README and examples as written.
  """
  import os
  return {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", **extra}


def assert_trees_equal(a, b) -> None:
  """Bit-for-bit equality of two pytrees' leaves (same structure, same values)."""
  import jax
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def traces_during(fn):
  """``(fn(), n)``: ``n`` functions JAX traced (to compile them, or to fetch them from the
  persistent cache) while ``fn`` ran; 0 when everything it ran was compiled before."""
  import jax
  events = []
  listener = lambda event, duration, **kwargs: events.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    result = fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return result, events.count("/jax/core/compile/jaxpr_trace_duration")


def synthetic_images(n: int, shape=(28, 28, 1), seed: int = 0) -> np.ndarray:
  """``[n, *shape]`` uint8 images with structure (blurred blobs), for tests that need no real data.

  Smooth enough that a small VQ-VAE's loss falls within a few steps; not a dataset.
  """
  rng = np.random.default_rng(seed)
  h, w, c = shape
  yy, xx = np.mgrid[0:h, 0:w]
  centres = rng.uniform(0.2, 0.8, size=(n, 2, 2)) * np.array([h, w])
  images = np.zeros((n, h, w, c), np.float32)
  for k in range(2):
    d2 = (yy[None] - centres[:, k, 0, None, None]) ** 2 + (xx[None] - centres[:, k, 1, None, None]) ** 2
    images += np.exp(-d2 / (2 * (0.12 * h) ** 2))[..., None] * rng.uniform(0.5, 1, (n, 1, 1, c))
  return (np.clip(images, 0, 1) * 255).astype(np.uint8)


def one_line_error(capsys, *expected: str) -> str:
  """The captured stderr, asserted to be one line (no traceback) holding every ``expected``."""
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
  for text in expected:
    assert text in err, err
  return err


def compiled_init(transformed, rng, *args):
  """``transformed.init(rng, *args)``, compiled as one program (``args`` baked in as constants).

  Called eagerly, Haiku initialises op by op, and on the CPU each primitive at each new shape
  compiles on its own; under a plain ``jax.jit`` XLA's full optimisation of the many random
  draws is slow too. ``cpu_tuning.jit_once`` (optimisation level 1) gives the op-by-op values
  (tests/test_cpu_tuning.py) in a fraction of either: a small conv VQ-VAE's init took 32 s op
  by op, 12-18 s under ``jax.jit`` and 2-3 s so, on 2 cores.
  """
  from vqzoo import cpu_tuning
  return cpu_tuning.jit_once(lambda key: transformed.init(key, *args))(rng)
