"""``vqzoo.load``: a zoo name, ``hf-hub:owner/repo[@revision]`` or a local directory -> model."""

from __future__ import annotations

import os

from vqzoo.pretrained import registry
from vqzoo.pretrained.integrity import IntegrityError
from vqzoo.pretrained.model import WEIGHTS_NAME, PretrainedVQVAE

HUB_PREFIX = "hf-hub:"


def parse_hub_id(spec: str) -> tuple[str, str | None]:
  """``"owner/repo@rev"`` -> ``("owner/repo", "rev")``; the revision is optional."""
  repo_id, _, revision = spec.partition("@")
  if repo_id.count("/") != 1 or not all(repo_id.split("/")):
    raise ValueError(f"expected a Hub repo id like 'owner/name[@revision]', got {spec!r}")
  return repo_id, revision or None


def load(name_or_path: str | os.PathLike, *, revision: str | None = None,
         cache_dir: str | None = None, local_files_only: bool = False,
         token: str | bool | None = None) -> PretrainedVQVAE:
  """Loads a ready-to-use model.

  Args:
    name_or_path: a zoo name (``vqzoo.list_models()``), ``"hf-hub:owner/repo[@rev]"``,
      or a directory written by ``save_pretrained``.
    revision: Hub revision (branch, tag or commit); overrides ``@rev``.
    cache_dir: Hugging Face cache directory.
    local_files_only: never touch the network (``HF_HUB_OFFLINE=1`` does the same).
    token: Hub token.

  A zoo name loads the weights bundled with the package when their sha256
  matches the registry pin (no network), else downloads the pinned revision
  from the Hub and checks the same digest. A mismatch raises
  :class:`~vqzoo.IntegrityError` naming both digests.
  """
  spec = os.fspath(name_or_path)
  hub = dict(cache_dir=cache_dir, local_files_only=local_files_only, token=token)
  if spec.startswith(HUB_PREFIX):
    repo_id, rev = parse_hub_id(spec[len(HUB_PREFIX):])
    return PretrainedVQVAE.from_pretrained(repo_id, revision=revision or rev, **hub)
  if os.path.isdir(spec):
    return PretrainedVQVAE.from_pretrained(spec)
  entry = registry.get_entry(spec)
  pin = entry.weights.sha256
  if pin is None:
    raise FileNotFoundError(f"zoo model {spec!r} has no trained weights yet; train it with "
                            f"`python scripts/train.py --variant {spec} --bundle`")
  if (entry.bundled_dir / WEIGHTS_NAME).exists():
    try:
      return PretrainedVQVAE.from_pretrained(entry.bundled_dir, expected_sha256=pin)
    except IntegrityError:
      pass  # an altered bundled file: fetch the pinned one from the Hub instead
  return PretrainedVQVAE.from_pretrained(entry.weights.repo_id, revision=revision or
                                         entry.weights.revision, expected_sha256=pin, **hub)


__all__ = ["load", "parse_hub_id"]
