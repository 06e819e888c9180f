"""Training: optax Adam with warmup + cosine decay, data-parallel over every device of the run.

One code path for one device or many, one process or many: the step always runs as
``jax.pmap`` runs it (``jax.shard_map`` over a one-axis mesh, compiled by ``jax.jit`` with
:mod:`vqzoo.cpu_tuning`'s options), over the local devices of a single process or over the
devices of all processes of a multi-process run (:mod:`vqzoo.training.distributed`), with
``pmean``-ed gradients and codebook statistics, code counts and dead-code re-seeding reduced
across all replicas: a single CPU runs exactly what many hosts run, on one shard. Each process feeds only its replicas' rows
of every global batch; only process 0 writes checkpoints and metrics; every process can resume
from the checkpoint. That the replicas stay identical is checked, not assumed: a fingerprint of
every replica's state is compared at the first step, at every logged step and before every
checkpoint.

The model is a :class:`~vqzoo.ModelConfig` or any zero-argument function that makes a
:class:`vqzoo.nn.VQVAE` (your own encoder/decoder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from vqzoo import cpu_tuning
from vqzoo.configs import ModelConfig, TrainConfig
from vqzoo.io import atomic_write_bytes
from vqzoo.nn import PARTS, ModelSpec, apply_reseeds, build, part_of, part_prefixes
from vqzoo.pretrained import serialization
from vqzoo.training import data as data_lib

AXIS = "batch"
CHECKPOINT_NAME = "checkpoint.safetensors"
METRICS_NAME = "metrics.jsonl"
RECIPE_KEY = "vqzoo_recipe"  # checkpoint metadata: the TrainConfig that wrote it, as JSON
# The temporary files vqzoo.io.atomic_write_bytes leaves behind when killed mid-write.
_STALE_TEMP = re.compile(
    r"\.(%s)\.[a-z0-9_]+\.tmp" % "|".join(map(re.escape, (CHECKPOINT_NAME, METRICS_NAME))))


class TrainState(NamedTuple):
  """Everything a run needs to continue bit-exactly."""

  params: dict  # hk.Params
  state: dict  # hk.State
  opt_state: object  # optax.OptState
  step: object  # int32 scalar array
  rng: object  # PRNG key


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


def checkpoint_bytes(ts: TrainState, recipe: TrainConfig | None = None) -> bytes:
  """Params, state, optimizer state, step and RNG as safetensors bytes.

  ``recipe``, when given, is recorded in the metadata, so that a resumed run can check it.
  """
  ts = jax.device_get(ts)
  extra = {f"opt/{i}": np.asarray(leaf) for i, leaf in
           enumerate(jax.tree_util.tree_leaves(ts.opt_state))}
  extra["step"] = np.asarray(ts.step)
  extra["rng"] = np.asarray(jax.random.key_data(ts.rng) if jnp.issubdtype(
      ts.rng.dtype, jax.dtypes.prng_key) else ts.rng)
  metadata = {} if recipe is None else {RECIPE_KEY: json.dumps(recipe.to_dict(), sort_keys=True)}
  return serialization.to_bytes(ts.params, ts.state, extra=extra, metadata=metadata)


def save_checkpoint(path: str | os.PathLike, ts: TrainState,
                    recipe: TrainConfig | None = None) -> None:
  """Atomic: a crash mid-write leaves the previous checkpoint intact."""
  atomic_write_bytes(path, checkpoint_bytes(ts, recipe))


def _read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """A checkpoint's flat arrays and metadata; ``ValueError`` naming ``path`` if unreadable."""
  data = path.read_bytes()
  try:
    _, _, flat = serialization.from_bytes(data)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    metadata = header.get("__metadata__") or {}
    int(np.asarray(flat["step"]))  # every checkpoint has a scalar step
  except Exception as e:  # safetensors raises SafetensorError; the header could be anything
    raise ValueError(
        f"checkpoint {path} is truncated or corrupt and cannot be resumed "
        f"({type(e).__name__}: {e}); start afresh with overwrite=True (--overwrite)") from e
  return flat, metadata


def _restore(path: Path, flat: dict[str, np.ndarray], template: TrainState) -> TrainState:
  """The checkpoint ``flat`` (read from ``path``) in the structure of ``template``."""
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
  return TrainState(params, state, opt_state, jnp.asarray(flat["step"]), jnp.asarray(flat["rng"]))


def load_checkpoint(path: str | os.PathLike, template: TrainState) -> TrainState:
  """Restores a checkpoint into the structure of ``template``.

  Raises:
    ValueError: the file is truncated or corrupt, or does not match ``template``; the message
      names ``path``.
  """
  path = Path(path)
  return _restore(path, _read_checkpoint(path)[0], template)


def checkpoint_step(path: str | os.PathLike) -> int | None:
  """The step of the checkpoint at ``path``; ``None`` if there is none or it is unreadable."""
  try:
    return int(np.asarray(_read_checkpoint(Path(path))[0]["step"]))
  except (OSError, ValueError):
    return None


def _check_resumable(path: Path, flat: dict[str, np.ndarray], metadata: dict[str, str],
                     recipe: TrainConfig, extend_schedule: bool) -> None:
  """Raises ``ValueError`` unless the checkpoint at ``path`` can continue under ``recipe``."""
  step = int(np.asarray(flat["step"]))
  if step > recipe.steps:
    raise ValueError(f"the checkpoint is at step {step}, beyond --steps {recipe.steps} "
                     f"(recipe.steps): {path} cannot continue to fewer steps than it has run")
  if RECIPE_KEY not in metadata:
    return  # written before vqzoo recorded recipes in checkpoints: nothing to compare
  try:
    saved = json.loads(metadata[RECIPE_KEY])
    saved = dict(saved)
  except (TypeError, ValueError) as e:
    raise ValueError(f"checkpoint {path}: its recorded recipe is corrupt ({e})") from e
  current = json.loads(json.dumps(recipe.to_dict()))
  changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
  if not changed or (changed == ["steps"] and extend_schedule):
    return
  diff = ", ".join(f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
  if changed == ["steps"]:
    hint = ("pass extend_schedule=True (--extend-schedule) to continue with the new step count "
            f"(the learning-rate schedule is then recomputed for it from step {step} on)")
  else:
    hint = ("only the step count may change on resume (with extend_schedule=True / "
            "--extend-schedule)")
  raise ValueError(f"the recipe differs from the one that wrote the checkpoint {path} ({diff}); "
                   f"{hint}, or start afresh with overwrite=True (--overwrite)")


def _remove_stale_temp_files(workdir: Path) -> None:
  """Deletes the temporary files of checkpoint/metrics writes that were killed midway."""
  for path in workdir.iterdir():
    if _STALE_TEMP.fullmatch(path.name) and path.is_file() and not path.is_symlink():
      path.unlink(missing_ok=True)


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


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class TrainResult:
  """Final params and state (host arrays), the step reached and the last logged metrics."""

  params: Any
  state: Any
  step: int
  metrics: dict[str, float]


def replicate(tree: Any, num_devices: int) -> Any:
  """Stacks a leading device axis onto every leaf (host arrays; the compiled step places them)."""
  return jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(x), (num_devices, *np.shape(x))).copy(), tree)


def _first_local_replica(x: Any) -> Any:
  """Replica 0 of this process: of a host array, or of a (possibly global) ``jax.Array``."""
  if isinstance(x, jax.Array):
    shard = min(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return shard.data[0]
  return x[0]


def unreplicate(tree: Any) -> Any:
  """This process's first replica of a :func:`replicate`-d tree (or of a step's output)."""
  return jax.tree_util.tree_map(_first_local_replica, tree)


def _per_replica(fn: Callable, devices: Sequence[Any]) -> Callable:
  """``fn`` on every device's slice of a leading replica axis: ``jax.pmap``'s semantics.

  ``jax.shard_map`` over a one-axis :class:`jax.sharding.Mesh` of ``devices`` (the replica
  axis :data:`AXIS`), each leaf's leading axis split one row per device; ``fn`` sees a row
  without it and its collectives over :data:`AXIS` span every device, of every process.
  This is how ``jax.pmap`` itself is built in this JAX; building it here lets the step be
  compiled with :mod:`vqzoo.cpu_tuning`'s options in multi-process runs too.
  """
  sharding = _replica_sharding(devices)

  def body(*args):
    args = jax.tree_util.tree_map(lambda x: jnp.squeeze(x, 0), args)
    return jax.tree_util.tree_map(lambda x: jnp.expand_dims(x, 0), fn(*args))
  return jax.shard_map(body, mesh=sharding.mesh, in_specs=sharding.spec,
                       out_specs=sharding.spec, check_vma=False)


def _replica_sharding(devices: Sequence[Any]) -> jax.sharding.NamedSharding:
  mesh = jax.sharding.Mesh(np.asarray(devices, dtype=object), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def _to_global(devices: Sequence[Any]) -> Callable[[Any], Any]:
  """``convert(tree)``: host-local ``[n_local, ...]`` leaves as global ``[n_dev, ...]`` arrays.

  Row ``i`` of a leaf goes to this process's ``i``-th device in ``devices``; leaves that are
  already global arrays over ``devices`` (a step's output) pass through.
  """
  sharding = _replica_sharding(devices)
  mine = [d for d in devices if d.process_index == jax.process_index()]
  all_here = len(mine) == len(devices)

  def convert(x):
    if isinstance(x, jax.Array) and (x.sharding is sharding or x.sharding == sharding):
      return x
    if all_here and isinstance(x, np.ndarray):
      return x  # the compiled function places it (faster than doing it here)
    x = np.asarray(x)
    if x.shape[:1] != (len(mine),):
      raise ValueError(f"expected a leading axis of {len(mine)} (this process's devices), got "
                       f"shape {x.shape}")
    rows = [jax.device_put(x[i:i + 1], d) for i, d in enumerate(mine)]
    return jax.make_array_from_single_device_arrays((len(devices), *x.shape[1:]), sharding, rows)

  def convert_tree(tree):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if all(getattr(x, "sharding", None) is sharding for x in leaves):
      return tree  # a step's output, as every step after the first gets: nothing to do
    return treedef.unflatten([convert(x) for x in leaves])
  return convert_tree


def compile_step(model: ModelSpec, optimizer: optax.GradientTransformation,
                 devices: Sequence[Any], frozen: Iterable[str] = ()) -> Callable:
  """The train step over ``devices`` with the replica axis (one device included), like pmap.

  ``step(replicated_state, images) -> (state, metrics)`` takes a :func:`replicate`-d state
  (host arrays ``[n_local, ...]``, or the state a previous call returned) and batches
  ``[n_local, B / n_dev, ...]``: one row per device of ``devices`` that belongs to this
  process, in their order in ``devices``. It returns global arrays over ``devices``
  (:func:`unreplicate` reads them) and donates the state. In a multi-process run ``devices``
  spans every process's devices (:func:`step_devices`), and the reductions span them all.
  Compiled with :mod:`vqzoo.cpu_tuning`'s options; one code path for a laptop and many hosts.
  """
  devices = list(devices)
  sharding = _replica_sharding(devices)
  compiled = cpu_tuning.jit(_per_replica(make_train_step(model, optimizer, AXIS, frozen), devices),
                            in_shardings=sharding, out_shardings=sharding, donate_argnums=(0,))
  to_global = _to_global(devices)
  return lambda rts, images: compiled(to_global(rts), to_global(images))


def step_devices(devices: Sequence[Any] | None = None) -> tuple[list[Any], list[int]]:
  """The devices one step spans, in replica order, and the replica indices of this process's.

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
  mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
  if not mine:
    raise ValueError(f"devices: none of {devices} belongs to this process "
                     f"({jax.process_index()})")
  if jax.process_count() > 1:
    missing = set(range(jax.process_count())) - {d.process_index for d in devices}
    if missing:
      raise ValueError(
          f"devices: a multi-process run steps over devices of every process, but processes "
          f"{sorted(missing)} have none among {devices} (default: all of jax.devices())")
  return devices, mine


def _bits(x: jax.Array) -> jax.Array:
  """``x``'s bytes as a flat ``uint32`` array (zero-padded), for fingerprints."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  x = x.reshape(-1)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  unsigned = {1: jnp.uint8, 2: jnp.uint16}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def fingerprint(tree: Any) -> jax.Array:
  """A ``uint32`` hash of every bit of ``tree``'s leaves (wrapping sums, position-weighted).

  Equal trees give equal fingerprints; any change of any bit changes it but for a 2^-32
  chance. Cheap: one multiply-add per element.
  """
  h = jnp.uint32(0x811C9DC5)
  for leaf in jax.tree_util.tree_leaves(tree):
    bits = _bits(leaf)
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    h = h * jnp.uint32(0x01000193) + jnp.sum(bits * weights, dtype=jnp.uint32)
  return h


def compile_replica_check(devices: Sequence[Any]) -> Callable:
  """``check(state) -> [n_dev]`` uint32: every replica's :func:`fingerprint`, in device order.

  Over ``devices`` like :func:`compile_step` and taking its output: a collective (in a
  multi-process run every process calls it at the same steps).
  """
  devices = list(devices)
  sharding = _replica_sharding(devices)
  compiled = jax.jit(_per_replica(lambda ts: jax.lax.all_gather(fingerprint(ts), AXIS), devices),
                     in_shardings=sharding, out_shardings=sharding)
  to_global = _to_global(devices)
  return lambda rts: np.asarray(_first_local_replica(compiled(to_global(rts))))


def _check_replicas(check: Callable, rts: TrainState, step: int, devices: Sequence[Any]) -> None:
  """Raises ``RuntimeError`` unless every replica of ``rts`` is bit-for-bit the same."""
  prints = check(rts)
  if np.all(prints == prints[0]):
    return
  groups: dict[int, list[str]] = {}
  for value, device in zip(prints.tolist(), devices):
    groups.setdefault(value, []).append(f"{device} (process {device.process_index})")
  detail = "; ".join(f"{value:#010x} on {', '.join(where)}" for value, where in groups.items())
  raise RuntimeError(
      f"the model replicas diverged by step {step}: their parameters, state or optimiser state "
      f"are no longer identical (fingerprints: {detail}). A reduction did not span every "
      "replica: were the processes started with different code, data, recipe or checkpoint?")


def _host_metrics(metrics: Any) -> dict[str, float]:
  """Host copy of this process's first replica's metrics (the same on every replica)."""
  return {k: float(np.asarray(_first_local_replica(v))) for k, v in metrics.items()}


def _all_finite(tree: Any) -> bool:
  return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(tree))


def _non_finite(what: str, step: int, last_finite: int, ckpt_path: Path) -> FloatingPointError:
  """The error for a run whose ``what`` went NaN/Inf by ``step``, saying what was saved."""
  if step - last_finite <= 1:
    when = f"at step {step}"
  else:
    when = (f"by step {step}: they first appeared between step {last_finite + 1} and step "
            f"{step} (metrics are checked every log_every steps and at checkpoints; log_every=1 "
            "pinpoints the step)")
  if not ckpt_path.exists():
    saved = f"No checkpoint exists in {ckpt_path.parent}: nothing of this run was saved."
  else:
    at = checkpoint_step(ckpt_path)
    saved = (f"A checkpoint file {ckpt_path} exists but cannot be read." if at is None else
             f"The checkpoint {ckpt_path} is from step {at}, before the non-finite values; "
             "nothing later was saved.")
  return FloatingPointError(f"non-finite (NaN or Inf) {what} {when}. {saved} Lower the learning "
                            "rate or check the data.")


@contextlib.contextmanager
def _peer_failures(ckpt_path: Path, step: Callable[[], int]) -> Iterator[None]:
  """In a multi-process run, turns a failed collective into an error that says what to do."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    detail = re.sub(r"(Error dispatching computation: )+", "", str(e)).strip()[:300]
    at = checkpoint_step(ckpt_path)
    saved = (f"the checkpoint {ckpt_path} (if this process can see it) is from step {at}"
             if at is not None else f"no checkpoint {ckpt_path} can be read here")
    raise RuntimeError(
        f"process {jax.process_index()} of {jax.process_count()}: a step's cross-process "
        f"collective failed near step {step() + 1} ({type(e).__name__}: {detail}); "
        f"another process most likely died or was killed (see its log). {saved}: restart every "
        "process with --resume (resume=True) to continue from it") from e


def _local_batches(images: np.ndarray, recipe: TrainConfig, start: int, replicas: Sequence[int],
                   n_dev: int) -> Iterator[np.ndarray]:
  """This process's rows of each global batch, ``[len(replicas), B / n_dev, ...]``.

  Replica ``r`` of ``n_dev`` gets rows ``[r * B / n_dev, (r + 1) * B / n_dev)`` of every
  global batch, whichever process it runs in: the global batches are those of one process
  on one device.
  """
  if recipe.batch_size % n_dev:
    raise ValueError(f"batch_size: expected a multiple of {n_dev} (the devices of all "
                     f"processes), got {recipe.batch_size}")
  rows = recipe.batch_size // n_dev
  for batch in data_lib.batches(images, recipe.batch_size, recipe.seed, start):
    if len(replicas) == n_dev:  # every replica is here: a view, no copy
      yield batch.reshape(n_dev, rows, *batch.shape[1:])
    else:
      yield np.stack([batch[r * rows:(r + 1) * rows] for r in replicas])


def train(model: ModelSpec, recipe: TrainConfig, workdir: str | os.PathLike,
          images: np.ndarray | None = None, data_dir: str | None = None, resume: bool = False,
          init_params: hk.Params | None = None, init_state: hk.State | None = None,
          frozen: Iterable[str] = (), checkpoint_every: int = 1000, log_every: int = 50,
          progress: bool = True, devices: Sequence[Any] | None = None,
          until_step: int | None = None, overwrite: bool = False,
          extend_schedule: bool = False) -> TrainResult:
  """Trains ``model`` by ``recipe``, checkpointing to ``workdir``.

  A run first deletes the temporary files (``.checkpoint.safetensors.*.tmp``) that a killed
  checkpoint write left in ``workdir``. The checkpoint records ``recipe``. ``metrics.jsonl``
  holds one line per logged step of the run the checkpoint continues: on resume, lines logged
  after the checkpoint's step are dropped (they are logged again); a fresh run starts it empty.

  In a multi-process run (:func:`vqzoo.training.distributed.initialize` first) every process
  calls this with the same arguments: one step spans the devices of all processes, each
  process feeding its replicas' rows of every global batch. Only process 0 writes to
  ``workdir`` (checkpoint, metrics, clean-up); with ``resume`` every process reads the
  checkpoint, so ``workdir`` must be on a shared file system (or hold a copy of it on every
  host). All processes return the same result.

  Args:
    model: a :class:`ModelConfig`, or a zero-argument function making a
      :class:`vqzoo.nn.VQVAE` (give its quantizer ``cross_replica_axis="batch"`` to train on
      several devices).
    recipe: data, steps, batch size, learning rate, seed.
    workdir: holds ``checkpoint.safetensors`` and ``metrics.jsonl``.
    images: ``[N, H, W, C]`` uint8 training images; default: the recipe's TFDS split.
    data_dir: TFDS data directory (see :mod:`vqzoo.training.data`).
    resume: continue bit-exactly from ``workdir``'s checkpoint, which must exist and have been
      written with the same ``recipe`` (but see ``extend_schedule``).
    init_params, init_state: start from these (fine-tuning) instead of a fresh init; ignored
      on resume.
    frozen: parts among ``("encoder", "decoder", "codebook")`` that do not train.
    checkpoint_every: steps between atomic checkpoints (and at the end).
    log_every: steps between metric lines, progress-bar updates and NaN checks.
    progress: show a tqdm progress bar (process 0 only).
    devices: devices to pmap over, in replica order (default: all local devices; in a
      multi-process run all devices of all processes, see :func:`step_devices`).
    until_step: stop (with a checkpoint) at this step instead of ``recipe.steps``; a later
      call with ``resume=True`` continues on the same schedule.
    overwrite: without ``resume``, delete ``workdir``'s checkpoint and metrics (if any) and
      start afresh; without it, a checkpoint already in ``workdir`` is an error.
    extend_schedule: on resume, accept a ``recipe`` that differs from the checkpoint's only in
      ``steps`` (more, or fewer but not below the checkpoint's step): the learning-rate schedule
      is recomputed for the new total step count from the resumed step on (so the rate may
      jump there), and the checkpoint then records the new recipe.

  Raises:
    FileExistsError: ``workdir`` holds a checkpoint and neither ``resume`` nor ``overwrite``
      was given.
    FileNotFoundError: ``resume`` but ``workdir`` holds no checkpoint.
    ValueError: on resume, the checkpoint is truncated or corrupt (the message names it), at a
      step beyond ``recipe.steps``, or written with a different recipe (without
      ``extend_schedule``); or ``resume`` and ``overwrite`` were both given.
    FloatingPointError: the loss (or another metric, or the parameters at a checkpoint)
      became NaN or Inf; the message gives the step and the step of the checkpoint left in
      ``workdir``, if there is one.
    RuntimeError: the replicas are no longer identical (checked at the first step, every
      logged step and before every checkpoint), or, in a multi-process run, a collective
      failed (another process died); the message says which checkpoint is left.
  """
  from tqdm.auto import tqdm

  if resume and overwrite:
    raise ValueError("resume and overwrite: pass one or the other, not both")
  if checkpoint_every < 1 or log_every < 1:
    raise ValueError(f"checkpoint_every and log_every: expected integers >= 1, got "
                     f"{checkpoint_every} and {log_every}")
  workdir = Path(workdir)
  devices, replicas = step_devices(devices)
  writer = jax.process_index() == 0  # the one process that writes to workdir
  if writer:
    workdir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_files(workdir)
  ckpt_path, metrics_path = workdir / CHECKPOINT_NAME, workdir / METRICS_NAME
  if resume:
    if not ckpt_path.exists():
      raise FileNotFoundError(f"resume=True, but there is no checkpoint {ckpt_path} to resume "
                              "from; start without resume=True (--resume) to train from scratch")
    flat, metadata = _read_checkpoint(ckpt_path)
    _check_resumable(ckpt_path, flat, metadata, recipe, extend_schedule)
  elif ckpt_path.exists() and not overwrite:
    raise FileExistsError(
        f"{workdir} already holds a checkpoint ({ckpt_path}); pass resume=True (--resume) to "
        "continue it, or overwrite=True (--overwrite) to delete it and its metrics and start "
        "afresh")
  if images is None:
    images = data_lib.load_images(recipe.dataset, recipe.split, data_dir)
  if isinstance(model, ModelConfig) and tuple(images.shape[1:]) != model.image_shape:
    raise ValueError(f"training images: expected [N, {', '.join(map(str, model.image_shape))}]"
                     f", got {tuple(images.shape)}")
  optimizer = make_optimizer(recipe, frozen, model)
  ts = init_train_state(model, optimizer, recipe.seed, images.shape[1:], init_params, init_state)
  if resume:
    ts = _restore(ckpt_path, flat, ts)
    del flat
  elif overwrite and writer:
    ckpt_path.unlink(missing_ok=True)
    metrics_path.unlink(missing_ok=True)
  start = int(ts.step)
  if writer:
    _truncate_metrics(metrics_path, start)
  batch_iter = _local_batches(images, recipe, start, replicas, len(devices))
  if jax.process_count() > 1:  # every process has checked the workdir before process 0 writes
    multihost_utils.sync_global_devices("vqzoo.train: start")
  step_fn = compile_step(model, optimizer, devices, frozen)
  check = compile_replica_check(devices)
  rts = replicate(jax.device_get(ts), len(replicas))
  last: dict[str, float] = {}
  bar = tqdm(total=recipe.steps, initial=start, disable=not (progress and writer), desc="train",
             dynamic_ncols=True)
  stop = recipe.steps if until_step is None else min(until_step, recipe.steps)
  if stop <= start and (not resume or extend_schedule) and writer:  # e.g. until_step=0
    save_checkpoint(ckpt_path, ts, recipe)
  last_finite = start  # the last step whose metrics were checked (or the starting state)
  step = start
  with open(metrics_path if writer else os.devnull, "a") as log_file, \
      _peer_failures(ckpt_path, lambda: step):
    in_flight = None  # the previous step's metrics: the bar counts completed steps
    for step in range(start, stop):
      rts, metrics = step_fn(rts, next(batch_iter))
      if in_flight is not None:
        jax.block_until_ready(in_flight)
        bar.update(1)
      in_flight = metrics
      done = step + 1
      log = done % log_every == 0 or done == stop
      save = done % checkpoint_every == 0 or done == stop
      if log or save or step == start:
        _check_replicas(check, rts, done, devices)
      if log or save:
        values = _host_metrics(metrics)
        if not all(math.isfinite(v) for v in values.values()):
          bar.close()
          raise _non_finite(f"metrics {values}", done, last_finite, ckpt_path)
        last_finite = done
      if log:
        last = values
        log_file.write(json.dumps({"step": done, **last}) + "\n")
        log_file.flush()
        bar.set_postfix(loss=f"{last['loss']:.4f}", mse=f"{last['mse']:.4f}",
                        ppl=f"{last['perplexity']:.1f}")
      if save:
        host = jax.device_get(unreplicate(rts))
        if not _all_finite((host.params, host.state)):
          bar.close()
          raise _non_finite("parameters or state", done, done - 1, ckpt_path)
        if writer:
          save_checkpoint(ckpt_path, host, recipe)
  if in_flight is not None:
    jax.block_until_ready(in_flight)
    bar.update(1)
  bar.close()
  final = jax.device_get(unreplicate(rts))
  return TrainResult(final.params, final.state, int(final.step), last)
