"""A loaded VQ-VAE: config + params + state, with encode/decode/reconstruct and Hub I/O.

A model directory (and a Hub repo) holds ``config.json`` (the :class:`ModelConfig`),
``model.safetensors`` (params and state, flat ``/``-joined keys, float32) and a
``README.md`` model card. Saving and pushing go through
``huggingface_hub.ModelHubMixin``; loading checks every tensor against the config.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from huggingface_hub import ModelHubMixin

from vqzoo.configs import ModelConfig, PriorConfig
from vqzoo.images import to_float_images
from vqzoo.io import atomic_write_bytes
from vqzoo.nn import build, prior_bits
from vqzoo.pretrained import hub, loading, serialization
from vqzoo.pretrained.artifact import Artifact
from vqzoo.pretrained.cards import render_card
from vqzoo.pretrained.inference import inference_for
from vqzoo.pretrained.initial import initial_weights
from vqzoo.pretrained.generation import FIT_HINT, Generation, NoPriorError, generation_for
from vqzoo.pretrained.integrity import (CARD_NAME, CONFIG_NAME, PRIOR_CONFIG_NAME, PRIOR_FILES,
                                        PRIOR_WEIGHTS_NAME, WEIGHTS_NAME)


def _same_leaves(a: list[Any], b: list[Any]) -> bool:
  """The same array objects (arrays are immutable, so the same values)."""
  return len(a) == len(b) and all(x is y for x, y in zip(a, b))


# The shapes and dtypes a model's weights must have, traced once per config in a process.
@functools.lru_cache(maxsize=32)
def _weights_template(config: ModelConfig) -> tuple[Any, Any]:
  """``(params, state)`` of ``build(config)`` as ``jax.ShapeDtypeStruct`` trees."""
  return jax.eval_shape(lambda: build(config).init(jax.random.PRNGKey(0),
                                                   jnp.zeros((1, *config.image_shape)), True))


@functools.lru_cache(maxsize=32)
def _prior_template(prior: PriorConfig) -> Any:
  """The params of ``prior_bits(prior)`` as a ``jax.ShapeDtypeStruct`` tree."""
  codes = jnp.zeros((1, *prior.latent_shape), jnp.int32)
  labels = None if prior.num_classes == 0 else jnp.zeros((1,), jnp.int32)
  return jax.eval_shape(lambda: prior_bits(prior).init(jax.random.PRNGKey(0), codes, labels))


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
      initialisation (:meth:`from_config` with ``seed=0``) when both are omitted.
    card: the model card (Markdown), if any.
    source: where it was loaded from (``{"repo_id", "revision", "commit", "sha256"}`` or
      ``{"path", "sha256"}``).
    prior, prior_params: an optional prior over the codes (:class:`~vqzoo.configs.PriorConfig`
      and its Haiku params), for :meth:`sample` and :meth:`prior_bits`.

  Attributes:
    config, params, state, card, source, prior, prior_params: as given.
  """

  def __init__(self, config: ModelConfig, params: hk.Params | None = None,
               state: hk.State | None = None, card: str | None = None,
               source: dict[str, Any] | None = None, prior: PriorConfig | None = None,
               prior_params: hk.Params | None = None):
    if not isinstance(config, ModelConfig):
      raise ValueError(f"config: expected a vqzoo.ModelConfig, got {type(config).__name__}")
    if params is None or state is None:
      if params is not None or state is not None:
        raise ValueError("params, state: give both or neither (neither: a fresh initialisation)")
      params, state = initial_weights(config, 0)
    template_params, template_state = _weights_template(config)
    serialization.check_structure(template_params, params, "params")
    serialization.check_structure(template_state, state, "state")
    serialization.check_values(template_params, params, "params")
    serialization.check_values(template_state, state, "state")
    self.config = config
    self.params = jax.tree_util.tree_map(jnp.asarray, params)
    self.state = jax.tree_util.tree_map(jnp.asarray, state)
    self.card = card
    self.source = source or {}
    self._inference = inference_for(config)
    self.prior: PriorConfig | None = None
    self.prior_params: hk.Params | None = None
    self._generation: Generation | None = None
    if prior is not None or prior_params is not None:
      self.set_prior(prior, prior_params)
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

  # ------------------------------------------------------------------ the prior

  def set_prior(self, prior: PriorConfig, prior_params: hk.Params) -> None:
    """Attaches a prior over this model's codes (checked against the config and its params)."""
    if not isinstance(prior, PriorConfig) or prior_params is None:
      raise ValueError("prior: expected a vqzoo.configs.PriorConfig and its params")
    q = self.config.quantizer
    if (prior.num_embeddings != q.num_embeddings
        or tuple(prior.latent_shape) != self.config.prior_shape):
      raise ValueError(f"prior: models codes of K={prior.num_embeddings} on a "
                       f"{prior.latent_shape} grid, but this model has K={q.num_embeddings} "
                       f"on {self.config.prior_shape}")
    template = _prior_template(prior)
    serialization.check_structure(template, prior_params, "prior params")
    serialization.check_values(template, prior_params, "prior params")
    self.prior = prior
    self.prior_params = jax.tree_util.tree_map(jnp.asarray, prior_params)
    self._generation = generation_for(prior)

  def _require_prior(self) -> Generation:
    if self._generation is None:
      raise NoPriorError(f"this model has no prior over its codes; {FIT_HINT}")
    return self._generation

  def sample_codes(self, num_samples: int, *, seed: int = 0, temperature: float = 1.0,
                   label: Any = None) -> np.ndarray:
    """Codes ``[N, *latent]`` int32 drawn from the prior (``[N, *latent, stages]`` residual).

    Args:
      num_samples: N.
      seed: the same seed gives the same codes.
      temperature: divides the logits; 0 picks the most likely code at each position.
      label: an int or ``[N]`` ints for a class-conditional prior (``None``: drawn uniformly).

    Raises:
      NoPriorError: the model has no prior (the message says how to fit one).
    """
    codes = self._require_prior().sample_codes(self.prior_params, num_samples, seed,
                                               temperature, label)
    return codes.reshape(len(codes), *self.config.codes_shape)

  def sample(self, num_samples: int, *, seed: int = 0, temperature: float = 1.0,
             label: Any = None) -> np.ndarray:
    """Images ``[N, H, W, C]`` float32 in [0, 1]: :meth:`sample_codes`, decoded."""
    return self.decode(self.sample_codes(num_samples, seed=seed, temperature=temperature,
                                         label=label))

  def prior_bits(self, codes: Any, label: Any = None) -> np.ndarray:
    """``[N]`` ``-log2 p(codes)`` under the prior (given ``label`` for a class-conditional one;
    without, the marginal over uniformly weighted classes). ``codes``: ``[N, *latent]``, as
    :meth:`encode` gives them."""
    generation = self._require_prior()
    codes = np.asarray(codes)
    if codes.ndim >= 1 and codes.shape[1:] == self.config.codes_shape:
      codes = codes.reshape(len(codes), *self.prior.latent_shape)  # residual: stages innermost
    return generation.bits(self.prior_params, codes, label)

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
    for name in PRIOR_FILES:  # never leave a stale prior beside new weights
      (save_directory / name).unlink(missing_ok=True)
    if self.prior is not None:
      atomic_write_bytes(save_directory / PRIOR_WEIGHTS_NAME, serialization.to_bytes(
          self.prior_params, {}, metadata={"format": "vqzoo-prior"}))
      atomic_write_bytes(save_directory / PRIOR_CONFIG_NAME, (json.dumps(
          self.prior.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    card = self.card if self.card is not None else render_card("vqzoo-model", self.config)
    atomic_write_bytes(save_directory / CARD_NAME, card.encode())

  def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Any:
    """``ModelHubMixin.save_pretrained`` (same arguments), replacing the folder whole or not at
    all: a kill or a full disk leaves the old model or the new one, never a mix (see
    :func:`vqzoo.pretrained.saving.save_model_folder`)."""
    from vqzoo.pretrained.saving import save_model_folder
    return save_model_folder(self, save_directory, **kwargs)

  def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
    """``ModelHubMixin.push_to_hub`` (same arguments) within ``VQZOO_HUB_DEADLINE`` seconds.

    Returns:
      The commit info (``.oid``, ``.commit_url``).

    Raises:
      vqzoo.pretrained.hub.HubError: the Hub cannot be reached or failed, or the push was
        cancelled at its deadline before anything was sent.
      vqzoo.pretrained.hub.HubOutcomeUnknown: the deadline passed while the commit was being
        sent; it may still land (the message names the command that shows the branch's head).
    """
    return hub.push(lambda: super(PretrainedVQVAE, self).push_to_hub(repo_id, **kwargs),
                    repo_id, branch=kwargs.get("branch"), token=kwargs.get("token"))

  def _remember_loaded(self, data: bytes) -> None:
    """Records the weights file this model was loaded from (saved back unchanged, see above)."""
    self._loaded_bytes = data
    self._loaded_leaves = jax.tree_util.tree_leaves((self.params, self.state))

  # ------------------------------------------------------------------ constructors

  @classmethod
  def from_artifact(cls, artifact: Artifact, config: ModelConfig | None = None
                    ) -> "PretrainedVQVAE":
    """The model an :class:`~vqzoo.pretrained.artifact.Artifact` describes.

    Args:
      artifact: read and verified by :func:`vqzoo.pretrained.loading.read_artifact`.
      config: a config to use instead of the artifact's (its weights must fit it).

    Raises:
      ValueError: the weights do not have the shapes ``config`` needs (the message names them).
    """
    model = cls(config or artifact.config, artifact.params, artifact.state,
                card=artifact.card, source={**artifact.source, **artifact.digests},
                prior=artifact.prior, prior_params=artifact.prior_params)
    model._remember_loaded(artifact.weights)
    return model

  @classmethod
  def from_config(cls, config: ModelConfig, *, seed: int = 0) -> "PretrainedVQVAE":
    """A freshly initialised (untrained) model of ``config``, as ``diffusers``' ``from_config``.

    The weights are drawn on the host (:mod:`vqzoo.pretrained.initial`): no compilation.
    """
    params, state = initial_weights(config, seed)
    return cls(config, params, state)

  @classmethod
  def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *,
                      revision: str | None = None, cache_dir: str | None = None,
                      force_download: bool = False, local_files_only: bool = False,
                      token: str | bool | None = None, expected_sha256: str | None = None,
                      **kwargs: Any) -> "PretrainedVQVAE":
    """Same as :func:`vqzoo.load`, with the Hugging Face reading of a bare ``owner/repo``.

    A zoo name is the zoo model; an existing directory (``"./saved-model"``, ``"saved-model"``,
    a ``Path``) is loaded from disk; any other ``owner/repo[@rev]`` is that Hub repo (as
    ``hf-hub:owner/repo``). ``expected_sha256`` pins the weights file.

    Raises:
      TypeError: an argument this method does not take. Otherwise as :func:`vqzoo.load`.
    """
    if kwargs:
      raise TypeError(f"from_pretrained: unexpected arguments {sorted(kwargs)}; it takes "
                      "revision, cache_dir, force_download, local_files_only, token and "
                      "expected_sha256")
    source = loading.resolve_pretrained(pretrained_model_name_or_path, revision)
    artifact = loading.read_artifact(source, cache_dir=cache_dir, force_download=force_download,
                                     local_files_only=local_files_only, token=token,
                                     expected_sha256=expected_sha256)
    return cls.from_artifact(artifact)

  def __call__(self, images: Any) -> np.ndarray:
    """``model(images)``: :meth:`reconstruct` (``[B, H, W(, C)]`` -> ``[B, H, W, C]`` float32)."""
    return self.reconstruct(images)

  def __repr__(self) -> str:
    q = self.config.quantizer
    prior = "none" if self.prior is None else (
        f"{self.prior.kind}" + (f", {self.prior.num_classes} classes" if self.prior.num_classes
                                else ""))
    return (f"PretrainedVQVAE(arch={self.config.arch!r}, image_shape={self.config.image_shape}, "
            f"K={q.num_embeddings}, D={q.embedding_dim}, ema={q.ema}, "
            f"params={self.num_parameters:,}, prior={prior})")
