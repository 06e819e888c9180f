"""Fitting a prior over a model's codes, and measuring it.

The codes of the training images (and their labels, for a class-conditional prior) are the
data. A categorical prior (MLP models: one code per image) is fitted exactly, by counting
(add-one smoothing); a gated PixelCNN (conv models) by Adam on the mean negative
log-likelihood through the one training loop (:mod:`vqzoo.training.loop`), resumable from
``workdir/prior_checkpoint.safetensors``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqzoo.configs import PriorConfig, RunConfig, TrainConfig
from vqzoo.nn import build_prior, position_bits, prior_bits
from vqzoo import cpu_tuning, result_warnings
from vqzoo.training import loop
from vqzoo.training.checkpoint import TrainState
from vqzoo.training.data import batch_indices
from vqzoo.training.parallel import DataParallel

CHECKPOINT_NAME = "prior_checkpoint.safetensors"
METRICS_NAME = "prior_metrics.jsonl"
FILES = loop.LoopFiles(CHECKPOINT_NAME, METRICS_NAME)


def encode_images(model: Any, images: np.ndarray, batch_size: int = 2000,
                  progress: bool = True) -> np.ndarray:
  """``[N, H, W, C]`` images -> ``[N, *latent]`` int32 codes, in batches with a progress bar."""
  from tqdm.auto import tqdm
  out = []
  for start in tqdm(range(0, len(images), batch_size), disable=not progress, desc="encode",
                    unit="batch", leave=False):
    out.append(model.encode(images[start:start + batch_size]))
  return np.concatenate(out)


def training_codes(model: Any, images: np.ndarray, labels: np.ndarray | None = None,
                   mirrored: bool = False, progress: bool = True
                   ) -> tuple[np.ndarray, np.ndarray | None]:
  """The data a prior is fitted to: ``[N, *latent]`` codes of ``[N, H, W, C]`` images, and
  their ``[N]`` labels (or ``None``).

  With ``mirrored``, the codes of the images mirrored left-right follow theirs (``[2N, *latent]``,
  the labels repeated): twice the data for a prior that would otherwise overfit it.
  """
  codes = encode_images(model, images, progress=progress)
  if mirrored:
    flipped = np.ascontiguousarray(np.asarray(images)[:, :, ::-1])
    codes = np.concatenate([codes, encode_images(model, flipped, progress=progress)])
    labels = None if labels is None else np.concatenate([labels, labels])
  return codes, labels


def _init_params(config: PriorConfig, seed: int) -> hk.Params:
  codes = jnp.zeros((1, *config.latent_shape), jnp.int32)
  labels = None if config.num_classes == 0 else jnp.zeros((1,), jnp.int32)
  # Compiled whole rather than op by op (see trainer.init_train_state); the same values.
  return cpu_tuning.jit_once(_prior_init(config))(jax.random.PRNGKey(seed), codes, labels)


@cpu_tuning.memoize
def _prior_init(config: PriorConfig) -> Callable:
  return prior_bits(config).init


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
              run: RunConfig = RunConfig(checkpoint_every=500, log_every=100),
              devices: Sequence[Any] | None = None) -> hk.Params:
  """Fits a prior to ``codes`` ``[N, *latent]`` (and ``labels`` ``[N]``) -> its params.

  A residual model's codes ``[N, H, W, stages]`` are laid out on the prior's ``(H, W * stages)``
  grid (:attr:`~vqzoo.configs.ModelConfig.prior_shape`).

  A PixelCNN trains through the one loop of :mod:`vqzoo.training.loop` (its checkpoint
  ``prior_checkpoint.safetensors`` and ``prior_metrics.jsonl`` in ``workdir``, the same resume
  rule as every run); a categorical prior is counted, exactly.

  Args:
    config: the prior.
    recipe: steps, batch size (capped at ``N``), learning rate and seed (PixelCNN only).
    codes, labels: the training data.
    workdir: checkpoints and metrics (PixelCNN only; ``None``: none kept, no resume).
    run: resume/overwrite, intervals, ``until_step``, progress bar.
    devices: the devices of one step (default: every device of the run).

  Raises:
    FloatingPointError: the loss became NaN or Inf.
  """
  codes = np.asarray(codes, np.int32)
  grid = tuple(config.latent_shape)
  if codes.ndim > len(grid) + 1 and math.prod(codes.shape[1:]) == math.prod(grid):
    codes = codes.reshape(len(codes), *grid)  # a residual model's stages, innermost
  labels = None if labels is None else np.asarray(labels, np.int32)
  _check_data(config, codes, labels)
  if config.kind == "categorical":
    return _count_categorical(config, codes, labels)
  recipe = dataclasses.replace(recipe, batch_size=min(recipe.batch_size, len(codes)))
  optimizer, step = _prior_step(config, recipe)
  params = jax.device_get(_init_params(config, recipe.seed))
  opt_state = jax.device_get(cpu_tuning.jit_once(optimizer.init)(params))
  fresh = TrainState(params, {}, opt_state, np.int32(0),
                     np.asarray(jax.random.PRNGKey(recipe.seed)))

  def batches(start):
    for pick in batch_indices(len(codes), recipe.batch_size, recipe.seed, start):
      yield codes[pick], None if labels is None else labels[pick]

  result = loop.run(step, fresh, batches, recipe, workdir, run, parallel=DataParallel(devices),
                    files=FILES, desc="fit prior",
                    postfix=lambda m: {"bits": f"{m['bits_per_image']:.1f}"})
  return result.state.params


@cpu_tuning.memoize
def _prior_step(config: PriorConfig, recipe: TrainConfig
                ) -> tuple[optax.GradientTransformation, Callable]:
  """Adam on ``recipe``'s schedule and ``step(train_state, (codes, labels))`` minimising bits."""
  bits = prior_bits(config)
  optimizer = optax.adam(loop.learning_rate_schedule(recipe))

  def step(ts: TrainState, batch):
    c, l = batch
    loss, grads = jax.value_and_grad(
        lambda p: jnp.mean(bits.apply(p, None, c, l)) * math.log(2))(ts.params)  # nats/image
    updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
    return (ts._replace(params=optax.apply_updates(ts.params, updates), opt_state=opt_state,
                        step=ts.step + 1), {"bits_per_image": loss / math.log(2)})
  return optimizer, step


def code_frequencies(train_codes: np.ndarray, num_embeddings: int, per_stage: bool = False
                     ) -> np.ndarray:
  """Add-one smoothed frequencies of the training codes: ``[1, K]``, or ``[S, K]`` with
  ``per_stage`` (a residual model's codes ``[..., S]``: each of its S stages has its own
  codebook, so a code is counted among its own stage's codes, never pooled with the others')."""
  codes = np.asarray(train_codes)
  flat = codes.reshape(-1, codes.shape[-1]) if per_stage else codes.reshape(-1, 1)
  counts = np.stack([np.bincount(flat[:, s], minlength=num_embeddings)
                     for s in range(flat.shape[1])]) + 1.0
  return counts / counts.sum(axis=1, keepdims=True)


def unigram_bits(train_codes: np.ndarray, codes: np.ndarray, num_embeddings: int,
                 per_stage: bool = False) -> np.ndarray:
  """``[N]`` bits of ``codes`` under independent codes with the training codes' frequencies
  (:func:`code_frequencies`), the same at every position."""
  return _unigram_bits_by_stage(train_codes, codes, num_embeddings, per_stage).sum(axis=1)


def _unigram_bits_by_stage(train_codes: np.ndarray, codes: np.ndarray, num_embeddings: int,
                           per_stage: bool) -> np.ndarray:
  """``[N, S]`` unigram bits of each stage's codes (``S = 1`` without ``per_stage``)."""
  log2p = np.log2(code_frequencies(train_codes, num_embeddings, per_stage))
  codes = np.asarray(codes)
  stages = len(log2p)
  flat = codes.reshape(len(codes), -1, stages)  # [N, positions, stages]
  return -log2p[np.arange(stages), flat].sum(axis=1)


def sample_unigram(train_codes: np.ndarray, num: int, num_embeddings: int, seed: int,
                   per_stage: bool = False) -> np.ndarray:
  """``[num, *latent]`` codes drawn independently from the training codes' frequencies
  (:func:`code_frequencies`: a residual model's stages each from their own with ``per_stage``)."""
  probs = code_frequencies(train_codes, num_embeddings, per_stage)
  shape = (num, *np.shape(train_codes)[1:])
  rng = np.random.default_rng(seed)
  if len(probs) == 1:
    return rng.choice(num_embeddings, size=shape, p=probs[0]).astype(np.int32)
  stages = [rng.choice(num_embeddings, size=shape[:-1], p=p) for p in probs]
  return np.stack(stages, axis=-1).astype(np.int32)


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
  per_stage = model.config.quantizer.kind == "rvq"  # a residual model: a codebook per stage
  positions = math.prod(model.config.codes_shape)
  labels = test_labels if model.prior.num_classes else None
  # One pass of the prior: the bits at every position, summed per image (and per stage).
  bits = _position_bits(model, test_codes, labels).reshape(len(test_codes), -1)
  out = {"prior_bits": float(np.mean(bits.sum(axis=1))),
         "uniform_bits": positions * math.log2(k),
         "unigram_bits": float(np.mean(unigram_bits(train_codes, test_codes, k, per_stage)))}
  if model.prior.num_classes and marginal:
    out["prior_bits_marginal"] = float(np.mean(_batched(model.prior_bits, test_codes, None)))
  if per_stage and model.prior.kind == "pixelcnn":
    stages = model.config.quantizer.num_stages
    out["prior_bits_by_stage"] = bits.reshape(len(bits), -1, stages).sum(axis=1).mean(
        axis=0).tolist()
    out["unigram_bits_by_stage"] = np.mean(
        _unigram_bits_by_stage(train_codes, test_codes, k, per_stage), axis=0).tolist()
  return out


def _position_bits(model: Any, codes: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
  """``[N, *prior.latent_shape]`` float64 bits of each code given the codes before it (and
  the labels); a residual model's ``[N, H, W, S]`` codes lie on the prior's ``(H, W * S)``
  grid, stages innermost."""
  config = model.prior
  logits = build_prior(config).apply
  fn = cpu_tuning.jit(lambda p, c, l: position_bits(logits(p, None, c, l), c))
  grid = np.asarray(codes, np.int32).reshape(len(codes), *config.latent_shape)
  labels = None if labels is None else np.asarray(labels, np.int32)
  return _batched(lambda c, l: np.asarray(fn(model.prior_params, c, l), np.float64), grid,
                  labels)


def _batched(fn, codes: np.ndarray, labels: np.ndarray | None, size: int = 1000) -> np.ndarray:
  return np.concatenate([fn(codes[i:i + size], None if labels is None else labels[i:i + size])
                         for i in range(0, len(codes), size)])


def fit_model_prior(base: str, out: str | os.PathLike, recipe: TrainConfig, *,
                    dataset: str | None = None, images_dir: str | None = None,
                    data_dir: str | None = None, eval_split: str = "test",
                    conditional: bool = True, hidden: int = 32,
                    num_layers: int = 6, workdir: str | os.PathLike | None = None,
                    run: RunConfig = RunConfig(checkpoint_every=500, log_every=100),
                    convert: str | None = None, resize: bool = False, mirrored: bool = False
                    ) -> tuple[Any, dict[str, Any]]:
  """Fits a prior to any model's codes and saves the model with it to ``out``.

  Args:
    base: zoo name, ``hf-hub:owner/repo[@rev]`` or a model directory (e.g. a fine-tuned one).
    out: output model directory (the model's files plus ``prior.json``, ``prior.safetensors``).
    recipe: steps, batch size, learning rate and seed (``recipe.split`` for a dataset).
    dataset: a TFDS dataset (its ``recipe.split``; labels condition the prior unless
      ``conditional`` is off; ``eval_split`` measures it), or
    images_dir: a folder of images (unconditional; 10% held out to measure it).
    hidden, num_layers: PixelCNN size (conv models).
    workdir: checkpoints (default ``OUT.work``); ``run.resume`` continues there, under the
      resume rule of every run (:mod:`vqzoo.training.checkpoint`).
    run: resume/overwrite, intervals, progress bars.
    convert, resize: how image files of another channel kind or size are converted
      (see :func:`~vqzoo.image_folder.load_image_folder`); recorded in the lineage.
    mirrored: also fit to the codes of the training images mirrored left-right
      (:func:`training_codes`); the unigram baseline stays that of the images as given.

  Returns:
    ``(model with its prior, metrics)``: bits per image of the held-out codes beside the
    baselines, and ``eval_split`` (a TFDS split, or ``"held-out"`` for an image folder).
  """
  from vqzoo.pretrained import load
  from vqzoo.training.data import load_images, load_labels
  from vqzoo.image_folder import conversion_record, load_image_folder, split_holdout
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
    everything, _ = load_image_folder(images_dir, model.config.image_shape, convert, resize)
    images, test_images = split_holdout(everything, 0.1, recipe.seed)
    eval_split = "held-out"
    if len(test_images) == 0:  # too few images to hold any out
      test_images, eval_split = images, "fitted"
  num_classes = 0 if labels is None else int(labels.max()) + 1
  config = PriorConfig.for_model(model.config, num_classes=num_classes, hidden=hidden,
                                 num_layers=num_layers)
  codes, labels = training_codes(model, images, labels, mirrored, run.progress)
  out = Path(out)
  workdir = Path(workdir or out.with_name(out.name + ".work"))
  params = fit_prior(config, recipe, codes, labels, workdir=workdir, run=run)
  model.set_prior(config, params)
  metrics = {**prior_nll(model, encode_images(model, test_images, progress=run.progress),
                         test_labels, codes[:len(images)]), "eval_split": eval_split}
  warned = result_warnings.emit(result_warnings.prior_warnings(metrics) + (
      result_warnings.held_out_warnings(len(test_images) if eval_split == "held-out" else 0)
      if images_dir is not None else []))
  data = ({"source": "tfds", "dataset": dataset, "split": recipe.split, "eval_split": eval_split}
          if dataset is not None else
          {"source": "image-folder", "folder": Path(images_dir).name, "images": len(everything),
           "held_out": len(test_images) if eval_split == "held-out" else 0,
           "conversion": conversion_record(convert, resize)})
  if mirrored:
    data["mirrored"] = True
  model.card = prior_card(model, base, out.name, config, recipe, metrics, data, warned)
  model.save_pretrained(out)
  return model, metrics


def prior_card(model: Any, base: str, name: str, config: PriorConfig, recipe: TrainConfig,
               metrics: dict[str, Any], data: dict[str, Any], warned: Sequence[str]) -> str:
  """The card of a model saved by :func:`fit_model_prior`: its prior, scores and warnings."""
  from vqzoo.image_folder import conversion_section
  from vqzoo.pretrained.cards import render_card
  from vqzoo.training.finetuning import _base_datasets, _portable
  base_label = base if "path" not in model.source else Path(base).name
  kind = (f"a gated PixelCNN over the code grid (van den Oord et al. 2016), {config.hidden} "
          f"channels, {config.num_layers} gated layers, {recipe.steps} Adam steps of batch "
          f"{recipe.batch_size}" if config.kind == "pixelcnn" else
          "a categorical distribution over the one code per image, fitted exactly by counting")
  cond = (f", conditioned on the {config.num_classes} class labels" if config.num_classes
          else ", unconditional")
  where = (f"`{data['dataset']}` split `{data['split']}`" if data["source"] == "tfds"
           else f"the images of the folder `{data['folder']}`")
  if data.get("mirrored"):
    where += " and of those images mirrored left-right"
  rows = [f"| this prior | {metrics['prior_bits']:.1f} |"]
  each_stage = " (each stage's own)" if model.config.quantizer.kind == "rvq" else ""
  if "prior_bits_marginal" in metrics:
    rows.append(f"| this prior (label summed out) | {metrics['prior_bits_marginal']:.1f} |")
  section = "\n".join([
      f"The prior is {kind}{cond}, fitted to the codes of {where}. "
      "`model.sample(n)` draws codes from it and decodes them.", "",
      f"Negative log-likelihood of the {metrics['eval_split']} codes, bits per image (lower is "
      "better; a useful prior is well below the unigram baseline):", "",
      "| model of the codes | bits per image |", "| --- | ---: |", *rows,
      f"| unigram code frequencies{each_stage} | {metrics['unigram_bits']:.1f} |",
      f"| uniform | {metrics['uniform_bits']:.1f} |"])
  lineage = {"base": base_label, "base_source": _portable(model.source), "prior_data": data,
             "prior": config.to_dict(), "prior_recipe": recipe.to_dict()}
  return render_card(
      name, model.config, f"`{base_label}` with a prior over its codes fitted by "
      "`vqzoo fit-prior`.", lineage=lineage, load_spec=f"./{name}",
      base_datasets=_base_datasets(model),
      extra_sections={**result_warnings.card_section(warned), "Prior": section,
                      **conversion_section(data.get("conversion"), model.config.image_shape)})
