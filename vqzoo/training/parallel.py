"""Data parallelism the current JAX way: ``jax.jit`` over a one-axis device mesh.

Every global batch is split along its leading axis over the mesh's ``"data"`` axis; parameters,
model state and optimiser state are replicated. There is no replica axis and nothing to keep in
sync by hand: each is one logical array, and XLA inserts the reductions (gradient means, codebook
statistics, code counts) a global-batch computation needs. One device, several devices of one
process and the devices of several processes (:mod:`vqzoo.training.distributed`) run the same
program; a single CPU runs exactly what many hosts run, on one shard.

In a multi-process run every process computes the same global batch order and hands its whole
global batch to :meth:`DataParallel.shard`; each process places only the rows of its own
devices.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vqzoo import cpu_tuning

DATA_AXIS = "data"


def step_devices(devices: Sequence[Any] | None = None) -> list[Any]:
  """The devices one step spans, in order.

  Default: all local devices of a single process; all devices of all processes (ordered by
  process, then id) in a multi-process run.

  Raises:
    ValueError: a device is listed twice, none belongs to this process, or (multi-process)
      some process has none: every process must take part in every step.
  """
  if devices is None:
    devices = jax.devices() if jax.process_count() > 1 else jax.local_devices()
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
  devices = list(devices)
  if len(set(devices)) != len(devices):
    raise ValueError(f"devices: each device at most once, got {devices}")
  if not any(d.process_index == jax.process_index() for d in devices):
    raise ValueError(f"devices: none of {devices} belongs to this process "
                     f"({jax.process_index()})")
  if jax.process_count() > 1:
    missing = set(range(jax.process_count())) - {d.process_index for d in devices}
    if missing:
      raise ValueError(
          f"devices: a multi-process run steps over devices of every process, but processes "
          f"{sorted(missing)} have none among {devices} (default: all of jax.devices())")
  return devices


class DataParallel:
  """A mesh over ``devices`` with a batch-sharded and a replicated placement.

  Args:
    devices: see :func:`step_devices` (default: every device of the run).
  """

  def __init__(self, devices: Sequence[Any] | None = None):
    self.devices = step_devices(devices)
    self.mesh = Mesh(np.asarray(self.devices, dtype=object), (DATA_AXIS,))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())
    self.batch = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))

  @property
  def size(self) -> int:
    """The number of devices a global batch is split over."""
    return len(self.devices)

  def check_batch_size(self, batch_size: int) -> None:
    """Raises ``ValueError`` unless ``batch_size`` splits evenly over the devices."""
    if batch_size % self.size:
      raise ValueError(f"batch_size: expected a multiple of {self.size} (the devices of all "
                       f"processes), got {batch_size}")

  def compile(self, step: Callable) -> Callable:
    """``step(state, batch) -> (state, metrics)`` jitted over the mesh, ``state`` donated.

    ``state`` and ``metrics`` are replicated, every leaf of ``batch`` split along its leading
    axis; compiled with :mod:`vqzoo.cpu_tuning`'s options.
    """
    return cpu_tuning.jit(step, in_shardings=(self.replicated, self.batch),
                          out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))

  def replicate(self, tree: Any) -> Any:
    """Host arrays -> global arrays replicated over the mesh (the same on every process)."""
    return jax.tree_util.tree_map(lambda x: self._place(np.asarray(x), self.replicated), tree)

  def shard(self, tree: Any) -> Any:
    """A global batch (host arrays, the same on every process) -> arrays split over the mesh."""
    return jax.tree_util.tree_map(lambda x: self._place(np.asarray(x), self.batch), tree)

  @staticmethod
  def _place(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(tree: Any) -> Any:
  """NumPy copies of a tree of replicated (or host) arrays, readable on every process."""

  def one(x):
    if isinstance(x, jax.Array):
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree_util.tree_map(one, tree)
