"""Training: optax Adam with warmup + cosine decay, pmapped over local devices.

One code path for one device or many: the step is always ``jax.pmap``-ed over the local
devices with ``pmean``-ed gradients and cross-replica codebook statistics, so a single CPU runs
exactly what an 8-GPU host runs, on one shard. The model is a :class:`~vqzoo.ModelConfig` or
any zero-argument function that makes a :class:`vqzoo.nn.VQVAE` (your own encoder/decoder).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqzoo import cpu_tuning
from vqzoo.configs import ModelConfig, TrainConfig
from vqzoo.io import atomic_write_bytes
from vqzoo.nn import PARTS, ModelSpec, apply_reseeds, build, part_of, part_prefixes
from vqzoo.pretrained import serialization
from vqzoo.training import data as data_lib

AXIS = "batch"
CHECKPOINT_NAME = "checkpoint.safetensors"
METRICS_NAME = "metrics.jsonl"


class TrainState(NamedTuple):
  """Everything a run needs to continue bit-exactly."""

  params: hk.Params
  state: hk.State
  opt_state: optax.OptState
  step: jax.Array
  rng: jax.Array


def _check_frozen(frozen: Iterable[str]) -> set[str]:
  frozen = set(frozen)
  unknown = frozen - set(PARTS)
  if unknown:
    raise ValueError(f"frozen: expected parts among {PARTS}, got {sorted(unknown)}")
  return frozen


def make_optimizer(recipe: TrainConfig, frozen: Iterable[str] = (),
                   model: ModelSpec | None = None) -> optax.GradientTransformation:
  """Adam on a warmup + cosine schedule; ``frozen`` parts of ``model`` get zero updates."""
  frozen = _check_frozen(frozen)
  warmup = min(recipe.warmup_steps, recipe.steps - 1)
  if recipe.schedule == "constant":
    schedule = optax.join_schedules([optax.linear_schedule(0.0, recipe.learning_rate, warmup),
                                     optax.constant_schedule(recipe.learning_rate)], [warmup])
  else:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=recipe.learning_rate, warmup_steps=warmup,
        decay_steps=recipe.steps, end_value=recipe.learning_rate * recipe.final_lr_fraction)
  adam = optax.adam(schedule)
  if not frozen:
    return adam
  if model is None:
    raise ValueError("make_optimizer: freezing parts needs the model, to find them")
  prefixes = part_prefixes(model)
  labels = lambda params: {
      m: {n: ("frozen" if part_of(m, prefixes) in frozen else "train") for n in d}
      for m, d in params.items()}
  return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, labels)


def init_train_state(model: ModelSpec, optimizer: optax.GradientTransformation, seed: int,
                     image_shape: Sequence[int] | None = None, params: hk.Params | None = None,
                     state: hk.State | None = None) -> TrainState:
  """Fresh (or given) params and state, the optimizer state, step 0.

  ``image_shape`` ``(H, W, C)`` is needed to initialise a model given as a factory.
  """
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  if params is None or state is None:
    if image_shape is None:
      if not isinstance(model, ModelConfig):
        raise ValueError("image_shape: needed to initialise a model given as a factory")
      image_shape = model.image_shape
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    init = lambda x: build(model).init(init_rng, x, True)
    if isinstance(model, ModelConfig):
      params, state = init(dummy)
    else:  # a factory's quantizer may name the replica axis: bind it (one replica)
      params, state = jax.tree_util.tree_map(
          lambda v: v[0], jax.vmap(init, axis_name=AXIS)(dummy[None]))
  return TrainState(params, state, optimizer.init(params), jnp.zeros((), jnp.int32), rng)


def make_train_step(model: ModelSpec, optimizer: optax.GradientTransformation,
                    axis_name: str | None = AXIS, frozen: Iterable[str] = ()) -> Callable:
  """``step(train_state, images[B, H, W, C]) -> (train_state, metrics)``.

  With ``axis_name`` the step must run under ``pmap``/``vmap`` with that axis: gradients and
  metrics are averaged, codebook statistics summed across replicas (a factory's quantizer
  must be given ``cross_replica_axis=axis_name`` itself). A frozen ``"codebook"`` keeps its
  statistics and is never re-seeded.
  """
  update_codebook = "codebook" not in _check_frozen(frozen)
  transformed = build(model, axis_name if isinstance(model, ModelConfig) else None,
                      wrap=cpu_tuning.tuned)
  pmean = (lambda x: x) if axis_name is None else (lambda x: jax.lax.pmean(x, axis_name))

  def loss_fn(params, state, rng, images):
    out, new_state = transformed.apply(params, state, rng, images, True, update_codebook)
    return out.loss, (out, new_state)

  def step(ts: TrainState, images):
    rng, apply_rng = jax.random.split(ts.rng)
    grads, (out, new_state) = jax.grad(loss_fn, has_aux=True)(ts.params, ts.state, apply_rng,
                                                              images)
    grads = pmean(grads)
    updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
    params = apply_reseeds(optax.apply_updates(ts.params, updates), out.reseeds)
    metrics = pmean({
        "loss": out.loss, "mse": out.reconstruction_loss, "codebook_loss": out.codebook_loss,
        "commitment_loss": out.commitment_loss, "perplexity": out.perplexity,
    })
    return TrainState(params, new_state, opt_state, ts.step + 1, rng), metrics

  return step


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_bytes(ts: TrainState) -> bytes:
  """Params, state, optimizer state, step and RNG as safetensors bytes."""
  ts = jax.device_get(ts)
  extra = {f"opt/{i}": np.asarray(leaf) for i, leaf in
           enumerate(jax.tree_util.tree_leaves(ts.opt_state))}
  extra["step"] = np.asarray(ts.step)
  extra["rng"] = np.asarray(jax.random.key_data(ts.rng) if jnp.issubdtype(
      ts.rng.dtype, jax.dtypes.prng_key) else ts.rng)
  return serialization.to_bytes(ts.params, ts.state, extra=extra)


def save_checkpoint(path: str | os.PathLike, ts: TrainState) -> None:
  """Atomic: a crash mid-write leaves the previous checkpoint intact."""
  atomic_write_bytes(path, checkpoint_bytes(ts))


def load_checkpoint(path: str | os.PathLike, template: TrainState) -> TrainState:
  """Restores a checkpoint into the structure of ``template``."""
  with open(path, "rb") as f:
    params, state, flat = serialization.from_bytes(f.read())
  serialization.check_structure(template.params, params, f"params in {path}")
  serialization.check_structure(template.state, state, f"state in {path}")
  leaves, treedef = jax.tree_util.tree_flatten(template.opt_state)
  opt_leaves = [flat[f"opt/{i}"] for i in range(len(leaves))]
  opt_state = jax.tree_util.tree_unflatten(treedef, opt_leaves)
  return TrainState(params, state, opt_state, jnp.asarray(flat["step"]), jnp.asarray(flat["rng"]))


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class TrainResult:
  """Final params and state (host arrays), the step reached and the last logged metrics."""

  params: Any
  state: Any
  step: int
  metrics: dict[str, float]


def replicate(tree: Any, num_devices: int) -> Any:
  """Stacks a leading device axis onto every leaf (host arrays; pmap places them)."""
  return jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(x), (num_devices, *np.shape(x))).copy(), tree)


def unreplicate(tree: Any) -> Any:
  """Replica 0 of a :func:`replicate`-d tree."""
  return jax.tree_util.tree_map(lambda x: x[0], tree)


def compile_step(model: ModelSpec, optimizer: optax.GradientTransformation,
                 devices: Sequence[Any], frozen: Iterable[str] = ()) -> Callable:
  """The train step ``jax.pmap``-ed over ``devices`` with the replica axis (one device included).

  Takes a :func:`replicate`-d state and batches ``[n_dev, B / n_dev, ...]``; donates the state.
  Compiled with :mod:`vqzoo.cpu_tuning`'s options; one code path for a laptop and a
  multi-device host.
  """
  return cpu_tuning.pmap(make_train_step(model, optimizer, AXIS, frozen), axis_name=AXIS,
                         devices=list(devices), donate_argnums=(0,))


def _finite_metrics(metrics: Any, step: int, bar: Any) -> dict[str, float]:
  """Host copy of replica 0's metrics; raises FloatingPointError on NaN or Inf."""
  values = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in metrics.items()}
  if not all(math.isfinite(v) for v in values.values()):
    bar.close()
    raise FloatingPointError(
        f"non-finite metrics at step {step}: {values}; no checkpoint was written after the last "
        "finite check. Lower the learning rate or check the data.")
  return values


def _local_batches(images: np.ndarray, recipe: TrainConfig, start: int, n_dev: int
                   ) -> Iterator[np.ndarray]:
  """This process's share of each global batch, as ``[n_dev, B / (hosts * n_dev), ...]``."""
  hosts, index = jax.process_count(), jax.process_index()
  if recipe.batch_size % (hosts * n_dev):
    raise ValueError(f"batch_size: expected a multiple of {hosts * n_dev} (hosts x local "
                     f"devices), got {recipe.batch_size}")
  share = recipe.batch_size // hosts
  for batch in data_lib.batches(images, recipe.batch_size, recipe.seed, start):
    local = batch[index * share:(index + 1) * share]
    yield local.reshape(n_dev, share // n_dev, *local.shape[1:])


def train(model: ModelSpec, recipe: TrainConfig, workdir: str | os.PathLike,
          images: np.ndarray | None = None, data_dir: str | None = None, resume: bool = False,
          init_params: hk.Params | None = None, init_state: hk.State | None = None,
          frozen: Iterable[str] = (), checkpoint_every: int = 1000, log_every: int = 50,
          progress: bool = True, devices: Sequence[Any] | None = None,
          until_step: int | None = None) -> TrainResult:
  """Trains ``model`` by ``recipe``, checkpointing to ``workdir``.

  Args:
    model: a :class:`ModelConfig`, or a zero-argument function making a
      :class:`vqzoo.nn.VQVAE` (give its quantizer ``cross_replica_axis="batch"`` to train on
      several devices).
    recipe: data, steps, batch size, learning rate, seed.
    workdir: holds ``checkpoint.safetensors`` and ``metrics.jsonl``.
    images: ``[N, H, W, C]`` uint8 training images; default: the recipe's TFDS split.
    data_dir: TFDS data directory (see :mod:`vqzoo.training.data`).
    resume: continue from ``workdir``'s checkpoint (bit-exact), if there is one.
    init_params, init_state: start from these (fine-tuning) instead of a fresh init.
    frozen: parts among ``("encoder", "decoder", "codebook")`` that do not train.
    checkpoint_every: steps between atomic checkpoints (and at the end).
    log_every: steps between metric lines, progress-bar updates and NaN checks.
    progress: show a tqdm progress bar.
    devices: devices to pmap over (default: all local devices).
    until_step: stop (with a checkpoint) at this step instead of ``recipe.steps``; a later
      call with ``resume=True`` continues on the same schedule.

  Raises:
    FloatingPointError: the loss became NaN or Inf.
  """
  from tqdm.auto import tqdm

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  devices = list(devices or jax.local_devices())
  n_dev = len(devices)
  if images is None:
    images = data_lib.load_images(recipe.dataset, recipe.split, data_dir)
  if isinstance(model, ModelConfig) and tuple(images.shape[1:]) != model.image_shape:
    raise ValueError(f"training images: expected [N, {', '.join(map(str, model.image_shape))}]"
                     f", got {tuple(images.shape)}")
  optimizer = make_optimizer(recipe, frozen, model)
  ts = init_train_state(model, optimizer, recipe.seed, images.shape[1:], init_params, init_state)
  ckpt_path = workdir / CHECKPOINT_NAME
  if resume and ckpt_path.exists():
    ts = load_checkpoint(ckpt_path, ts)
  start = int(ts.step)
  step_fn = compile_step(model, optimizer, devices, frozen)
  rts = replicate(jax.device_get(ts), n_dev)
  batch_iter = _local_batches(images, recipe, start, n_dev)
  last: dict[str, float] = {}
  bar = tqdm(total=recipe.steps, initial=start, disable=not progress, desc="train",
             dynamic_ncols=True)
  stop = recipe.steps if until_step is None else min(until_step, recipe.steps)
  with open(workdir / METRICS_NAME, "a") as log_file:
    for step in range(start, stop):
      rts, metrics = step_fn(rts, next(batch_iter))
      done = step + 1
      if done % log_every == 0 or done == stop:
        last = _finite_metrics(metrics, done, bar)
        log_file.write(json.dumps({"step": done, **last}) + "\n")
        log_file.flush()
        bar.set_postfix(loss=f"{last['loss']:.4f}", mse=f"{last['mse']:.4f}",
                        ppl=f"{last['perplexity']:.1f}")
      bar.update(1)
      if done % checkpoint_every == 0 or done == stop:
        _finite_metrics(metrics, done, bar)
        save_checkpoint(ckpt_path, unreplicate(rts))
  bar.close()
  final = jax.device_get(unreplicate(rts))
  return TrainResult(final.params, final.state, int(final.step), last)
