"""A loaded VQ-VAE: config + params + state, with encode/decode/reconstruct and Hub I/O.

A model directory (and a Hub repo) holds ``config.json`` (the :class:`ModelConfig`),
``model.safetensors`` (params and state, flat ``/``-joined keys, float32) and a
``README.md`` model card. Saving and pushing go through
``huggingface_hub.ModelHubMixin``; loading checks every tensor against the config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from huggingface_hub import ModelHubMixin

from vqzoo.configs import ModelConfig
from vqzoo.images import to_float_images
from vqzoo.io import atomic_write_bytes
from vqzoo.nn import build
from vqzoo.pretrained import hub, serialization
from vqzoo.pretrained.cards import render_card
from vqzoo.pretrained.inference import Inference
from vqzoo.pretrained.integrity import IntegrityError, verify_sha256_bytes

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"


def _same_leaves(a: list[Any], b: list[Any]) -> bool:
  """The same array objects (arrays are immutable, so the same values)."""
  return len(a) == len(b) and all(x is y for x, y in zip(a, b))


class PretrainedVQVAE(
    ModelHubMixin,
    library_name="vqzoo",
    tags=["vq-vae", "jax", "haiku", "vqzoo"],
    repo_url="https://github.com/vqzoo/vqzoo",
):
  """A VQ-VAE ready to use.

  Args:
    config: the :class:`ModelConfig`.
    params, state: Haiku params and state (the EMA codebook lives in state); a fresh
      initialisation (seed 0) when omitted.
    card: the model card (Markdown), if any.
    source: where it was loaded from (``{"repo_id", "revision", "commit", "sha256"}`` or
      ``{"path", "sha256"}``).

  Attributes:
    config, params, state, card, source: as given.
  """

  def __init__(self, config: ModelConfig, params: hk.Params | None = None,
               state: hk.State | None = None, card: str | None = None,
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
    self._inference = Inference(config)
    self._loaded_bytes: bytes | None = None
    self._loaded_leaves: list[Any] = []  # held, so no leaf's identity can be reused

  # ------------------------------------------------------------------ inference

  def preprocess(self, images: Any) -> np.ndarray:
    """uint8 or float images, with or without channel axis -> ``[B, H, W, C]`` float32."""
    return to_float_images(images, self.config.image_shape)

  def encode(self, images: Any) -> np.ndarray:
    """Images (uint8 or floats in [0, 1], ``[B, H, W(, C)]``) -> int32 codes ``[B, *latent]``.

    ``latent`` is ``()`` for MLP models and ``(H/4, W/4)`` for conv models.
    """
    return self._inference.encode(self.params, self.state, images)

  def decode(self, codes: Any) -> np.ndarray:
    """int codes ``[B, *latent]`` -> ``[B, H, W, C]`` float32 images in [0, 1]."""
    return self._inference.decode(self.params, self.state, codes)

  def reconstruct(self, images: Any) -> np.ndarray:
    """Images -> ``[B, H, W, C]`` float32 reconstructions in [0, 1]."""
    return self._inference.reconstruct(self.params, self.state, images)

  @property
  def codebook(self) -> np.ndarray:
    """``[K, D]`` float32 code vectors (a param or EMA state, whichever the quantizer uses)."""
    return self._inference.codebook(self.params, self.state)

  @property
  def num_parameters(self) -> int:
    """Number of trainable parameters."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self.params)))

  # ------------------------------------------------------------------ files and the Hub

  def _save_pretrained(self, save_directory: Path) -> None:
    save_directory = Path(save_directory)
    leaves = jax.tree_util.tree_leaves((self.params, self.state))
    if self._loaded_bytes is not None and _same_leaves(leaves, self._loaded_leaves):
      # Unchanged since loading: write the loaded bytes, so the sha256 stays that of the pin
      # (safetensors orders metadata keys randomly, so re-serialising could change it).
      atomic_write_bytes(save_directory / WEIGHTS_NAME, self._loaded_bytes)
    else:
      serialization.save(save_directory / WEIGHTS_NAME, self.params, self.state,
                         metadata={"format": "vqzoo"})
    atomic_write_bytes(save_directory / CONFIG_NAME,
                       (json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    card = self.card if self.card is not None else render_card("vqzoo-model", self.config)
    atomic_write_bytes(save_directory / CARD_NAME, card.encode())

  @classmethod
  def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | None,
                       force_download: bool, local_files_only: bool, token: str | bool | None,
                       config: ModelConfig | dict | None = None,
                       expected_sha256: str | None = None, **kwargs: Any) -> "PretrainedVQVAE":
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
      source: dict[str, Any] = {"path": os.path.abspath(model_id)}
    else:
      common = dict(revision=revision, cache_dir=cache_dir, force_download=force_download,
                    local_files_only=local_files_only, token=token)
      weights_path = hub.download(model_id, WEIGHTS_NAME, **common)
      card_path = hub.download(model_id, CARD_NAME, optional=True, **common)
      source = hub.source_record(model_id, revision, weights_path)
    data = Path(weights_path).read_bytes()
    try:
      source["sha256"] = verify_sha256_bytes(data, expected_sha256, weights_path)
    except IntegrityError:
      if "path" not in source:  # never leave a refused file in the Hub cache
        hub.evict(weights_path)
      raise
    params, state, _ = serialization.from_bytes(data)
    card = Path(card_path).read_text() if card_path and os.path.exists(card_path) else None
    model = cls(config, params, state, card=card, source=source)
    model._loaded_bytes = data
    model._loaded_leaves = jax.tree_util.tree_leaves((model.params, model.state))
    return model

  def __repr__(self) -> str:
    q = self.config.quantizer
    return (f"PretrainedVQVAE(arch={self.config.arch!r}, image_shape={self.config.image_shape}, "
            f"K={q.num_embeddings}, D={q.embedding_dim}, ema={q.ema}, "
            f"params={self.num_parameters:,})")
