"""The artifact record: what :mod:`vqzoo.pretrained.loading` read and verified, as plain data.

:class:`~vqzoo.PretrainedVQVAE` builds itself from one (``PretrainedVQVAE.from_artifact``);
loading never constructs a model, so the two modules import one way only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from vqzoo.configs import ModelConfig, PriorConfig


@dataclasses.dataclass(frozen=True)
class Artifact:
  """A model's verified files, parsed.

  Attributes:
    config: the :class:`~vqzoo.ModelConfig` (``config.json``).
    params, state: Haiku params and state from ``model.safetensors`` (numpy arrays).
    weights: the bytes of ``model.safetensors``, so an unchanged model saves them back as they
      were (its sha256 stays that of the pin).
    prior, prior_params: the prior over codes (``prior.json`` + ``prior.safetensors``), or
      ``None`` for both.
    card: the model card (Markdown), or ``None``.
    source: where it came from: ``{"zoo", "repo_id", "revision", "commit", "bundled"}`` (the
      keys that apply) or ``{"path"}``.
    digests: ``{"sha256"}`` of the weights file, ``{"manifest_sha256"}`` of every artifact file,
      ``{"codec_sha256"}`` of the config and weights alone (see
      :func:`vqzoo.pretrained.integrity.manifest_digest`).
  """

  config: ModelConfig
  params: Mapping[str, Mapping[str, Any]]
  state: Mapping[str, Mapping[str, Any]]
  weights: bytes
  prior: PriorConfig | None = None
  prior_params: Mapping[str, Mapping[str, Any]] | None = None
  card: str | None = None
  source: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  digests: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __repr__(self) -> str:  # the arrays and bytes would drown the record
    return (f"Artifact(source={dict(self.source)}, digests={dict(self.digests)}, "
            f"prior={self.prior is not None}, card={self.card is not None})")
