"""Downloading a model's files from the Hugging Face Hub (or its local cache)."""

from __future__ import annotations

import os
import re
from typing import Any

from huggingface_hub import hf_hub_download


def download(repo_id: str, filename: str, *, revision: str | None, cache_dir: str | None,
             force_download: bool = False, local_files_only: bool = False,
             token: str | bool | None = None, optional: bool = False) -> str | None:
  """Path of ``filename`` of ``repo_id@revision`` in the Hub cache, downloading it if needed.

  With ``optional``, a file that cannot be had gives ``None`` instead of an error.
  """
  try:
    return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision,
                           cache_dir=cache_dir, force_download=force_download,
                           local_files_only=local_files_only, token=token, library_name="vqzoo")
  except Exception:
    if optional:
      return None
    raise


def evict(path: str) -> None:
  """Removes a Hub-cache snapshot entry and the blob it points to."""
  target = os.path.realpath(path)
  for p in {path, target}:
    try:
      os.unlink(p)
    except OSError:
      pass


def commit_of(path: str) -> str | None:
  """The commit id of a Hub-cache snapshot path, if it is one."""
  match = re.search(r"[/\\]snapshots[/\\]([0-9a-f]{40})[/\\]", path)
  return match.group(1) if match else None


def source_record(repo_id: str, revision: str | None, path: str) -> dict[str, Any]:
  """Where a model came from: repo, requested revision and the resolved commit."""
  return {"repo_id": repo_id, "revision": revision or "main", "commit": commit_of(path)}
