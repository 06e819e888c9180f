"""Training: optax Adam with warmup + cosine decay, pmapped over local devices.

One code path for one device or many: the step is always ``jax.pmap``-ed over the local
devices with ``pmean``-ed gradients and cross-replica EMA statistics, so a single CPU runs
exactly what an 8-GPU host runs, on one shard.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqzoo import data as data_lib
from vqzoo import compilation, serialization
from vqzoo.configs import ModelConfig, TrainConfig
from vqzoo.io import atomic_write_bytes
from vqzoo.model import build
from vqzoo.quantizers import reseed_dead_codes

AXIS = "batch"
QUANTIZER = "vqvae/~/quantizer"
CHECKPOINT_NAME = "checkpoint.safetensors"
METRICS_NAME = "metrics.jsonl"
PARTS = ("encoder", "decoder", "codebook")


class TrainState(NamedTuple):
  params: hk.Params
  state: hk.State
  opt_state: optax.OptState
  step: jax.Array
  rng: jax.Array


def part_of(module: str) -> str:
  """Which of :data:`PARTS` a haiku module path belongs to."""
  if module.startswith("vqvae/~/encoder"):
    return "encoder"
  if module.startswith("vqvae/~/decoder"):
    return "decoder"
  return "codebook"


def make_optimizer(recipe: TrainConfig, frozen: Iterable[str] = ()) -> optax.GradientTransformation:
  """Adam on a warmup + cosine schedule; ``frozen`` parts get zero updates."""
  frozen = set(frozen)
  unknown = frozen - set(PARTS)
  if unknown:
    raise ValueError(f"frozen: expected parts among {PARTS}, got {sorted(unknown)}")
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
  labels = lambda params: {m: {n: ("frozen" if part_of(m) in frozen else "train") for n in d}
                           for m, d in params.items()}
  return optax.multi_transform({"train": adam, "frozen": optax.set_to_zero()}, labels)


def init_train_state(config: ModelConfig, optimizer, seed: int, params=None,
                     state=None) -> TrainState:
  """Fresh (or given) params and state, the optimizer state, step 0."""
  init_rng, rng = jax.random.split(jax.random.PRNGKey(seed))
  if params is None or state is None:
    dummy = jnp.zeros((1, *config.image_shape), jnp.float32)
    params, state = build(config).init(init_rng, dummy, True)
  return TrainState(params, state, optimizer.init(params), jnp.zeros((), jnp.int32), rng)


def make_train_step(config: ModelConfig, optimizer, axis_name: str | None = AXIS,
                    frozen: Iterable[str] = ()) -> Callable:
  """``step(train_state, images[B, H, W, C]) -> (train_state, metrics)``.

  With ``axis_name`` the step must run under ``pmap``/``vmap`` with that axis:
  gradients and metrics are averaged, EMA statistics summed across replicas.
  A frozen ``"codebook"`` keeps its EMA state and is never re-seeded.
  """
  frozen = set(frozen)
  model = build(config, cross_replica_axis=axis_name)
  q = config.quantizer
  pmean = (lambda x: x) if axis_name is None else (lambda x: jax.lax.pmean(x, axis_name))

  def loss_fn(params, state, rng, images):
    out, new_state = model.apply(params, state, rng, images, True)
    return out.loss, (out, new_state)

  def step(ts: TrainState, images):
    rng, apply_rng, reseed_rng = jax.random.split(ts.rng, 3)
    grads, (out, new_state) = jax.grad(loss_fn, has_aux=True)(ts.params, ts.state, apply_rng,
                                                              images)
    grads = pmean(grads)
    updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
    params = optax.apply_updates(ts.params, updates)
    if "codebook" in frozen:
      new_state = {**new_state, QUANTIZER: ts.state[QUANTIZER]}
    elif not q.ema and q.dead_code_threshold > 0:
      params, new_state = _reseed_param_codebook(params, new_state, out.z_e, reseed_rng,
                                                 q.dead_code_threshold, axis_name)
    metrics = pmean({
        "loss": out.loss, "mse": out.reconstruction_loss, "codebook_loss": out.codebook_loss,
        "commitment_loss": out.commitment_loss, "perplexity": out.perplexity,
    })
    return TrainState(params, new_state, opt_state, ts.step + 1, rng), metrics

  return step


def _reseed_param_codebook(params, state, z_e, rng, threshold, axis_name):
  flat_z = jnp.reshape(z_e, (-1, z_e.shape[-1]))
  if axis_name is not None:
    flat_z = jax.lax.all_gather(flat_z, axis_name, tiled=True)
  qp, qs = params[QUANTIZER], state[QUANTIZER]
  codebook, dead = reseed_dead_codes(qp["codebook"], qs["usage"], flat_z, threshold, rng)
  # A re-seeded code gets the threshold as its usage: one unused batch later it is re-seeded again.
  usage = jnp.where(dead, threshold, qs["usage"])
  return ({**params, QUANTIZER: {**qp, "codebook": codebook}},
          {**state, QUANTIZER: {**qs, "usage": usage}})


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
  params: Any
  state: Any
  step: int
  metrics: dict[str, float]
  images_per_second: float


def replicate(tree, num_devices: int):
  """Stacks a leading device axis onto every leaf (host arrays; pmap places them)."""
  return jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(x), (num_devices, *np.shape(x))).copy(), tree)


def unreplicate(tree):
  return jax.tree_util.tree_map(lambda x: x[0], tree)


def compile_step(config: ModelConfig, optimizer, devices, frozen: Iterable[str] = ()):
  """The train step ``jax.pmap``-ed over ``devices`` with the replica axis (one device included).

  Takes a :func:`replicate`-d state and batches ``[n_dev, B / n_dev, ...]``; donates the state.
  Compiled with :mod:`vqzoo.compilation`'s options. On one CPU device pmap measured as fast as
  plain jit for the conv models and ~20% slower for the MLP at batch 128, whose 1 ms steps
  show pmap's dispatch cost (BENCHMARKS.md); a laptop runs the code path of a multi-device host.
  """
  return compilation.pmap(make_train_step(config, optimizer, AXIS, frozen), axis_name=AXIS,
                          devices=list(devices), donate_argnums=(0,))


def _finite_metrics(metrics, step: int, ckpt_path: Path, bar) -> dict[str, float]:
  """Host copy of replica 0's metrics; raises FloatingPointError on NaN or Inf."""
  values = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in metrics.items()}
  if not all(math.isfinite(v) for v in values.values()):
    bar.close()
    raise FloatingPointError(
        f"non-finite metrics at step {step}: {values}; the last good checkpoint ({ckpt_path}) "
        "is kept. Lower the learning rate or check the data.")
  return values


def _local_batches(images, recipe: TrainConfig, start: int, n_dev: int):
  """This process's share of each global batch, as ``[n_dev, B / (hosts * n_dev), ...]``."""
  hosts, index = jax.process_count(), jax.process_index()
  if recipe.batch_size % (hosts * n_dev):
    raise ValueError(f"batch_size: expected a multiple of {hosts * n_dev} (hosts x local "
                     f"devices), got {recipe.batch_size}")
  share = recipe.batch_size // hosts
  for batch in data_lib.batches(images, recipe.batch_size, recipe.seed, start):
    local = batch[index * share:(index + 1) * share]
    yield local.reshape(n_dev, share // n_dev, *local.shape[1:])


def train(config: ModelConfig, recipe: TrainConfig, workdir: str | os.PathLike,
          images: np.ndarray | None = None, data_dir: str | None = None, resume: bool = False,
          init_params=None, init_state=None, frozen: Iterable[str] = (),
          checkpoint_every: int = 1000, log_every: int = 50, progress: bool = True,
          devices=None, on_log: Callable[[int, Mapping[str, float]], None] | None = None,
          until_step: int | None = None) -> TrainResult:
  """Trains ``config`` by ``recipe``, checkpointing to ``workdir``.

  Args:
    config: the model.
    recipe: data, steps, batch size, learning rate, seed.
    workdir: holds ``checkpoint.safetensors`` and ``metrics.jsonl``.
    images: ``[N, H, W, C]`` uint8 training images; default: the recipe's TFDS split.
    data_dir: TFDS data directory (see :mod:`vqzoo.data`).
    resume: continue from ``workdir``'s checkpoint (bit-exact), if there is one.
    init_params, init_state: start from these (fine-tuning) instead of a fresh init.
    frozen: parts among ``("encoder", "decoder", "codebook")`` that do not train.
    checkpoint_every: steps between atomic checkpoints (and at the end).
    log_every: steps between metric lines, progress-bar updates and NaN checks.
    progress: show a tqdm progress bar.
    devices: devices to pmap over (default: all local devices).
    on_log: called as ``on_log(step, metrics)`` at every log line.
    until_step: stop (with a checkpoint) at this step instead of ``recipe.steps``; a later
      call with ``resume=True`` continues on the same schedule.

  Raises:
    FloatingPointError: the loss became NaN or Inf; the last good checkpoint is kept.
  """
  from tqdm.auto import tqdm

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  devices = list(devices or jax.local_devices())
  n_dev = len(devices)
  if images is None:
    images = data_lib.load_images(recipe.dataset, recipe.split, data_dir)
  if tuple(images.shape[1:]) != config.image_shape:
    raise ValueError(f"training images: expected [N, {', '.join(map(str, config.image_shape))}]"
                     f", got {tuple(images.shape)}")
  optimizer = make_optimizer(recipe, frozen)
  ts = init_train_state(config, optimizer, recipe.seed, init_params, init_state)
  ckpt_path = workdir / CHECKPOINT_NAME
  if resume and ckpt_path.exists():
    ts = load_checkpoint(ckpt_path, ts)
  start = int(ts.step)
  step_fn = compile_step(config, optimizer, devices, frozen)
  rts = replicate(jax.device_get(ts), n_dev)
  batch_iter = _local_batches(images, recipe, start, n_dev)
  last: dict[str, float] = {}
  bar = tqdm(total=recipe.steps, initial=start, disable=not progress, desc="train",
             dynamic_ncols=True)
  t0, images_seen = time.perf_counter(), 0
  stop = recipe.steps if until_step is None else min(until_step, recipe.steps)
  with open(workdir / METRICS_NAME, "a") as log_file:
    for step in range(start, stop):
      rts, metrics = step_fn(rts, next(batch_iter))
      images_seen += recipe.batch_size
      done = step + 1
      if done % log_every == 0 or done == stop:
        last = _finite_metrics(metrics, done, ckpt_path, bar)
        log_file.write(json.dumps({"step": done, **last}) + "\n")
        log_file.flush()
        bar.set_postfix(loss=f"{last['loss']:.4f}", mse=f"{last['mse']:.4f}",
                        ppl=f"{last['perplexity']:.1f}")
        if on_log is not None:
          on_log(done, last)
      bar.update(1)
      if done % checkpoint_every == 0 or done == stop:
        _finite_metrics(metrics, done, ckpt_path, bar)
        save_checkpoint(ckpt_path, unreplicate(rts))
  bar.close()
  elapsed = time.perf_counter() - t0
  final = jax.device_get(unreplicate(rts))
  return TrainResult(final.params, final.state, int(final.step), last,
                     images_seen / elapsed if elapsed > 0 else float("nan"))
