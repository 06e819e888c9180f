"""Joining a multi-process run (``jax.distributed``) with bounded failure times.

:func:`initialize` must run before anything touches a JAX device. It takes the coordinator's
``host:port``, the number of processes and this process's id from its arguments, else from the
environment (``VQZOO_COORDINATOR_ADDRESS`` / ``VQZOO_NUM_PROCESSES`` / ``VQZOO_PROCESS_ID``, then
``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, all three read here
and passed to JAX explicitly), else from JAX's own cluster auto-detection (SLURM, Open MPI,
Kubernetes, Cloud TPU). On the CPU backend the processes reduce over TCP with gloo.

A process that dies makes the others fail, not hang: peers blocked in a collective get a
connection error at once; a process that stops answering is declared dead after
``heartbeat_timeout_s`` and the coordination service then ends every other process.

:func:`set_cpu_devices` splits the host CPU into several XLA devices. It is for entry points
(``scripts/train.py``, ``vqzoo finetune``) only: the library never changes the device count.
Their flags, and the rule that a failed process of a multi-process run ends at once, are the
CLI layer's (:mod:`vqzoo.cli_devices`).
"""

from __future__ import annotations

import inspect
import os
from typing import Mapping, NamedTuple

import jax

# The three settings, by environment variable, in order of precedence.
ENV_VARIABLES = (
    ("VQZOO_COORDINATOR_ADDRESS", "VQZOO_NUM_PROCESSES", "VQZOO_PROCESS_ID"),
    ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"),
)
INITIALIZATION_TIMEOUT_S = 300
HEARTBEAT_TIMEOUT_S = 30
SHUTDOWN_TIMEOUT_S = 300
# CPU devices per process for the entry points, by architecture, measured on a 2-core host
# (benchmarks/cpu_devices.py, BENCHMARKS.md "CPU cores as devices").
DEFAULT_CPU_DEVICES = {"conv": 1, "mlp": 1}


class Cluster(NamedTuple):
  """What :func:`initialize` passed to ``jax.distributed.initialize`` (``None``: auto-detected).

  ``source`` says where the settings came from: ``"arguments"``, ``"VQZOO_* environment
  variables"``, ``"JAX_* environment variables"`` or ``"auto-detection"``.
  """

  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  source: str


def _check_address(address: str, where: str) -> str:
  host, sep, port = str(address).rpartition(":")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"{where}: expected the coordinator as host:port (e.g. 127.0.0.1:12355, "
                     f"the address of process 0), got {address!r}")
  return str(address)


def to_int(value: int | str, where: str, minimum: int) -> int:
  if isinstance(value, bool):
    value = "bool"  # not an integer here, whatever Python says
  try:
    number = int(value) if isinstance(value, int) else int(str(value).strip(), 10)
  except ValueError:
    raise ValueError(f"{where}: expected an integer >= {minimum}, got {value!r}") from None
  if number < minimum:
    raise ValueError(f"{where}: expected an integer >= {minimum}, got {value!r}")
  return number


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, environ: Mapping[str, str] | None = None) -> Cluster:
  """The settings :func:`initialize` uses, checked; raises ``ValueError`` with what is wrong.

  All three come from one place: the arguments, else one environment family
  (``VQZOO_*`` before ``JAX_*``), else none of them (cluster auto-detection). Giving some but
  not all three in one place is an error, as is a ``process_id`` outside
  ``[0, num_processes)``.
  """
  environ = os.environ if environ is None else environ
  names = ("coordinator_address", "num_processes", "process_id")
  candidates = [("arguments", names, (coordinator_address, num_processes, process_id))]
  for family in ENV_VARIABLES:
    candidates.append((family[0].split("_")[0] + "_* environment variables", family,
                       tuple(environ.get(v) or None for v in family)))
  for source, labels, values in candidates:
    given = [v is not None for v in values]
    if not any(given):
      continue
    if not all(given):
      missing = ", ".join(label for label, g in zip(labels, given) if not g)
      present = ", ".join(label for label, g in zip(labels, given) if g)
      raise ValueError(
          f"distributed set-up: {present} given ({source}) but not {missing}; give "
          "all three (--coordinator-address, --num-processes, --process-id, or the "
          "VQZOO_*/JAX_* environment variables) or none of them (cluster auto-detection)")
    address = _check_address(values[0], labels[0])
    count = to_int(values[1], labels[1], 1)
    index = to_int(values[2], labels[2], 0)
    if index >= count:
      raise ValueError(f"{labels[2]}: expected 0 <= process id < {count} ({labels[1]}), "
                       f"got {index}")
    return Cluster(address, count, index, source)
  return Cluster(None, None, None, "auto-detection")


def _timeout_kwargs(timeout_s: int, heartbeat_timeout_s: int, shutdown_timeout_s: int) -> dict:
  """The timeouts the installed ``jax.distributed.initialize`` accepts, by its signature."""
  accepted = inspect.signature(jax.distributed.initialize).parameters
  wanted = {"initialization_timeout": timeout_s, "heartbeat_timeout_seconds": heartbeat_timeout_s,
            "shutdown_timeout_seconds": shutdown_timeout_s}
  return {k: v for k, v in wanted.items() if k in accepted}


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = INITIALIZATION_TIMEOUT_S,
               heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
               shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S) -> Cluster:
  """Joins this process to a multi-process JAX run; call before anything touches a device.

  Args:
    coordinator_address: ``host:port`` of process 0, reachable from every process (process 0
      listens on that port on all its interfaces).
    num_processes: how many processes take part.
    process_id: this process's index, in ``[0, num_processes)``; process 0 coordinates and is
      the one that writes checkpoints and models.
    timeout_s: how long to wait for every process to connect before failing.
    heartbeat_timeout_s: a process silent for this long is declared dead and the others are
      ended (a killed process's peers already fail at their next collective).
    shutdown_timeout_s: how long a finished process waits at exit for the others (process 0
      still evaluates and saves after training) before all of them fail.

  Returns:
    The settings used (see :func:`resolve`).

  Raises:
    ValueError: incomplete or invalid settings (the message names them).
    RuntimeError: already initialised, or JAX's backend already started (a device was used).
  """
  cluster = resolve(coordinator_address, num_processes, process_id)
  for name, value in (("timeout_s", timeout_s), ("heartbeat_timeout_s", heartbeat_timeout_s),
                      ("shutdown_timeout_s", shutdown_timeout_s)):
    to_int(value, name, 1)
  if jax.distributed.is_initialized():
    raise RuntimeError("jax.distributed is already initialised in this process; call "
                       "vqzoo.training.distributed.initialize once, before using any device")
  # Before the CPU client exists: its cross-process collectives (a no-op for GPU and TPU
  # backends). Left alone when the user chose an implementation (e.g. mpi) through the env.
  if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = _timeout_kwargs(int(timeout_s), int(heartbeat_timeout_s), int(shutdown_timeout_s))
  if cluster.coordinator_address is not None:
    kwargs.update(coordinator_address=cluster.coordinator_address,
                  num_processes=cluster.num_processes, process_id=cluster.process_id)
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:  # auto-detection found no cluster: say what else works
    if cluster.coordinator_address is not None:
      raise
    raise ValueError(
        f"distributed set-up: no cluster was detected ({e}); pass --coordinator-address, "
        "--num-processes and --process-id (or set VQZOO_COORDINATOR_ADDRESS, "
        "VQZOO_NUM_PROCESSES and VQZOO_PROCESS_ID)") from e
  return cluster


def is_main_process() -> bool:
  """Whether this is process 0, the one that writes checkpoints, metrics and models."""
  return jax.process_index() == 0


def set_cpu_devices(count: int) -> None:
  """Makes the CPU backend expose ``count`` devices (entry points only, before JAX starts).

  Raises:
    ValueError: ``count`` < 1.
    RuntimeError: JAX's backend has already started.
  """
  count = to_int(count, "cpu devices", 1)
  jax.config.update("jax_num_cpu_devices", count)


def cpu_devices_configured() -> bool:
  """Whether the user set the CPU device count (``XLA_FLAGS``, ``JAX_NUM_CPU_DEVICES``, config)."""
  return ("xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")
          or bool(os.environ.get("JAX_NUM_CPU_DEVICES"))
          or jax.config.jax_num_cpu_devices >= 0)


def default_cpu_devices(arch: str | None) -> int:
  """The entry points' CPU device count for ``arch`` (1 when unknown), at most the cores."""
  return max(1, min(DEFAULT_CPU_DEVICES.get(arch or "", 1), os.cpu_count() or 1))
