"""Saving a model folder whole or not at all (:mod:`vqzoo.folders` does the swap).

A kill at any instant or a full disk leaves the folder holding the complete old model or the
complete new one (``vqzoo.load`` reads either), never a mix, and the next save leaves no
temporary file behind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import ModelHubMixin

from vqzoo.folders import replace_folder
from vqzoo.io import atomic_write_bytes
from vqzoo.pretrained.integrity import ARTIFACT_FILES, CARD_NAME, PRIOR_FILES

METRICS_NAME = "metrics.json"
MODEL_FOLDER_FILES = frozenset({*ARTIFACT_FILES, *PRIOR_FILES, CARD_NAME, METRICS_NAME})
# What an interrupted atomic_write_bytes left inside a folder saved by an earlier version.
_STALE_TEMP = re.compile(r"\.(.+)\.[A-Za-z0-9_]+\.tmp")


def replaceable(name: str) -> bool:
  """Whether a saved model folder may hold ``name`` (so that replacing the folder loses
  nothing else)."""
  stale = _STALE_TEMP.fullmatch(name)
  return name in MODEL_FOLDER_FILES or bool(stale and stale.group(1) in MODEL_FOLDER_FILES)


def save_model_folder(model: Any, path: str | os.PathLike, *,
                      extra_files: Mapping[str, bytes] | None = None,
                      push_to_hub: bool = False, repo_id: str | None = None,
                      **kwargs: Any) -> Any:
  """Writes ``model`` (and ``extra_files``, e.g. ``metrics.json``) as the folder ``path``.

  Args:
    model: a :class:`~vqzoo.PretrainedVQVAE`.
    path: the folder; an existing one is replaced whole, and only if it holds nothing but a
      saved model's files.
    extra_files: more files of the folder, ``{name: bytes}``.
    push_to_hub, repo_id, kwargs: as ``ModelHubMixin.save_pretrained``.

  Returns:
    The push's commit info when ``push_to_hub``, else ``None``.

  Raises:
    FileExistsError: ``path`` holds files that are not a saved model's (they are named).
    OSError: the new folder could not be written (e.g. no space left); ``path`` is unchanged.
  """
  mixin_kwargs = {k: kwargs.pop(k) for k in ("config", "model_card_kwargs") if k in kwargs}
  with replace_folder(path, replaceable) as staging:
    ModelHubMixin.save_pretrained(model, staging, **mixin_kwargs)
    for name, data in (extra_files or {}).items():
      atomic_write_bytes(staging / name, data)
  if push_to_hub:
    return model.push_to_hub(repo_id or Path(path).name, **mixin_kwargs, **kwargs)
  return None
