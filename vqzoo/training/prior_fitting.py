"""Fitting a prior over a model's codes, and measuring it.

The codes of the training images (and their labels, for a class-conditional prior) are the
data. A categorical prior (MLP models: one code per image) is fitted exactly, by counting
(add-one smoothing); a gated PixelCNN (conv models) by Adam on the mean negative
log-likelihood, with seeded batches, resumable from ``workdir/prior_checkpoint.safetensors``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqzoo import cpu_tuning
from vqzoo.configs import PriorConfig, TrainConfig
from vqzoo.io import atomic_write_bytes
from vqzoo.nn import prior_bits
from vqzoo.pretrained import serialization

CHECKPOINT_NAME = "prior_checkpoint.safetensors"
METRICS_NAME = "prior_metrics.jsonl"


def encode_images(model: Any, images: np.ndarray, batch_size: int = 2000,
                  progress: bool = True) -> np.ndarray:
  """``[N, H, W, C]`` images -> ``[N, *latent]`` int32 codes, in batches with a progress bar."""
  from tqdm.auto import tqdm
  out = []
  for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="encode",
                    unit="batch", leave=False):
    out.append(model.encode(images[start:start + batch_size]))
  return np.concatenate(out)


def _init_params(config: PriorConfig, seed: int) -> hk.Params:
  codes = jnp.zeros((1, *config.latent_shape), jnp.int32)
  labels = None if config.num_classes == 0 else jnp.zeros((1,), jnp.int32)
  return prior_bits(config).init(jax.random.PRNGKey(seed), codes, labels)


def _count_categorical(config: PriorConfig, codes: np.ndarray,
                       labels: np.ndarray | None) -> hk.Params:
  """Exact maximum-likelihood logits with add-one smoothing: ``log (n_k + 1) / (N + K)``."""
  k = config.num_embeddings
  params = _init_params(config, 0)
  (module, leaves), = params.items()
  (name, value), = leaves.items()
  if config.num_classes == 0:
    counts = np.bincount(codes.ravel(), minlength=k)[None]
  else:
    counts = np.stack([np.bincount(codes[labels == c].ravel(), minlength=k)
                       for c in range(config.num_classes)])
  logits = np.log(counts + 1.0) - np.log(counts.sum(-1, keepdims=True) + k)
  return {module: {name: logits.reshape(np.shape(value)).astype(np.float32)}}


def _check_data(config: PriorConfig, codes: np.ndarray, labels: np.ndarray | None) -> None:
  if tuple(codes.shape[1:]) != tuple(config.latent_shape):
    raise ValueError(f"codes: expected [N, {', '.join(map(str, config.latent_shape))}] for this "
                     f"prior, got {codes.shape}")
  if config.num_classes and (labels is None or len(labels) != len(codes)):
    raise ValueError(f"labels: a class-conditional prior needs one label per image "
                     f"({len(codes)}), got {None if labels is None else len(labels)}")
  if not config.num_classes and labels is not None:
    raise ValueError("labels: this prior is unconditional; give no labels")


def fit_prior(config: PriorConfig, recipe: TrainConfig, codes: np.ndarray,
              labels: np.ndarray | None = None, workdir: str | os.PathLike | None = None,
              resume: bool = False, progress: bool = True, checkpoint_every: int = 500,
              log_every: int = 100, until_step: int | None = None) -> hk.Params:
  """Fits a prior to ``codes`` ``[N, *latent]`` (and ``labels`` ``[N]``) -> its params.

  Args:
    config: the prior.
    recipe: steps, batch size, learning rate (warmup + cosine decay) and seed (PixelCNN only).
    codes, labels: the training data.
    workdir: checkpoints and ``prior_metrics.jsonl`` (PixelCNN only; ``None``: none kept).
    resume: continue from ``workdir``'s checkpoint, bit-exactly.
    progress: show a progress bar.
    checkpoint_every, log_every: steps between checkpoints and between metric lines.
    until_step: stop (with a checkpoint) at this step; ``resume`` continues on the same schedule.

  Raises:
    FloatingPointError: the loss became NaN or Inf.
  """
  from tqdm.auto import tqdm
  codes = np.asarray(codes, np.int32)
  labels = None if labels is None else np.asarray(labels, np.int32)
  _check_data(config, codes, labels)
  if config.kind == "categorical":
    return _count_categorical(config, codes, labels)
  bits = prior_bits(config)
  warmup = min(recipe.warmup_steps, recipe.steps - 1)
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, recipe.learning_rate, warmup, recipe.steps,
      recipe.learning_rate * recipe.final_lr_fraction)
  optimizer = optax.adam(schedule)
  params = _init_params(config, recipe.seed)
  opt_state = optimizer.init(params)
  start = 0
  path = None if workdir is None else Path(workdir) / CHECKPOINT_NAME
  if resume and path is not None and path.exists():
    params, opt_state, start = _load(path, params, opt_state)

  def loss_fn(p, c, l):
    return jnp.mean(bits.apply(p, None, c, l)) * math.log(2)  # nats per image

  @cpu_tuning.jit
  def step(p, o, c, l):
    loss, grads = jax.value_and_grad(loss_fn)(p, c, l)
    updates, o = optimizer.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss / math.log(2)

  n = len(codes)
  batch = min(recipe.batch_size, n)
  per_epoch = n // batch
  stop = recipe.steps if until_step is None else min(until_step, recipe.steps)
  bar = tqdm(total=recipe.steps, initial=start, disable=not progress, desc="fit prior")
  log = None
  if workdir is not None:
    Path(workdir).mkdir(parents=True, exist_ok=True)
    log_path = Path(workdir) / METRICS_NAME
    kept = [line for line in (log_path.read_text().splitlines() if log_path.exists() else [])
            if start and line.strip() and json.loads(line)["step"] <= start]
    atomic_write_bytes(log_path, "".join(line + "\n" for line in kept).encode())
    log = open(log_path, "a")
  try:
    for i in range(start, stop):
      epoch, index = divmod(i, per_epoch)
      order = np.random.default_rng([recipe.seed, epoch]).permutation(n)
      pick = order[index * batch:(index + 1) * batch]
      params, opt_state, loss = step(params, opt_state, codes[pick],
                                     None if labels is None else labels[pick])
      done = i + 1
      bar.update(1)
      if done % log_every == 0 or done == stop:
        value = float(loss)
        if not math.isfinite(value):
          raise FloatingPointError(f"prior loss became {value} at step {done}; lower the "
                                   "learning rate")
        bar.set_postfix(bits=f"{value:.1f}")
        if log is not None:
          log.write(json.dumps({"step": done, "bits_per_image": value}) + "\n")
          log.flush()
      if path is not None and (done % checkpoint_every == 0 or done == stop):
        _save(path, params, opt_state, done)
  finally:
    bar.close()
    if log is not None:
      log.close()
  return jax.device_get(params)


def _save(path: Path, params: hk.Params, opt_state: Any, step: int) -> None:
  extra = {f"opt/{i}": np.asarray(x) for i, x in
           enumerate(jax.tree_util.tree_leaves(jax.device_get(opt_state)))}
  extra["step"] = np.asarray(step, np.int64)
  atomic_write_bytes(path, serialization.to_bytes(params, {}, extra=extra))


def _load(path: Path, params: hk.Params, opt_state: Any) -> tuple[hk.Params, Any, int]:
  data = path.read_bytes()
  stored, _ = serialization.parse_weights(data, str(path))
  serialization.check_structure(params, stored, f"prior params in {path}")
  flat = serialization.from_bytes(data)[2]
  leaves, tree = jax.tree_util.tree_flatten(opt_state)
  try:
    opt = jax.tree_util.tree_unflatten(tree, [flat[f"opt/{i}"] for i in range(len(leaves))])
  except KeyError as e:
    raise ValueError(f"{path}: not a prior checkpoint of this recipe (missing {e})") from None
  return stored, opt, int(flat["step"])


def unigram_bits(train_codes: np.ndarray, codes: np.ndarray, num_embeddings: int) -> np.ndarray:
  """``[N]`` bits of ``codes`` under independent codes with the training codes' frequencies
  (add-one smoothed), the same at every position."""
  counts = np.bincount(np.asarray(train_codes).ravel(), minlength=num_embeddings) + 1.0
  log2p = np.log2(counts / counts.sum())
  return -log2p[np.asarray(codes).reshape(len(codes), -1)].sum(axis=1)


def sample_unigram(train_codes: np.ndarray, num: int, num_embeddings: int, seed: int
                   ) -> np.ndarray:
  """``[num, *latent]`` codes drawn independently from the training codes' frequencies."""
  counts = np.bincount(np.asarray(train_codes).ravel(), minlength=num_embeddings) + 1.0
  shape = (num, *np.shape(train_codes)[1:])
  rng = np.random.default_rng(seed)
  return rng.choice(num_embeddings, size=shape, p=counts / counts.sum()).astype(np.int32)


def prior_nll(model: Any, test_codes: np.ndarray, test_labels: np.ndarray | None,
              train_codes: np.ndarray, marginal: bool = True) -> dict[str, float]:
  """Mean bits per image of the test codes: the prior's and two baselines'.

  Returns:
    ``prior_bits`` (given the true labels for a class-conditional prior),
    ``prior_bits_marginal`` (class-conditional priors with ``marginal``: labels summed out,
    one pass over the codes per class),
    ``uniform_bits`` (positions x log2 K) and ``unigram_bits``.
  """
  k = model.config.quantizer.num_embeddings
  positions = math.prod(model.config.latent_shape)
  labels = test_labels if model.prior.num_classes else None
  out = {"prior_bits": float(np.mean(_batched(model.prior_bits, test_codes, labels))),
         "uniform_bits": positions * math.log2(k),
         "unigram_bits": float(np.mean(unigram_bits(train_codes, test_codes, k)))}
  if model.prior.num_classes and marginal:
    out["prior_bits_marginal"] = float(np.mean(_batched(model.prior_bits, test_codes, None)))
  return out


def _batched(fn, codes: np.ndarray, labels: np.ndarray | None, size: int = 1000) -> np.ndarray:
  return np.concatenate([fn(codes[i:i + size], None if labels is None else labels[i:i + size])
                         for i in range(0, len(codes), size)])


def fit_model_prior(base: str, out: str | os.PathLike, recipe: TrainConfig, *,
                    dataset: str | None = None, images_dir: str | None = None,
                    data_dir: str | None = None, eval_split: str = "test",
                    conditional: bool = True, hidden: int = 32,
                    num_layers: int = 6, workdir: str | os.PathLike | None = None,
                    resume: bool = False, progress: bool = True) -> tuple[Any, dict[str, Any]]:
  """Fits a prior to any model's codes and saves the model with it to ``out``.

  Args:
    base: zoo name, ``hf-hub:owner/repo[@rev]`` or a model directory (e.g. a fine-tuned one).
    out: output model directory (the model's files plus ``prior.json``, ``prior.safetensors``).
    recipe: steps, batch size, learning rate and seed (``recipe.split`` for a dataset).
    dataset: a TFDS dataset (its ``recipe.split``; labels condition the prior unless
      ``conditional`` is off; ``eval_split`` measures it), or
    images_dir: a folder of images (unconditional; 10% held out to measure it).
    hidden, num_layers: PixelCNN size (conv models).
    workdir: checkpoints (default ``OUT.work``); ``resume`` continues there.

  Returns:
    ``(model with its prior, metrics)``: bits per image of the held-out codes beside the
    baselines, and ``eval_split`` (a TFDS split, or ``"held-out"`` for an image folder).
  """
  from vqzoo.pretrained import load
  from vqzoo.training.data import load_images, load_labels
  from vqzoo.training.image_folder import load_image_folder, split_holdout
  if (dataset is None) == (images_dir is None):
    raise ValueError("give exactly one source of codes: dataset or images_dir")
  model = load(base)
  labels = test_labels = None
  if dataset is not None:
    images = load_images(dataset, recipe.split, data_dir)
    test_images = load_images(dataset, eval_split, data_dir)
    if conditional:
      labels = load_labels(dataset, recipe.split, data_dir)
      test_labels = load_labels(dataset, eval_split, data_dir)
  else:
    everything, _ = load_image_folder(images_dir, model.config.image_shape)
    images, test_images = split_holdout(everything, 0.1, recipe.seed)
    eval_split = "held-out"
    if len(test_images) == 0:  # too few images to hold any out
      test_images, eval_split = images, "fitted"
  num_classes = 0 if labels is None else int(labels.max()) + 1
  config = PriorConfig.for_model(model.config, num_classes=num_classes, hidden=hidden,
                                 num_layers=num_layers)
  codes = encode_images(model, images, progress=progress)
  out = Path(out)
  workdir = Path(workdir or out.with_name(out.name + ".work"))
  workdir.mkdir(parents=True, exist_ok=True)
  params = fit_prior(config, recipe, codes, labels, workdir=workdir, resume=resume,
                     progress=progress)
  model.set_prior(config, params)
  metrics = prior_nll(model, encode_images(model, test_images, progress=progress), test_labels,
                      codes)
  model.save_pretrained(out)
  return model, {**metrics, "eval_split": eval_split}
