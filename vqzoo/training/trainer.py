"""VQ-VAE training: optax Adam on :func:`~vqzoo.training.loop.learning_rate_schedule`,
data-parallel over every device of the run, through the one loop of
:mod:`vqzoo.training.loop`.

The step is one ``jax.jit`` program over a device mesh (:mod:`vqzoo.training.parallel`): the
global batch is split over the devices, everything else is replicated, and the codebook
statistics, code counts and dead-code re-seeding are those of the global batch by
construction. One device, several, or the devices of several processes
(:mod:`vqzoo.training.distributed`) run the same program; only process 0 writes.

The model is a :class:`~vqzoo.ModelConfig` or any zero-argument function that makes a
:class:`vqzoo.nn.VQVAE` (your own encoder/decoder).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Iterable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqzoo import cpu_tuning
from vqzoo.configs import PARTS, ModelConfig, RunConfig, TrainConfig
from vqzoo.nn import ModelSpec, apply_reseeds, build, part_of, part_prefixes
from vqzoo.training import checkpoint, loop
from vqzoo.training import data as data_lib
from vqzoo.training.checkpoint import TrainState
from vqzoo.training.parallel import DataParallel

#: The axis a factory's quantizer may name (``cross_replica_axis``), and the one
#: :func:`make_train_step` averages over when it runs under the user's own ``jax.pmap``.
AXIS = "batch"
CHECKPOINT_NAME = "checkpoint.safetensors"
METRICS_NAME = "metrics.jsonl"
FILES = loop.LoopFiles(CHECKPOINT_NAME, METRICS_NAME)


def _check_frozen(frozen: Iterable[str]) -> set[str]:
  frozen = set(frozen)
  unknown = frozen - set(PARTS)
  if unknown:
    raise ValueError(f"frozen: expected parts among {PARTS}, got {sorted(unknown)}")
  return frozen


def make_optimizer(recipe: TrainConfig, frozen: Iterable[str] = (),
                   model: ModelSpec | None = None) -> optax.GradientTransformation:
  """Adam on a warmup + cosine schedule; ``frozen`` parts of ``model`` get zero updates.

  Equal arguments give the same object, so the functions built on it (the init and the step)
  are the same too and compile once per process (:func:`vqzoo.cpu_tuning.memoize`).
  """
  frozen = frozenset(_check_frozen(frozen))
  return _optimizer(recipe, frozen, model if frozen else None)


@cpu_tuning.memoize
def _optimizer(recipe: TrainConfig, frozen: frozenset[str], model: ModelSpec | None
               ) -> optax.GradientTransformation:
  adam = optax.adam(loop.learning_rate_schedule(recipe))
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
  step = jnp.zeros((), jnp.int32)
  # Compiled whole: op by op, every operation compiles on its own (10 s for a conv model's
  # init on the CPU, against 1.7 s compiled whole by jit_once, or 0.6 s from the compilation
  # cache); the values are the same.
  if params is not None and state is not None:
    return TrainState(params, state, cpu_tuning.jit_once(optimizer.init)(params), step, rng)
  if image_shape is None:
    if not isinstance(model, ModelConfig):
      raise ValueError("image_shape: needed to initialise a model given as a factory")
    image_shape = model.image_shape
  image_shape = tuple(image_shape)
  build_fresh = _config_fresh_state if isinstance(model, ModelConfig) else _fresh_state
  fresh = build_fresh(model, optimizer, seed, image_shape)
  params, state, opt_state = cpu_tuning.jit_once(fresh)(jnp.zeros((1, *image_shape), jnp.float32))
  return TrainState(params, state, opt_state, step, rng)


def _fresh_state(model: ModelSpec, optimizer: optax.GradientTransformation, seed: int,
                 image_shape: tuple[int, ...]) -> Callable:
  """``fresh(x) -> (params, state, opt_state)``: ``model`` initialised on ``x`` by ``seed``."""
  init_rng = jax.random.split(jax.random.PRNGKey(seed))[0]
  init = lambda x: build(model).init(init_rng, x, True)
  if not isinstance(model, ModelConfig):  # a factory's quantizer may name the replica axis:
    init = _bind_axis(init)                # bind it (one replica)

  def fresh(x):
    params, state = init(x)
    return params, state, optimizer.init(params)
  return fresh


# A config's init, built once per process (a factory may differ between calls: built anew).
_config_fresh_state = cpu_tuning.memoize(_fresh_state)


def _bind_axis(fn: Callable) -> Callable:
  """``fn`` with :data:`AXIS` bound as a one-replica axis, for a factory's quantizer that names
  it: its cross-replica sums are then over the whole (global) batch, as under ``jit``."""

  def bound(*args):
    out = jax.vmap(fn, axis_name=AXIS)(*jax.tree_util.tree_map(lambda x: x[None], args))
    return jax.tree_util.tree_map(lambda x: x[0], out)
  return bound


def make_train_step(model: ModelSpec, optimizer: optax.GradientTransformation,
                    axis_name: str | None = None, frozen: Iterable[str] = (),
                    compute_dtype: str | None = None) -> Callable:
  """``step(train_state, images[B, H, W, C]) -> (train_state, metrics)``.

  Without ``axis_name`` (how :func:`train` runs it, under ``jit`` over a mesh) the batch is the
  global batch. With ``axis_name`` the step must run under the caller's ``pmap``/``vmap``
  with that axis: gradients and metrics are averaged, codebook statistics summed across
  replicas (a factory's quantizer must be given ``cross_replica_axis=axis_name`` itself). A
  frozen ``"codebook"`` keeps its statistics and is never re-seeded. ``compute_dtype``
  (``recipe.compute_dtype``; ``None``: the model's own) is what the encoder and decoder compute
  in; params, gradients and the optimizer state stay float32 (see :mod:`vqzoo.nn.vqvae`).
  """
  update_codebook = "codebook" not in _check_frozen(frozen)
  transformed = build(model, axis_name if isinstance(model, ModelConfig) else None,
                      wrap=cpu_tuning.tuned, compute_dtype=compute_dtype)
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


def compile_step(model: ModelSpec, optimizer: optax.GradientTransformation,
                 devices: Sequence[Any] | None = None, frozen: Iterable[str] = (),
                 compute_dtype: str | None = None) -> tuple[Callable, DataParallel]:
  """The step exactly as :func:`train` runs it, for benchmarks and custom loops
  (``compute_dtype`` as for :func:`make_train_step`).

  Returns:
    ``(step, parallel)``: ``step(state, batch) -> (state, metrics)`` jitted over
    ``parallel``'s mesh (``state`` from ``parallel.replicate``, donated; ``batch`` from
    ``parallel.shard``, a global ``[B, H, W, C]`` float batch).
  """
  parallel = DataParallel(devices)
  return parallel.compile(_global_step(model, optimizer, frozen, compute_dtype)), parallel


def _global_step(model: ModelSpec, optimizer: optax.GradientTransformation,
                 frozen: Iterable[str], compute_dtype: str | None = None) -> Callable:
  """The step on the global batch, as :func:`train` and :func:`compile_step` run it (the same
  function for equal arguments when ``model`` is a :class:`ModelConfig`)."""
  frozen = frozenset(frozen)
  if isinstance(model, ModelConfig):
    return _config_step(model, optimizer, frozen, compute_dtype)
  return _bind_axis(make_train_step(model, optimizer, frozen=frozen, compute_dtype=compute_dtype))


@cpu_tuning.memoize
def _config_step(model: ModelConfig, optimizer: optax.GradientTransformation,
                 frozen: frozenset[str], compute_dtype: str | None) -> Callable:
  return make_train_step(model, optimizer, frozen=frozen, compute_dtype=compute_dtype)


@dataclasses.dataclass
class TrainResult:
  """Final params and state (host arrays), the step reached and the last logged metrics."""

  params: Any
  state: Any
  step: int
  metrics: dict[str, float]


def save_checkpoint(path: str | os.PathLike, ts: TrainState,
                    recipe: TrainConfig | None = None) -> None:
  """Atomic: a crash mid-write leaves the previous checkpoint intact."""
  checkpoint.save(path, ts, None if recipe is None else recipe.to_dict())


load_checkpoint = checkpoint.load
checkpoint_step = checkpoint.step_of


def train(model: ModelSpec, recipe: TrainConfig, workdir: str | os.PathLike,
          images: np.ndarray | None = None, *, run: RunConfig = RunConfig(),
          init: tuple[hk.Params, hk.State] | None = None, frozen: Iterable[str] = (),
          devices: Sequence[Any] | None = None, data_dir: str | None = None) -> TrainResult:
  """Trains ``model`` by ``recipe``, checkpointing to ``workdir``, through the one loop.

  In a multi-process run (:func:`vqzoo.training.distributed.initialize` first) every process
  calls this with the same arguments: one step spans the devices of all processes. Only
  process 0 writes to ``workdir``; with ``run.resume`` every process reads the checkpoint, so
  ``workdir`` must be on a shared file system (or hold a copy on every host). All processes
  return the same result.

  Args:
    model: a :class:`ModelConfig`, or a zero-argument function making a
      :class:`vqzoo.nn.VQVAE` (its quantizer sees the global batch; a
      ``cross_replica_axis="batch"`` it was given is bound to one replica).
    recipe: data, steps, batch size, learning rate, seed, compute dtype (mixed precision with
      ``"bfloat16"``); recorded in the checkpoint.
    workdir: holds ``checkpoint.safetensors`` and ``metrics.jsonl`` (one line per logged step).
    images: ``[N, H, W, C]`` uint8 training images; default: the recipe's TFDS split.
    run: resume/overwrite, checkpoint and log intervals, ``until_step``, progress bar (see
      :class:`~vqzoo.configs.RunConfig` and the resume rule of
      :mod:`vqzoo.training.checkpoint`).
    init: ``(params, state)`` to start from (fine-tuning) instead of a fresh init; ignored on
      resume.
    frozen: parts among ``("encoder", "decoder", "codebook")`` that do not train.
    devices: the devices of one step (default: every device of the run).
    data_dir: TFDS data directory (see :mod:`vqzoo.training.data`).

  Raises:
    FileExistsError, FileNotFoundError, ValueError: the workdir does not fit ``run`` (the
      resume rule), the checkpoint is corrupt or of another recipe, or the images do not fit.
    FloatingPointError: a metric, or the parameters at a checkpoint, became NaN or Inf.
    RuntimeError: in a multi-process run, a collective failed (another process died).
  """
  parallel = DataParallel(devices)
  if images is None:
    images = data_lib.load_images(recipe.dataset, recipe.split, data_dir)
  if isinstance(model, ModelConfig) and tuple(images.shape[1:]) != model.image_shape:
    raise ValueError(f"training images: expected [N, {', '.join(map(str, model.image_shape))}]"
                     f", got {tuple(images.shape)}")
  optimizer = make_optimizer(recipe, frozen, model)
  params, state = (None, None) if init is None else init
  fresh = jax.device_get(init_train_state(model, optimizer, recipe.seed, images.shape[1:],
                                          params, state))
  # The loop compiles it over the mesh. A float32 recipe leaves a factory's model as it is.
  dtype = None if recipe.compute_dtype == "float32" else recipe.compute_dtype
  step = _global_step(model, optimizer, frozen, dtype)
  batches = lambda start: data_lib.batches(images, recipe.batch_size, recipe.seed, start)
  result = loop.run(step, fresh, batches, recipe, workdir, run, parallel=parallel, files=FILES,
                    postfix=lambda m: {"loss": f"{m['loss']:.4f}", "mse": f"{m['mse']:.4f}",
                                       "ppl": f"{m['perplexity']:.1f}"})
  final = result.state
  return TrainResult(final.params, final.state, int(final.step), result.metrics)
