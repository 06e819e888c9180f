"""The device and multi-process flags of the entry points, and their one fail-fast rule.

``vqzoo finetune`` and ``scripts/train.py`` add the same flags (:func:`add_flags`), start the
run they ask for before anything touches a device (:func:`start_from_flags`) and run their
body under :func:`fail_fast`: in a multi-process run a process that fails ends at once (exit
status 2 for a usage error, 1 otherwise), so that its peers fail within seconds instead of
waiting out the heartbeat timeout. The library half is :mod:`vqzoo.training.distributed`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from typing import Iterator

from vqzoo.training import distributed

#: Errors that mean the command was given something it cannot use: exit status 2.
USAGE_ERRORS = (ValueError, KeyError, OSError, FloatingPointError)



def add_flags(parser: argparse.ArgumentParser) -> None:
  """Adds the device and multi-process flags of ``scripts/train.py`` and ``vqzoo finetune``."""
  defaults = ", ".join(f"{n} for {arch}" for arch, n in distributed.DEFAULT_CPU_DEVICES.items())
  group = parser.add_argument_group(
      "devices and processes",
      "One training step spans every device of every process; give the same command to each "
      "process, with its own --process-id. Process 0 writes the checkpoint, metrics and model.")
  group.add_argument("--cpu-devices", type=int, metavar="N",
                     help="split the host CPU into N XLA devices, each a replica (default: "
                          f"{defaults}, at most the cores; an XLA_FLAGS or JAX_NUM_CPU_DEVICES "
                          "device count wins over the default)")
  group.add_argument("--coordinator-address", metavar="HOST:PORT",
                     help="address of process 0 of a multi-process run, reachable by all")
  group.add_argument("--num-processes", type=int, metavar="N",
                     help="number of processes of the run")
  group.add_argument("--process-id", type=int, metavar="I",
                     help="this process's index in [0, N); 0 writes the results")
  group.add_argument("--distributed", action="store_true",
                     help="join a multi-process run set up by the environment: VQZOO_* or "
                          "JAX_* COORDINATOR_ADDRESS / NUM_PROCESSES / PROCESS_ID, else JAX's "
                          "cluster auto-detection (SLURM, Open MPI, ...)")


def start_from_flags(args: argparse.Namespace, arch: str | None) -> bool:
  """Sets the CPU device count and joins the multi-process run the flags ask for.

  For entry points, before anything touches a device. ``arch`` (``"conv"``, ``"mlp"`` or
  ``None``) picks the default CPU device count.

  Returns:
    Whether this process joined a multi-process run.

  Raises:
    ValueError: invalid or incomplete flags or environment (the message names them).
  """
  if args.cpu_devices is not None:
    distributed.set_cpu_devices(distributed.to_int(args.cpu_devices, "--cpu-devices", 1))
  elif not distributed.cpu_devices_configured():
    distributed.set_cpu_devices(distributed.default_cpu_devices(arch))
  flags = (args.coordinator_address, args.num_processes, args.process_id)
  if all(f is None for f in flags) and not args.distributed:
    return False
  if any(f is not None for f in flags):
    labels = ("--coordinator-address", "--num-processes", "--process-id")
    missing = [label for label, f in zip(labels, flags) if f is None]
    if missing:
      raise ValueError(f"{', '.join(missing)}: needed with "
                       f"{', '.join(l for l, f in zip(labels, flags) if f is not None)} "
                       "(give all three, or --distributed to read them from the environment)")
  distributed.initialize(*flags)
  return True


def exit_now(code: int) -> None:
  """Ends this process at once with ``code``, without JAX's exit-time shutdown barrier.

  For a process of a failed multi-process run: the barrier would wait for peers that may be
  dead (until ``heartbeat_timeout_s``) and then abort with a C++ stack trace.
  """
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # a closed stream must not keep the process alive
      pass
  os._exit(code)


@contextlib.contextmanager
def fail_fast(multi_process: bool = True, prog: str = "vqzoo") -> Iterator[None]:
  """For an entry point's body: in a multi-process run, a failure ends this process at once.

  A ``SystemExit`` keeps its status; a usage error (:data:`USAGE_ERRORS`) prints one line
  ``PROG: error: ...`` and exits with status 2; anything else prints its traceback and exits
  with status 1, all through :func:`exit_now`. The peers then fail within seconds (their next
  collective loses this process). Without ``multi_process`` this does nothing: the entry
  point reports errors its usual way.
  """
  if not multi_process:
    yield
    return
  try:
    yield
  except SystemExit as e:
    code = e.code
    if not isinstance(code, int):
      if code is not None:
        print(code, file=sys.stderr)
      code = 0 if code is None else 1
    exit_now(code)
  except USAGE_ERRORS as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    exit_now(2)
  except BaseException:  # noqa: B036 -- whatever failed, end now
    traceback.print_exc()
    exit_now(1)
