"""The public constructors: ``vqzoo.load`` and ``vqzoo.create_model`` (timm's idiom).

Both read an artifact with :mod:`vqzoo.pretrained.loading` (or draw fresh weights) and let
:class:`~vqzoo.PretrainedVQVAE` build itself; this module is the only one that knows both.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import warnings
from typing import Any

from vqzoo.configs import ModelConfig
from vqzoo.pretrained import registry
from vqzoo.pretrained.loading import read_artifact
from vqzoo.pretrained.model import PretrainedVQVAE


def load(name_or_path: str | os.PathLike, *, revision: str | None = None,
         cache_dir: str | None = None, local_files_only: bool = False,
         token: str | bool | None = None, force_download: bool = False,
         expected_sha256: str | None = None) -> PretrainedVQVAE:
  """Loads a ready-to-use, verified model.

  Args:
    name_or_path: a zoo name, ``"hf-hub:owner/repo[@rev][#sha256=DIGEST]"`` or a path to a
      directory written by ``save_pretrained`` (see :mod:`vqzoo.pretrained.loading`).
    revision: Hub revision (branch, tag or commit); overrides ``@rev``.
    cache_dir: Hugging Face cache directory.
    local_files_only: never touch the network (``HF_HUB_OFFLINE=1`` does the same).
    token: Hub token.
    force_download: download again even if cached.
    expected_sha256: sha256 the weights file (``model.safetensors``) must have.

  Returns:
    A :class:`~vqzoo.PretrainedVQVAE`; its ``source`` says where it came from and the digests.

  Raises:
    IntegrityError: a file differs from its pin, or a zoo model's config from the registry's.
    KeyError: an unknown zoo name. FileNotFoundError: no such directory, repo, revision or
    file. vqzoo.pretrained.hub.HubError: the Hub failed or did not answer in time.
    ValueError: a malformed spec, config or weights file.
  """
  return PretrainedVQVAE.from_artifact(read_artifact(
      name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
      token=token, force_download=force_download, expected_sha256=expected_sha256))


def _fields(config: Any) -> set[str]:
  return {f.name for f in dataclasses.fields(config)} if config is not None else set()


def overridable(config: ModelConfig) -> list[str]:
  """The field names :func:`with_overrides` accepts for ``config``, sorted."""
  sub = _fields(config.quantizer) | _fields(config.conv) | _fields(config.mlp)
  return sorted(sub | {"image_shape", "output_activation"})


def with_overrides(config: ModelConfig, **overrides: Any) -> ModelConfig:
  """``config`` with some fields replaced, named flat as timm's ``create_model`` takes them.

  A name is a field of the quantizer (``num_embeddings``, ``embedding_dim``, ``ema``, ...), of
  the architecture's config (``num_hiddens``, ... for conv; ``encoder_sizes``, ... for MLP),
  or ``image_shape`` / ``output_activation``.

  Raises:
    TypeError: a name that is no such field (the message lists the ones there are).
    ValueError: a value the config refuses.
  """
  known = overridable(config)
  unknown = sorted(set(overrides) - set(known))
  if unknown:
    close = [m for u in unknown for m in difflib.get_close_matches(u, known, n=1)]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise TypeError(f"create_model: unknown config field(s) {', '.join(unknown)} for a "
                    f"{config.arch} model{hint}; expected some of {', '.join(known)}")
  parts = {}
  for part in ("quantizer", "conv", "mlp"):
    sub = getattr(config, part)
    mine = {k: v for k, v in overrides.items() if k in _fields(sub)}
    if mine:
      parts[part] = dataclasses.replace(sub, **mine)
  top = {k: v for k, v in overrides.items() if k in ("image_shape", "output_activation")}
  return dataclasses.replace(config, **parts, **top)


def create_model(name: str, pretrained: bool = False, *, seed: int = 0,
                 revision: str | None = None, cache_dir: str | None = None,
                 local_files_only: bool = False, token: str | bool | None = None,
                 force_download: bool = False, expected_sha256: str | None = None,
                 **overrides: Any) -> PretrainedVQVAE:
  """A zoo architecture, as ``timm.create_model``: fresh (``pretrained=False``) or trained.

  Args:
    name: a zoo name (``vqzoo.list_models()``).
    pretrained: load the zoo's trained, verified weights (and prior) as :func:`load` does.
    seed: initialisation of a fresh model (the same int gives the same weights).
    revision, cache_dir, local_files_only, token, force_download, expected_sha256: as
      :func:`load`, with ``pretrained=True``.
    **overrides: config fields to change, e.g. ``num_embeddings=256`` (see
      :func:`with_overrides`). With ``pretrained=True`` the trained weights must still fit
      (a conv model takes another ``image_shape``); a prior that does not fit the new code
      grid is left out, with a warning.

  Returns:
    A :class:`~vqzoo.PretrainedVQVAE`; with overrides, ``source["overrides"]`` records them.

  Raises:
    KeyError: an unknown zoo name. TypeError: an unknown config field. ValueError: a value the
    config refuses, or (``pretrained=True``) trained weights that do not fit the overridden
    config (the message names the tensors).
  """
  base = registry.get_config(name)
  config = with_overrides(base, **overrides)
  load_kwargs = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                     token=token, force_download=force_download,
                     expected_sha256=expected_sha256)
  if not pretrained:
    given = sorted(k for k, v in load_kwargs.items() if v not in (None, False))
    if given:
      raise TypeError(f"create_model: {', '.join(given)} only apply with pretrained=True")
    model = PretrainedVQVAE.from_config(config, seed=seed)
  elif not overrides:
    return load(name, **load_kwargs)
  else:
    artifact = read_artifact(name, **load_kwargs)
    try:  # the model first, the prior (if it still fits) after
      model = PretrainedVQVAE.from_artifact(
          dataclasses.replace(artifact, prior=None, prior_params=None), config)
    except ValueError as e:
      changed = ", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items()))
      raise ValueError(f"create_model({name!r}, pretrained=True, {changed}): the trained "
                       f"weights do not fit the changed config ({e}). Use pretrained=False "
                       "for a fresh model of this shape, or change only fields that keep "
                       "every tensor's shape (e.g. commitment_cost, decay).") from None
    prior = artifact.prior
    if prior is not None and (prior.num_embeddings, tuple(prior.latent_shape)) == (
        config.quantizer.num_embeddings, config.prior_shape):
      model.set_prior(prior, artifact.prior_params)
    elif prior is not None:
      warnings.warn(f"create_model({name!r}): the zoo's prior models codes on a "
                    f"{tuple(prior.latent_shape)} grid, the changed config makes a "
                    f"{config.prior_shape} grid; loaded without the prior", stacklevel=2)
    model.card = None  # the zoo card describes the unchanged model
  if overrides:
    model.source = {**model.source, "overrides": dict(sorted(overrides.items()))}
  return model


__all__ = ["load", "create_model", "with_overrides", "overridable"]
