"""Test setup: 8 simulated CPU devices (for pmap) and the prepared TFDS data directory.

XLA:CPU aborts the whole process when the threads of a collective do not all arrive within
40 s (``rendezvous.cc: Termination timeout``), which an 8-replica pmap on 2 busy cores can
exceed. The suite raises that limit so a slow collective is slow, never a crash.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Must happen before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_cpu_collective_call_terminate_timeout_seconds=3600"
                           " --xla_cpu_collective_timeout_seconds=3600").strip()
# The tests compile far more than they compute: see _util.FAST_COMPILE. The subprocesses that
# train a recipe or run the README as a user does (test_scripts, test_readme, test_examples),
# and the test of jit_once's init against the default level, set their own XLA_FLAGS.
from _util import FAST_COMPILE, REPO  # noqa: E402  (no JAX import)
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " " + FAST_COMPILE
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA intra-op thread per process (inherited by the tests' subprocesses). The suite's
# workers already keep every core busy, and on a saturated machine a second intra-op thread
# only adds synchronisation. Measured alone on 2 cores, the mnist-mlp reproduction takes 165
# CPU-s by default and 144 with PJRT_NPROC=1; in the whole suite, 1,920 CPU-s become 1,736.
os.environ.setdefault("PJRT_NPROC", "1")
# Many tests compile the same small models again (a fresh run, then its resume; each CLI
# subprocess): a persistent compilation cache for this session only compiles each once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="vqzoo-test-jax-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

SHARED_TFDS = REPO.parent / "shared" / "datasets" / "tensorflow_datasets"
if "TFDS_DATA_DIR" not in os.environ and SHARED_TFDS.is_dir():
  os.environ["TFDS_DATA_DIR"] = str(SHARED_TFDS)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
  """The reproductions and heavy tests first: xdist's work stealing then hands out the short
  ones around them, instead of one long test running alone at the end."""
  items.sort(key=lambda item: not any(item.iter_markers(name) for name in ("reproduce", "heavy")))


@pytest.fixture(scope="session")
def synthetic_train() -> np.ndarray:
  """4096 synthetic 28x28 grey images, for tests of the machinery rather than of real data."""
  from _util import synthetic_images
  return synthetic_images(4096)


@pytest.fixture(scope="session")
def tfds_dir() -> str:
  path = os.environ.get("TFDS_DATA_DIR")
  if not path or not Path(path, "mnist").is_dir():
    raise RuntimeError("tests need the prepared TFDS directory: set TFDS_DATA_DIR to "
                       "../shared/datasets/tensorflow_datasets")
  return path


@pytest.fixture(scope="session")
def mnist_test(tfds_dir) -> np.ndarray:
  from vqzoo.training.data import load_images
  return load_images("mnist", "test", tfds_dir)


@pytest.fixture(scope="session")
def mnist_train(tfds_dir) -> np.ndarray:
  from vqzoo.training.data import load_images
  return load_images("mnist", "train", tfds_dir)
