"""The one training loop: resume, step, log, checkpoint, stop on non-finite values, finish.

VQ-VAE training (:mod:`~vqzoo.training.trainer`), fine-tuning, prior fitting and classifier
training are short callers: each brings a step function, a fresh :class:`TrainState`, a seeded
batch source and a recipe; the loop owns everything else, the same way for all of them:

- the resume rule and checkpoint format of :mod:`vqzoo.training.checkpoint`;
- one learning-rate schedule (:func:`learning_rate_schedule`) and one seeded batch order
  (:func:`vqzoo.training.data.batch_indices`), both functions of the step, so a resumed run
  continues bit-exactly;
- data parallelism over every device of the run (:class:`~vqzoo.training.parallel.DataParallel`);
- ``metrics.jsonl``-style logs: one JSON line per logged step; on resume, lines logged after
  the checkpoint's step are dropped (they are logged again);
- in a multi-process run only process 0 writes, and a failed collective (a dead peer) becomes
  an error that says which checkpoint is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np
import optax

from vqzoo.configs import RunConfig, TrainConfig
from vqzoo.io import atomic_write_bytes
from vqzoo.training import checkpoint
from vqzoo.training.checkpoint import TrainState
from vqzoo.training.parallel import DataParallel, to_host


def learning_rate_schedule(recipe: TrainConfig) -> optax.Schedule:
  """Linear warm-up to ``recipe.learning_rate``, then cosine decay or a constant rate.

  The warm-up takes :attr:`~vqzoo.configs.TrainConfig.warmup_length` updates (optax counts the
  first as step 0; :func:`vqzoo.result_warnings.recipe_warnings` says when it is compressed).
  """
  warmup = recipe.warmup_length
  if recipe.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, recipe.learning_rate, warmup),
                                 optax.constant_schedule(recipe.learning_rate)], [warmup])
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=recipe.learning_rate, warmup_steps=warmup,
      decay_steps=recipe.steps, end_value=recipe.learning_rate * recipe.final_lr_fraction)


@dataclasses.dataclass(frozen=True)
class LoopFiles:
  """What a kind of run calls its files in the workdir."""

  checkpoint: str = "checkpoint.safetensors"
  metrics: str = "metrics.jsonl"


@dataclasses.dataclass
class LoopResult:
  """The final train state (host arrays) and the last logged metrics."""

  state: TrainState
  metrics: dict[str, float]

  @property
  def step(self) -> int:
    return int(self.state.step)


def run(step: Callable, fresh: TrainState, batches: Callable[[int], Iterator[Any]],
        recipe: TrainConfig, workdir: str | os.PathLike | None, options: RunConfig = RunConfig(),
        *, parallel: DataParallel | None = None, files: LoopFiles = LoopFiles(),
        desc: str = "train", postfix: Callable[[dict[str, float]], dict[str, str]] | None = None,
        ) -> LoopResult:
  """Runs ``step`` from ``fresh`` (or the workdir's checkpoint) to ``recipe.steps``.

  Args:
    step: ``step(train_state, batch) -> (train_state, metrics)``, traceable; ``metrics`` a
      dict of scalars (all checked for NaN/Inf). Compiled here over ``parallel``'s mesh.
    fresh: the state to start from without resume (host arrays); also the template a
      checkpoint is restored into.
    batches: ``batches(start_step)`` yields the global batch of each step from ``start_step``
      on (host arrays, leading axis the batch; the same on every process).
    recipe: ``steps`` and the recipe recorded in (and checked against) the checkpoint.
    workdir: checkpoint and metrics; ``None`` keeps neither (no resume).
    options: resume/overwrite, checkpoint and log intervals, ``until_step``, progress bar.
    parallel: the devices (default: every device of the run).
    files: the checkpoint's and metrics' file names.
    desc: the progress bar's label.
    postfix: the progress bar's figures from the logged metrics (default: all of them).

  Raises:
    FileExistsError, FileNotFoundError, ValueError: the resume rule
      (:mod:`vqzoo.training.checkpoint`).
    FloatingPointError: a metric, or the parameters at a checkpoint, became NaN or Inf; the
      message gives the step and the checkpoint left in ``workdir``.
    RuntimeError: in a multi-process run, a collective failed (another process died).
  """
  from tqdm.auto import tqdm

  parallel = parallel or DataParallel()
  parallel.check_batch_size(recipe.batch_size)
  writer = jax.process_index() == 0  # the one process that writes to workdir
  recipe_record = recipe.to_dict()
  ckpt = None
  if workdir is not None:
    workdir = Path(workdir)
    ckpt = checkpoint.prepare_workdir(workdir, files.checkpoint, files.metrics, options.resume,
                                      options.overwrite, writer)
    if ckpt is not None:
      checkpoint.check_recipe(ckpt, recipe_record, recipe.steps, options.extend_schedule)
  elif options.resume:
    raise ValueError("resume=True needs a workdir holding the checkpoint to continue")
  ts = fresh if ckpt is None else checkpoint.restore(ckpt, fresh)
  del ckpt
  start = int(ts.step)
  ckpt_path = None if workdir is None else workdir / files.checkpoint
  metrics_path = None if workdir is None else workdir / files.metrics
  if writer and metrics_path is not None:
    _truncate_metrics(metrics_path, start)
  if jax.process_count() > 1:  # every process has checked the workdir before process 0 writes
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("vqzoo.training.loop: start")
  stop = recipe.steps if options.until_step is None else min(options.until_step, recipe.steps)
  if stop <= start and (not options.resume or options.extend_schedule) and writer and ckpt_path:
    checkpoint.save(ckpt_path, ts, recipe_record)  # e.g. until_step=0: the fresh state
  compiled = parallel.compile(step)
  dts = parallel.replicate(ts)
  bar = tqdm(total=recipe.steps, initial=start, disable=not (options.progress and writer),
             desc=desc, dynamic_ncols=True)
  if start < stop:
    bar.set_postfix_str("compiling the step...")
  last: dict[str, float] = {}
  last_finite = start  # the last step whose metrics were checked (or the starting state)
  current = start
  log_file = open(metrics_path if writer and metrics_path is not None else os.devnull, "a")
  try:
    with log_file, _peer_failures(ckpt_path, lambda: current):
      in_flight = None  # the previous step's metrics: the bar counts completed steps
      source = batches(start)
      for current in range(start, stop):
        dts, metrics = compiled(dts, parallel.shard(next(source)))
        if in_flight is not None:
          jax.block_until_ready(in_flight)
          bar.update(1)
          if current == start + 1 and not last:
            bar.set_postfix_str("")  # compiled: the first step has run
        in_flight = metrics
        done = current + 1
        log = done % options.log_every == 0 or done == stop
        save = ckpt_path is not None and (done % options.checkpoint_every == 0 or done == stop)
        if log or save:
          values = {k: float(v) for k, v in to_host(metrics).items()}
          if not all(math.isfinite(v) for v in values.values()):
            raise _non_finite(f"metrics {values}", done, last_finite, ckpt_path)
          last_finite = done
        if log:
          last = values
          log_file.write(json.dumps({"step": done, **last}) + "\n")
          log_file.flush()
          bar.set_postfix(postfix(last) if postfix else {k: f"{v:.4g}" for k, v in last.items()})
        if save:
          host = to_host(dts)
          if not _all_finite((host.params, host.state)):
            raise _non_finite("parameters or state", done, done - 1, ckpt_path)
          if writer:
            checkpoint.save(ckpt_path, host, recipe_record)
      if in_flight is not None:
        jax.block_until_ready(in_flight)
        bar.update(1)
  finally:
    bar.close()
  return LoopResult(to_host(dts), last)


def _all_finite(tree: Any) -> bool:
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.inexact))


def _non_finite(what: str, step: int, last_finite: int, ckpt_path: Path | None
                ) -> FloatingPointError:
  """The error for a run whose ``what`` went NaN/Inf by ``step``, saying what was saved."""
  if step - last_finite <= 1:
    when = f"at step {step}"
  else:
    when = (f"by step {step}: they first appeared between step {last_finite + 1} and step "
            f"{step} (metrics are checked every log_every steps and at checkpoints; log_every=1 "
            "pinpoints the step)")
  if ckpt_path is None:
    saved = "This run keeps no checkpoint."
  elif not ckpt_path.exists():
    saved = f"No checkpoint exists in {ckpt_path.parent}: nothing of this run was saved."
  else:
    at = checkpoint.step_of(ckpt_path)
    saved = (f"A checkpoint file {ckpt_path} exists but cannot be read." if at is None else
             f"The checkpoint {ckpt_path} is from step {at}, before the non-finite values; "
             "nothing later was saved.")
  return FloatingPointError(f"non-finite (NaN or Inf) {what} {when}. {saved} Lower the learning "
                            "rate or check the data.")


@contextlib.contextmanager
def _peer_failures(ckpt_path: Path | None, step: Callable[[], int]) -> Iterator[None]:
  """In a multi-process run, turns a failed collective into an error that says what to do."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    detail = re.sub(r"(Error dispatching computation: )+", "", str(e)).strip()[:300]
    at = None if ckpt_path is None else checkpoint.step_of(ckpt_path)
    saved = (f"the checkpoint {ckpt_path} (if this process can see it) is from step {at}"
             if at is not None else f"no checkpoint {ckpt_path} can be read here")
    raise RuntimeError(
        f"process {jax.process_index()} of {jax.process_count()}: a step's cross-process "
        f"collective failed near step {step() + 1} ({type(e).__name__}: {detail}); "
        f"another process most likely died or was killed (see its log). {saved}: restart every "
        "process with --resume (resume=True) to continue from it") from e


def _truncate_metrics(path: Path, step: int) -> None:
  """Keeps only the lines of ``path`` logged at steps <= ``step`` (and drops torn lines)."""
  if not path.exists():
    return
  text = path.read_text()
  kept = []
  for line in text.splitlines():
    try:
      if json.loads(line)["step"] <= step:
        kept.append(line + "\n")
    except (ValueError, KeyError, TypeError):
      pass  # a line cut short when a run was killed mid-write
  if "".join(kept) != text:
    atomic_write_bytes(path, "".join(kept).encode())
