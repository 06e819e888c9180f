"""A loaded VQ-VAE: config + params + state, with encode/decode/reconstruct and Hub I/O.

A model directory (and a Hub repo) holds ``config.json`` (the :class:`ModelConfig`),
``model.safetensors`` (params and state, flat ``/``-joined keys, float32) and a
``README.md`` model card. Saving and pushing go through
``huggingface_hub.ModelHubMixin``; loading checks every tensor against the config.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from huggingface_hub import ModelHubMixin, hf_hub_download

from vqzoo import compilation, serialization
from vqzoo.cards import render_card
from vqzoo.configs import ModelConfig
from vqzoo.images import as_image_batch, to_float_images
from vqzoo.io import atomic_write_bytes
from vqzoo.model import build, build_codec

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
# Conv models run inference on this many pixels per call (128 MNIST images), dispatched back
# to back: at batch 1024 on the 2-core benchmark machine that measured 11,300-11,700 img/s,
# against 10,100-10,400 in one call sliced in the graph (model.py) and 7,900 in one unsliced
# call; it also bounds memory and compiles one shape for any large batch. MLPs: one call.
CONV_CHUNK_PIXELS = 128 * 28 * 28


class IntegrityError(ValueError):
  """A weights file whose sha256 differs from its pin."""


def verify_sha256_bytes(data: bytes, expected: str | None, name: str | os.PathLike) -> str:
  """Returns ``data``'s sha256; raises :class:`IntegrityError` if it is not ``expected``."""
  actual = hashlib.sha256(data).hexdigest()
  if expected is not None and actual != expected:
    raise IntegrityError(f"refusing {name}: sha256 is {actual}, expected {expected} "
                         "(the file is corrupt or was altered)")
  return actual


def _evict_cached(path: str) -> None:
  """Removes a Hub-cache snapshot entry and the blob it points to."""
  target = os.path.realpath(path)
  for p in {path, target}:
    try:
      os.unlink(p)
    except OSError:
      pass


def _commit_of(path: str) -> str | None:
  match = re.search(r"[/\\]snapshots[/\\]([0-9a-f]{40})[/\\]", path)
  return match.group(1) if match else None


class PretrainedVQVAE(
    ModelHubMixin,
    library_name="vqzoo",
    tags=["vq-vae", "jax", "haiku", "vqzoo"],
    repo_url="https://github.com/vqzoo/vqzoo",
):
  """A VQ-VAE ready to use.

  Attributes:
    config: the :class:`ModelConfig`.
    params, state: haiku params and state (the EMA codebook lives in state).
    card: the model card (Markdown), if any.
    source: where it was loaded from (``{"repo_id", "revision", "commit", "sha256"}`` or a path).
  """

  def __init__(self, config: ModelConfig, params=None, state=None, card: str | None = None,
               source: dict[str, Any] | None = None):
    if not isinstance(config, ModelConfig):
      raise ValueError(f"config: expected a vqzoo.ModelConfig, got {type(config).__name__}")
    init = lambda rng: build(config).init(rng, jnp.zeros((1, *config.image_shape)), True)
    if params is None or state is None:
      params, state = init(jax.random.PRNGKey(0))
    template_params, template_state = jax.eval_shape(init, jax.random.PRNGKey(0))
    serialization.check_structure(template_params, params, "params")
    serialization.check_structure(template_state, state, "state")
    self.config = config
    self.params = jax.tree_util.tree_map(jnp.asarray, params)
    self.state = jax.tree_util.tree_map(jnp.asarray, state)
    self.card = card
    self.source = source or {}
    codec = build_codec(config)

    def on_images(method):
      # uint8 or float32 images go to the device as they are: conversion and the range check
      # run inside the jitted function, and the caller raises if the check failed.
      def fn(p, s, x):
        if x.dtype == jnp.uint8:
          in_range = jnp.array(True)
          x = x.astype(jnp.float32) / 255.0
        else:  # comparisons with NaN are false, so NaN counts as out of range
          in_range = jnp.all((x >= 0.0) & (x <= 1.0))
        out = codec.apply(p, s, None, method, x.astype(jnp.float32))[0]
        return (jnp.clip(out, 0.0, 1.0) if method == "reconstruct" else out), in_range
      return compilation.jit(fn)

    self._encode = on_images("encode")
    self._reconstruct = on_images("reconstruct")
    self._decode = compilation.jit(
        lambda p, s, c: jnp.clip(codec.apply(p, s, None, "decode", c)[0], 0.0, 1.0))

  # ------------------------------------------------------------------ inference

  def preprocess(self, images) -> np.ndarray:
    """uint8 or float images, with or without channel axis -> ``[B, H, W, C]`` float32."""
    return to_float_images(images, self.config.image_shape)

  def _chunks(self, batch: np.ndarray) -> list[np.ndarray]:
    """Splits ``[B, ...]`` into the slices inference runs on (see ``CONV_CHUNK_PIXELS``)."""
    if self.config.arch != "conv":
      return [batch]
    h, w, _ = self.config.image_shape
    size = max(1, CONV_CHUNK_PIXELS // (h * w))
    return [batch[i:i + size] for i in range(0, len(batch), size)] or [batch]

  def _run(self, fn, images) -> np.ndarray:
    x = as_image_batch(images, self.config.image_shape)
    if x.dtype != np.uint8 and x.dtype != np.float32:
      x = self.preprocess(x)  # other dtypes: checked and converted on the host
    # Every chunk is dispatched before the first result is read: the device stays busy.
    results = [fn(self.params, self.state, chunk) for chunk in self._chunks(x)]
    if not all(bool(in_range) for _, in_range in results):
      self.preprocess(x)  # the host check raises the error that says what was wrong
      raise ValueError("images: expected floats in [0, 1]")  # defensive; the line above raises
    return np.concatenate([np.asarray(out) for out, _ in results])

  def encode(self, images) -> np.ndarray:
    """Images -> int32 codes ``[B]`` (MLP) or ``[B, H/4, W/4]`` (conv)."""
    return self._run(self._encode, images)

  def decode(self, codes) -> np.ndarray:
    """int codes ``[B, ...latent]`` -> ``[B, H, W, C]`` float32 images in [0, 1]."""
    codes = np.asarray(codes)
    k = self.config.quantizer.num_embeddings
    expected = self.config.latent_shape
    if not np.issubdtype(codes.dtype, np.integer):
      raise ValueError(f"codes: expected integers in [0, {k}), got dtype {codes.dtype}")
    if codes.ndim != 1 + len(expected) or tuple(codes.shape[1:]) != expected:
      raise ValueError(f"codes: expected shape [B{''.join(', ' + str(s) for s in expected)}], "
                       f"got {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= k):
      raise ValueError(f"codes: expected integers in [0, {k}), got values in "
                       f"[{codes.min()}, {codes.max()}]")
    results = [self._decode(self.params, self.state, chunk)
               for chunk in self._chunks(codes.astype(np.int32))]
    return np.concatenate([np.asarray(out) for out in results])

  def reconstruct(self, images) -> np.ndarray:
    """Images -> ``[B, H, W, C]`` float32 reconstructions in [0, 1]."""
    return self._run(self._reconstruct, images)

  @property
  def num_parameters(self) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self.params)))

  # ------------------------------------------------------------------ files and the Hub

  def _save_pretrained(self, save_directory: Path) -> None:
    save_directory = Path(save_directory)
    unchanged = self._loaded_weights_if_unchanged()
    if unchanged is not None:
      atomic_write_bytes(save_directory / WEIGHTS_NAME, unchanged)
    else:
      serialization.save(save_directory / WEIGHTS_NAME, self.params, self.state,
                   metadata={"format": "vqzoo"})  # one key: safetensors orders several randomly
    atomic_write_bytes(save_directory / CONFIG_NAME,
                       (json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    card = self.card if self.card is not None else render_card("vqzoo-model", self.config)
    atomic_write_bytes(save_directory / CARD_NAME, card.encode())

  @classmethod
  def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                       local_files_only: bool, token, config: ModelConfig | None = None,
                       expected_sha256: str | None = None, **kwargs) -> "PretrainedVQVAE":
    if config is None:
      raise FileNotFoundError(f"{model_id}: no {CONFIG_NAME} found (the repo or revision does not "
                              "exist, is unreachable, or is not a vqzoo model)")
    if not isinstance(config, ModelConfig):
      config = ModelConfig.from_dict(config)
    if os.path.isdir(model_id):
      weights_path = os.path.join(model_id, WEIGHTS_NAME)
      card_path = os.path.join(model_id, CARD_NAME)
      if not os.path.exists(weights_path):
        raise FileNotFoundError(f"{model_id}: no {WEIGHTS_NAME}")
      source = {"path": os.path.abspath(model_id)}
    else:
      common = dict(repo_id=model_id, revision=revision, cache_dir=cache_dir,
                    force_download=force_download, local_files_only=local_files_only,
                    token=token, library_name="vqzoo")
      weights_path = hf_hub_download(filename=WEIGHTS_NAME, **common)
      try:
        card_path = hf_hub_download(filename=CARD_NAME, **common)
      except Exception:  # a card is optional
        card_path = None
      source = {"repo_id": model_id, "revision": revision or "main",
                "commit": _commit_of(weights_path)}
    data = Path(weights_path).read_bytes()
    try:
      source["sha256"] = verify_sha256_bytes(data, expected_sha256, weights_path)
    except IntegrityError:
      if "path" not in source:  # never leave a refused file in the Hub cache
        _evict_cached(weights_path)
      raise
    params, state, _ = serialization.from_bytes(data)
    card = Path(card_path).read_text() if card_path and os.path.exists(card_path) else None
    model = cls(config, params, state, card=card, source=source)
    model._loaded_weights = data
    return model

  def _loaded_weights_if_unchanged(self) -> bytes | None:
    """The weights file this model was loaded from, if params and state still match it bitwise.

    safetensors writes the metadata keys in a random order, so re-serialising an unchanged
    model can give bytes whose sha256 differs from its pin; saving (and pushing) the loaded
    bytes keeps a zoo variant's Hub copy identical to its bundled, pinned file.
    """
    data = getattr(self, "_loaded_weights", None)
    if data is None:
      return None
    _, _, stored = serialization.from_bytes(data)
    current = {**serialization.flatten(self.params, "params"),
               **serialization.flatten(self.state, "state")}
    if stored.keys() != current.keys():
      return None
    for key, value in current.items():
      old = stored[key]
      if value.dtype != old.dtype or value.shape != old.shape or value.tobytes() != old.tobytes():
        return None
    return data

  def __repr__(self) -> str:
    q = self.config.quantizer
    return (f"PretrainedVQVAE(arch={self.config.arch!r}, image_shape={self.config.image_shape}, "
            f"K={q.num_embeddings}, D={q.embedding_dim}, ema={q.ema}, "
            f"params={self.num_parameters:,})")
