"""A small CNN classifier for the zoo's datasets, trained in this repo, and its features.

vqzoo ships one per dataset (``mnist``, ``fashion_mnist`` on 28x28x1 grey images, ``cifar10``
on 32x32x3 colour images) under ``vqzoo/assets/classifiers/``,
trained by ``scripts/train_classifier.py``. It is a measuring instrument, not a model of the zoo:
its 128-d penultimate features are the space in which
:func:`vqzoo.evaluation.frechet.frechet_distance` compares samples with real images, and its
predictions give a sample's class.

Architecture (every conv 3x3, ``SAME`` padding, stride 2, ReLU after each layer but the last)::

  [N, 28, 28, 1] -> conv 32 -> [N, 14, 14, 32] -> conv 64 -> [N, 7, 7, 64]
    -> conv 64 -> [N, 4, 4, 64] -> flatten [N, 1024] -> dense 128 (the features) -> dense 10

and the same layers on colour images, ``[N, 32, 32, 3] -> [N, 16, 16, 32] -> [N, 8, 8, 64]
-> [N, 4, 4, 64] -> ...``. 188,234 float32 parameters for grey input, 188,810 for colour (the
first conv sees 3 channels): about 735 KiB of weights. The third stride-2 conv is there to keep
the file small: flattening the 7x7x64 map straight into the 128-d layer would take 401k weights
(1.6 MB) for that layer alone.

A parameter set's input shape follows from its first conv's input channels (1: 28x28x1, 3:
32x32x3; :func:`image_shape_of`), so :func:`features` and :func:`predict` check images against
the classifier they are given.

The shipped weights are pinned: ``metrics.json`` beside them records each file's sha256 (and
the test accuracy, steps and seed it was trained with), and :func:`load_classifier` refuses a
file that does not match.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqzoo import cpu_tuning
from vqzoo.configs import RunConfig, TrainConfig
from vqzoo.images import to_float_images
from vqzoo.pretrained import serialization
from vqzoo.pretrained.integrity import read_bounded, verify_sha256_bytes
from vqzoo.training import loop
from vqzoo.training.checkpoint import TrainState
from vqzoo.training.data import batch_indices

IMAGE_SHAPE = (28, 28, 1)  # the grey datasets' shape (the default of init_params)
NUM_CLASSES = 10
FEATURE_DIM = 128
DATASET_SHAPES: dict[str, tuple[int, int, int]] = {
    "mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
DATASETS = tuple(DATASET_SHAPES)
# The input shape of a parameter set, from its first conv's input channels.
SHAPE_BY_CHANNELS: dict[int, tuple[int, int, int]] = {1: (28, 28, 1), 3: (32, 32, 3)}
CLASSIFIERS_DIR = Path(__file__).resolve().parent.parent / "assets" / "classifiers"
METRICS_NAME = "metrics.json"
FILES = loop.LoopFiles("classifier_checkpoint.safetensors", "classifier_metrics.jsonl")


class Classifier(hk.Module):
  """The CNN; ``__call__(x)`` maps ``[N, H, W, C]`` float images to ``(logits, features)``."""

  def __init__(self, name: str | None = None):
    super().__init__(name=name)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Classifies a batch.

    Args:
      x: ``[N, H, W, C]`` float32 in [0, 1] (``[N, 28, 28, 1]`` or ``[N, 32, 32, 3]``).

    Returns:
      ``logits`` ``[N, 10]`` and ``features`` ``[N, 128]`` (post-ReLU penultimate layer).
    """
    for i, channels in enumerate((32, 64, 64)):
      x = jax.nn.relu(hk.Conv2D(channels, 3, stride=2, padding="SAME", name=f"conv_{i}")(x))
    x = hk.Flatten()(x)
    features = jax.nn.relu(hk.Linear(FEATURE_DIM, name="features")(x))
    logits = hk.Linear(NUM_CLASSES, name="logits")(features)
    return logits, features


def build_classifier(wrap: Callable[[Callable], Callable] = lambda f: f) -> hk.Transformed:
  """``init(rng, x)`` / ``apply(params, x) -> (logits [N, 10], features [N, 128])``.

  ``x`` is ``[N, H, W, C]`` float32 in [0, 1]; ``apply`` takes no rng. ``wrap`` wraps the
  forward function before it is transformed (e.g. with :func:`vqzoo.cpu_tuning.tuned`).
  """

  def forward(x):
    return Classifier(name="classifier")(x)

  return hk.without_apply_rng(hk.transform(wrap(forward)))


def init_params(seed: int = 0, image_shape: Sequence[int] = IMAGE_SHAPE) -> hk.Params:
  """Freshly initialised parameters (also the expected structure of a weights file).

  Args:
    seed: seeds the initialisation.
    image_shape: ``(H, W, C)`` of the input, one of :data:`SHAPE_BY_CHANNELS`' values.
  """
  # Compiled whole rather than op by op (see trainer.init_train_state); the same values.
  return cpu_tuning.jit_once(_classifier_init())(jax.random.PRNGKey(seed),
                                                 jnp.zeros((1, *image_shape)))


@cpu_tuning.memoize
def _classifier_init() -> Callable:
  return build_classifier().init


def image_shape_for(dataset: str) -> tuple[int, int, int]:
  """``(H, W, C)`` of ``dataset``'s images (one of :data:`DATASETS`).

  Raises:
    KeyError: ``dataset`` has no classifier shape.
  """
  if dataset not in DATASET_SHAPES:
    raise KeyError(f"no classifier shape for dataset {dataset!r} (known: {list(DATASETS)})")
  return DATASET_SHAPES[dataset]


def image_shape_of(params: hk.Params) -> tuple[int, int, int]:
  """``(H, W, C)`` of the images ``params`` classify, from the first conv's input channels.

  Raises:
    ValueError: ``params`` are not a classifier's, or their channel count has no shape.
  """
  try:
    channels = int(np.shape(params["classifier/conv_0"]["w"])[2])
  except (KeyError, TypeError, IndexError) as e:
    raise ValueError("params: not a vqzoo classifier's parameters (no classifier/conv_0/w "
                     "of shape [3, 3, C, 32])") from e
  if channels not in SHAPE_BY_CHANNELS:
    raise ValueError(f"params: a classifier of {channels}-channel images; expected one of "
                     f"{sorted(SHAPE_BY_CHANNELS)} channels")
  return SHAPE_BY_CHANNELS[channels]


def num_params(params: hk.Params) -> int:
  """Total number of scalars in ``params``."""
  return int(sum(np.size(v) for v in jax.tree_util.tree_leaves(params)))


def train_classifier(images_u8: np.ndarray, labels: np.ndarray, steps: int,
                     batch_size: int = 128, seed: int = 0, learning_rate: float = 1e-3,
                     workdir: str | os.PathLike | None = None,
                     run: RunConfig = RunConfig(progress=False),
                     flip: bool = False) -> hk.Params:
  """Trains the classifier with Adam (cosine-decayed learning rate) on softmax cross-entropy.

  Runs through the one loop of :mod:`vqzoo.training.loop`: deterministic for a given ``seed``
  (initialisation and the seeded batch order) on a given backend, and with a ``workdir``
  checkpointed and resumable bit-exactly under the resume rule of every run.

  Args:
    images_u8: ``[N, 28, 28, 1]``, ``[N, 28, 28]`` or ``[N, 32, 32, 3]`` uint8 (or float in
      [0, 1]); the shape picks the input shape of the classifier.
    labels: ``[N]`` integers in [0, 10).
    steps: optimisation steps.
    batch_size: examples per step, at most ``N``.
    seed: seeds the initialisation and the batch order.
    learning_rate: the peak (initial) Adam learning rate.
    workdir: ``classifier_checkpoint.safetensors`` and ``classifier_metrics.jsonl``
      (``None``: none kept).
    run: resume/overwrite, intervals, progress bar.
    flip: mirror each training image left-right with probability 1/2 (drawn from ``seed`` and
      the step, so resumable); suits natural images such as CIFAR-10, not digits.

  Returns:
    The trained parameters (NumPy arrays on the host).
  """
  labels = np.asarray(labels)
  shape = np.shape(images_u8)
  image_shape = (*shape[1:3], 1) if len(shape) == 3 else tuple(shape[1:])
  if image_shape not in SHAPE_BY_CHANNELS.values():
    raise ValueError(f"images_u8: expected [N, 28, 28(, 1)] or [N, 32, 32, 3], got {shape}")
  if labels.ndim != 1 or len(labels) != len(images_u8):
    raise ValueError(f"labels: expected shape [{len(images_u8)}], got {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer) or (
      labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES)):
    raise ValueError(f"labels: expected integers in [0, {NUM_CLASSES})")
  if not 0 < batch_size <= len(labels):
    raise ValueError(f"batch_size: expected 1..{len(labels)}, got {batch_size}")
  if steps < 1:
    raise ValueError(f"steps: expected >= 1, got {steps}")
  # A cosine decay from the peak to 0: TrainConfig's schedule with no warm-up.
  recipe = TrainConfig(dataset="classifier", steps=steps, batch_size=batch_size, seed=seed,
                       learning_rate=learning_rate, warmup_steps=0, final_lr_fraction=0.0)
  optimizer, step = _classifier_step(recipe)
  params = jax.device_get(init_params(seed, image_shape))
  opt_state = jax.device_get(cpu_tuning.jit_once(optimizer.init)(params))
  fresh = TrainState(params, {}, opt_state, np.int32(0), np.asarray(jax.random.PRNGKey(seed)))

  def batches(start):
    for s, pick in enumerate(batch_indices(len(labels), batch_size, seed, start), start):
      x = to_float_images(images_u8[pick], image_shape)
      if flip:
        mirror = np.random.default_rng([seed, s, 1]).random(len(x)) < 0.5
        x = np.where(mirror[:, None, None, None], x[:, :, ::-1], x)
      yield x, labels[pick].astype(np.int32)

  result = loop.run(step, fresh, batches, recipe, workdir, run, files=FILES, desc="classifier",
                    postfix=lambda m: {"loss": f"{m['loss']:.4f}"})
  return result.state.params


@cpu_tuning.memoize
def _classifier_step(recipe: TrainConfig) -> tuple[optax.GradientTransformation, Callable]:
  """Adam on ``recipe``'s schedule and ``step(train_state, (images, labels))`` on cross-entropy."""
  model = build_classifier(wrap=cpu_tuning.tuned)
  optimizer = optax.adam(loop.learning_rate_schedule(recipe))

  def step(ts: TrainState, batch):
    x, y = batch
    loss, grads = jax.value_and_grad(lambda p: jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x)[0], y)))(ts.params)
    updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
    return (ts._replace(params=optax.apply_updates(ts.params, updates), opt_state=opt_state,
                        step=ts.step + 1), {"loss": loss})
  return optimizer, step


# ----------------------------------------------------------------------------- inference


@cpu_tuning.memoize
def _apply_fn() -> Callable:
  return cpu_tuning.jit(build_classifier(wrap=cpu_tuning.tuned).apply)


def _run(params: hk.Params, images: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """``(logits [N, 10] float32, features [N, 128] float32)`` in fixed-size padded batches."""
  image_shape = image_shape_of(params)
  x = to_float_images(images, image_shape)
  if batch_size < 1:
    raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
  fn = _apply_fn()
  size = min(batch_size, len(x))  # one compiled shape for the whole call
  logits, feats = [], []
  for start in range(0, len(x), size):
    chunk = x[start:start + size]
    n = len(chunk)
    if n < size:
      chunk = np.concatenate([chunk, np.zeros((size - n, *image_shape), chunk.dtype)])
    lg, ft = fn(params, chunk)
    logits.append(np.asarray(lg)[:n])
    feats.append(np.asarray(ft)[:n])
  return np.concatenate(logits), np.concatenate(feats)


def features(params: hk.Params, images: Any, batch_size: int = 1000) -> np.ndarray:
  """The classifier's 128-d penultimate (post-ReLU) features.

  Args:
    params: from :func:`load_classifier` or :func:`train_classifier`.
    images: ``[N, 28, 28(, 1)]`` for a grey classifier, ``[N, 32, 32, 3]`` for a colour one
      (:func:`image_shape_of`); uint8 in [0, 255] or float in [0, 1].
    batch_size: images per compiled call.

  Returns:
    ``[N, 128]`` float64.
  """
  return _run(params, images, batch_size)[1].astype(np.float64)


def predict(params: hk.Params, images: Any, batch_size: int = 1000) -> np.ndarray:
  """The predicted class of each image.

  Args:
    params: from :func:`load_classifier` or :func:`train_classifier`.
    images: ``[N, 28, 28(, 1)]`` for a grey classifier, ``[N, 32, 32, 3]`` for a colour one
      (:func:`image_shape_of`); uint8 in [0, 255] or float in [0, 1].
    batch_size: images per compiled call.

  Returns:
    ``[N]`` int32 class indices in [0, 10).
  """
  return np.argmax(_run(params, images, batch_size)[0], axis=-1).astype(np.int32)


def accuracy(params: hk.Params, images: Any, labels: np.ndarray, batch_size: int = 1000) -> float:
  """Fraction of ``images`` whose predicted class equals ``labels`` ``[N]``."""
  return float(np.mean(predict(params, images, batch_size) == np.asarray(labels)))


# ----------------------------------------------------------------------------- shipped weights


def weights_path(dataset: str, directory: str | os.PathLike | None = None) -> Path:
  """``<directory>/<dataset>.safetensors`` (``directory`` defaults to the shipped assets)."""
  return Path(directory if directory is not None else CLASSIFIERS_DIR) / f"{dataset}.safetensors"


def read_metrics(directory: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
  """``metrics.json``: ``{dataset: {test_accuracy, steps, seed, sha256, ...}}`` (``{}`` if none)."""
  path = Path(directory if directory is not None else CLASSIFIERS_DIR) / METRICS_NAME
  if not path.exists():
    return {}
  return json.loads(path.read_text())


def to_bytes(params: hk.Params, metadata: dict[str, str] | None = None) -> bytes:
  """Parameters -> safetensors bytes (keys ``params/<module>/<name>``, float32)."""
  from safetensors.numpy import save as st_save
  flat = {k: v.astype(np.float32) for k, v in serialization.flatten(params, "params").items()}
  return st_save(flat, metadata=dict(metadata or {}))


def load_classifier(dataset: str, directory: str | os.PathLike | None = None) -> hk.Params:
  """The shipped classifier for ``dataset``, checked against the sha256 in ``metrics.json``.

  Args:
    dataset: ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
    directory: where ``<dataset>.safetensors`` and ``metrics.json`` are (default: the
      package's ``vqzoo/assets/classifiers``).

  Returns:
    The parameters, for :func:`features` and :func:`predict`.

  Raises:
    KeyError: no classifier is recorded for ``dataset``.
    vqzoo.IntegrityError: the weights file's sha256 differs from the recorded one.
    ValueError: the file is not a safetensors file of this architecture.
  """
  record = read_metrics(directory).get(dataset)
  if record is None or "sha256" not in record:
    raise KeyError(f"no classifier is recorded for {dataset!r}; train one with "
                   f"`python scripts/train_classifier.py --dataset {dataset}` (known: "
                   f"{sorted(read_metrics(directory))})")
  path = weights_path(dataset, directory)
  data = read_bounded(path, "classifier weights")
  verify_sha256_bytes(data, record["sha256"], path)
  params, _ = serialization.parse_weights(data, str(path))
  shape = DATASET_SHAPES.get(dataset) or image_shape_of(params)
  expected = jax.eval_shape(build_classifier().init, jax.random.PRNGKey(0),
                            jnp.zeros((1, *shape)))  # shapes only, nothing runs
  serialization.check_structure(expected, params, f"{path}: classifier weights")
  serialization.check_values(expected, params, f"{path}")
  return params
