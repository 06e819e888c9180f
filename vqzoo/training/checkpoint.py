"""The one checkpoint format and the one resume rule of every vqzoo training run.

A checkpoint is one safetensors file: ``params/<module>/<name>``, ``state/<module>/<name>``,
``opt/<i>`` (the optimiser state's leaves in tree order), ``step`` and ``rng``, and in its
metadata the recipe that wrote it (``vqzoo_recipe``, JSON). It is written atomically: a kill
mid-write leaves the previous checkpoint intact.

The resume rule, the same for VQ-VAE training, fine-tuning, prior fitting and classifier
training (:func:`prepare_workdir`, :func:`check_recipe`):

- without ``resume``, a workdir that already holds a checkpoint is an error
  (``FileExistsError``), unless ``overwrite``, which deletes it and its metrics first;
- ``resume`` without a checkpoint is an error (``FileNotFoundError``);
- resuming under another recipe is an error (``ValueError``); only the step count may change,
  with ``extend_schedule``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vqzoo.io import atomic_write_bytes
from vqzoo.pretrained import serialization

RECIPE_KEY = "vqzoo_recipe"


class TrainState(NamedTuple):
  """Everything a run needs to continue bit-exactly."""

  params: dict  # hk.Params
  state: dict  # hk.State ({} for stateless models)
  opt_state: object  # optax.OptState
  step: object  # int32 scalar array
  rng: object  # PRNG key


class Checkpoint(NamedTuple):
  """A checkpoint as read: its flat arrays, its step and the recipe recorded in it."""

  path: Path
  flat: dict[str, np.ndarray]
  step: int
  recipe: dict[str, Any] | None  # None: written before recipes were recorded


def to_bytes(ts: TrainState, recipe: Mapping[str, Any] | None = None) -> bytes:
  """``ts`` (host or device arrays) as safetensors bytes, ``recipe`` in the metadata."""
  ts = jax.device_get(ts)
  extra = {f"opt/{i}": np.asarray(leaf) for i, leaf in
           enumerate(jax.tree_util.tree_leaves(ts.opt_state))}
  extra["step"] = np.asarray(ts.step)
  rng = jnp.asarray(ts.rng)
  extra["rng"] = np.asarray(jax.random.key_data(rng) if jnp.issubdtype(
      rng.dtype, jax.dtypes.prng_key) else rng)
  metadata = {} if recipe is None else {RECIPE_KEY: json.dumps(dict(recipe), sort_keys=True)}
  return serialization.to_bytes(ts.params, ts.state, extra=extra, metadata=metadata)


def save(path: str | os.PathLike, ts: TrainState,
         recipe: Mapping[str, Any] | None = None) -> None:
  """Writes the checkpoint atomically."""
  atomic_write_bytes(path, to_bytes(ts, recipe))


def read(path: str | os.PathLike) -> Checkpoint:
  """Reads a checkpoint; ``ValueError`` naming ``path`` if it is truncated or corrupt."""
  path = Path(path)
  data = path.read_bytes()
  try:
    _, _, flat = serialization.from_bytes(data)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    metadata = header.get("__metadata__") or {}
    step = int(np.asarray(flat["step"]))
    recipe = json.loads(metadata[RECIPE_KEY]) if RECIPE_KEY in metadata else None
    if recipe is not None and not isinstance(recipe, dict):
      raise ValueError(f"its recorded recipe is {type(recipe).__name__}, not a mapping")
  except Exception as e:  # safetensors raises SafetensorError; the header could be anything
    raise ValueError(
        f"checkpoint {path} is truncated or corrupt and cannot be resumed "
        f"({type(e).__name__}: {e}); start afresh with overwrite=True (--overwrite)") from e
  return Checkpoint(path, flat, step, recipe)


def step_of(path: str | os.PathLike) -> int | None:
  """The step of the checkpoint at ``path``; ``None`` if there is none or it is unreadable."""
  try:
    return read(path).step
  except (OSError, ValueError):
    return None


def restore(ckpt: Checkpoint, template: TrainState) -> TrainState:
  """The checkpoint's arrays in the structure of ``template`` (host arrays).

  Raises:
    ValueError: its parameters, state, optimiser state or RNG do not match ``template``.
  """
  flat, path = ckpt.flat, ckpt.path
  params = serialization.unflatten(flat, "params")
  state = serialization.unflatten(flat, "state")
  serialization.check_structure(template.params, params, f"params in {path}")
  serialization.check_structure(template.state, state, f"state in {path}")
  leaves, treedef = jax.tree_util.tree_flatten(template.opt_state)
  names = [f"opt/{i}" for i in range(len(leaves))] + ["rng"]
  expected = [*leaves, template.rng]
  if (any(name not in flat or np.shape(flat[name]) != np.shape(leaf)
          for name, leaf in zip(names, expected)) or f"opt/{len(leaves)}" in flat):
    raise ValueError(f"checkpoint {path}: its optimizer state or RNG does not match this run's "
                     "(were other parts frozen, or is it corrupt?)")
  opt_state = jax.tree_util.tree_unflatten(treedef, [flat[n] for n in names[:-1]])
  return TrainState(params, state, opt_state, np.asarray(flat["step"], np.int32),
                    np.asarray(flat["rng"]))


def load(path: str | os.PathLike, template: TrainState) -> TrainState:
  """Reads and restores the checkpoint at ``path`` into the structure of ``template``."""
  return restore(read(path), template)


def check_recipe(ckpt: Checkpoint, recipe: Mapping[str, Any], steps: int,
                 extend_schedule: bool = False) -> None:
  """Raises ``ValueError`` unless ``ckpt`` can continue under ``recipe`` (``steps`` in all)."""
  if ckpt.step > steps:
    raise ValueError(f"the checkpoint is at step {ckpt.step}, beyond --steps {steps} "
                     f"(recipe.steps): {ckpt.path} cannot continue to fewer steps than it has run")
  if ckpt.recipe is None:
    return  # written before vqzoo recorded recipes in checkpoints: nothing to compare
  saved, current = ckpt.recipe, json.loads(json.dumps(dict(recipe)))
  changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
  if not changed or (changed == ["steps"] and extend_schedule):
    return
  diff = ", ".join(f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
  if changed == ["steps"]:
    hint = ("pass extend_schedule=True (--extend-schedule) to continue with the new step count "
            f"(the learning-rate schedule is then recomputed for it from step {ckpt.step} on)")
  else:
    hint = ("only the step count may change on resume (with extend_schedule=True / "
            "--extend-schedule)")
  raise ValueError(f"the recipe differs from the one that wrote the checkpoint {ckpt.path} "
                   f"({diff}); {hint}, or start afresh with overwrite=True (--overwrite)")


def prepare_workdir(workdir: Path, checkpoint_name: str, metrics_name: str, resume: bool,
                    overwrite: bool, writer: bool = True) -> Checkpoint | None:
  """Applies the resume rule to ``workdir``; returns the checkpoint to resume, if any.

  The process that writes (``writer``) creates ``workdir``, deletes the temporary files of
  writes that were killed midway and, with ``overwrite``, the old checkpoint and metrics.

  Raises:
    ValueError: ``resume`` and ``overwrite`` together, or an unreadable checkpoint.
    FileNotFoundError: ``resume`` but no checkpoint.
    FileExistsError: a checkpoint, but neither ``resume`` nor ``overwrite``.
  """
  if resume and overwrite:
    raise ValueError("resume and overwrite: pass one or the other, not both")
  ckpt_path, metrics_path = workdir / checkpoint_name, workdir / metrics_name
  if writer:
    workdir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(workdir, (checkpoint_name, metrics_name))
  if resume:
    if not ckpt_path.exists():
      raise FileNotFoundError(f"resume=True, but there is no checkpoint {ckpt_path} to resume "
                              "from; start without resume=True (--resume) to train from scratch")
    return read(ckpt_path)
  if ckpt_path.exists() and not overwrite:
    raise FileExistsError(
        f"{workdir} already holds a checkpoint ({ckpt_path}); pass resume=True (--resume) to "
        "continue it, or overwrite=True (--overwrite) to delete it and its metrics and start "
        "afresh")
  if overwrite and writer:
    ckpt_path.unlink(missing_ok=True)
    metrics_path.unlink(missing_ok=True)
  return None


def _remove_stale_temp_files(workdir: Path, names: tuple[str, ...]) -> None:
  """Deletes the temporary files (``.NAME.*.tmp``) that a killed atomic write left behind."""
  stale = re.compile(r"\.(%s)\.[a-z0-9_]+\.tmp" % "|".join(map(re.escape, names)))
  for path in workdir.iterdir():
    if stale.fullmatch(path.name) and path.is_file() and not path.is_symlink():
      path.unlink(missing_ok=True)
