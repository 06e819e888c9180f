"""Talking to the Hugging Face Hub: bounded in time, verified, one-line errors.

Every Hub operation vqzoo makes (a download, a push) runs under a total deadline,
``VQZOO_HUB_DEADLINE`` seconds (default 25), and each metadata request under
``VQZOO_HUB_TIMEOUT`` seconds (default 10). A Hub that hangs, fails or drops the connection
gives a :class:`HubError` (or ``FileNotFoundError`` for a repo, revision or file that does not
exist) with one line saying what failed; the cause is chained. Every downloaded file is
checked against the object id the Hub announced for it (:func:`verify_hub_blob`); a file that
fails is evicted from the cache.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any, Callable, TypeVar

from vqzoo.pretrained.integrity import IntegrityError, read_bounded, verify_hub_blob

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_DEADLINE_S = 25.0
# Branch and tag names (no "..", no leading or trailing "/"), PR refs, or full commit ids.
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REVISION = re.compile(r"[0-9a-f]{40}|refs/pr/[0-9]+|"
                       r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


class HubError(ConnectionError):
  """The Hub could not be reached in time, or answered with an error."""


def _seconds(variable: str, default: float) -> float:
  raw = os.environ.get(variable)
  if raw is None or raw == "":
    return default
  try:
    value = float(raw)
  except ValueError:
    value = -1.0
  if not 0 < value < float("inf"):
    raise ValueError(f"{variable}: expected a number of seconds > 0, got {raw!r}")
  return value


def timeout_s() -> float:
  """Seconds each Hub metadata request may take (``VQZOO_HUB_TIMEOUT``)."""
  return _seconds("VQZOO_HUB_TIMEOUT", DEFAULT_TIMEOUT_S)


def deadline_s() -> float:
  """Seconds a whole Hub operation may take (``VQZOO_HUB_DEADLINE``)."""
  return _seconds("VQZOO_HUB_DEADLINE", DEFAULT_DEADLINE_S)


def check_revision(revision: str | None) -> str | None:
  """Returns ``revision`` if it is a branch or tag name or a 40-hex commit id.

  Raises:
    ValueError: anything else (e.g. a path such as ``../x``).
  """
  if revision is None:
    return None
  if (not isinstance(revision, str) or not _REVISION.fullmatch(revision)
      or ".." in revision or revision.endswith((".", ".lock"))):
    raise ValueError(f"revision: expected a branch or tag name or a 40-hex commit id, got "
                     f"{revision!r}")
  return revision


def _one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def _translate(error: BaseException, what: str) -> BaseException:
  from huggingface_hub.errors import (EntryNotFoundError, LocalEntryNotFoundError,
                                      RepositoryNotFoundError, RevisionNotFoundError)
  if isinstance(error, (IntegrityError, HubError, ValueError)) and not isinstance(
      error, (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)):
    return error
  if isinstance(error, LocalEntryNotFoundError):
    return HubError(f"{what}: not in the local cache and the Hub could not be reached "
                    f"({_one_line(error.__cause__ or error)})")
  if isinstance(error, (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError)):
    kind = {RepositoryNotFoundError: "no such repo", RevisionNotFoundError: "no such revision",
            EntryNotFoundError: "no such file"}
    label = next(v for k, v in kind.items() if isinstance(error, k))
    return FileNotFoundError(f"{what}: {label} on the Hub")
  return HubError(f"{what}: the Hub failed ({_one_line(error)})")


def with_deadline(fn: Callable[[], T], what: str) -> T:
  """Runs ``fn`` (a Hub operation) and returns its result within :func:`deadline_s` seconds.

  Raises:
    HubError: it did not finish in time (it goes on in a daemon thread, whose result is
      dropped), or the Hub failed.
    FileNotFoundError: the repo, revision or file does not exist.
  """
  result: dict[str, Any] = {}

  def run():
    try:
      result["value"] = fn()
    except BaseException as e:  # handed to the caller below
      result["error"] = e

  deadline = deadline_s()
  worker = threading.Thread(target=run, name=f"vqzoo-hub: {what}", daemon=True)
  worker.start()
  worker.join(deadline)
  if worker.is_alive():
    raise HubError(f"{what}: no answer from the Hub within {deadline:g} s (set "
                   "VQZOO_HUB_DEADLINE to wait longer, or HF_HUB_OFFLINE=1 to use the cache)")
  if "error" in result:
    raise _translate(result["error"], what) from result["error"]
  return result["value"]


def download(repo_id: str, filename: str, *, revision: str | None, cache_dir: str | None = None,
             force_download: bool = False, local_files_only: bool = False,
             token: str | bool | None = None, optional: bool = False
             ) -> tuple[str, bytes] | None:
  """``(cache path, verified bytes)`` of ``filename`` in ``repo_id@revision``.

  With ``optional``, a file the repo does not have (or, offline, that the cache does not hold)
  gives ``None``; other failures raise. A file the cache already knows to be absent at a commit
  ``revision`` gives ``None`` without asking the Hub (the client would retry an unreachable Hub
  for about 20 s before falling back to the cache).

  Raises:
    IntegrityError: the bytes do not match the id the Hub announced (the entry is evicted).
    HubError, FileNotFoundError: see :func:`with_deadline`.
  """
  # try_to_load_from_cache documents _CACHED_NO_EXIST as its "known absent" answer.
  from huggingface_hub import _CACHED_NO_EXIST, hf_hub_download, try_to_load_from_cache
  check_revision(revision)
  what = f"{repo_id}@{revision or 'main'}/{filename}"
  if (optional and not force_download and revision is not None and _COMMIT.fullmatch(revision)
      and try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir,
                                 revision=revision) is _CACHED_NO_EXIST):
    return None

  def fetch() -> str:
    return hf_hub_download(repo_id=repo_id, filename=filename, revision=revision,
                           cache_dir=cache_dir, force_download=force_download,
                           local_files_only=local_files_only, token=token,
                           library_name="vqzoo", etag_timeout=timeout_s())
  try:
    path = with_deadline(fetch, what)
  except FileNotFoundError:
    if optional:
      return None
    raise
  except HubError as e:
    from huggingface_hub.errors import LocalEntryNotFoundError
    # Optional and neither cached nor reachable: the first (online) load of a repo fetches
    # every file it has, so a file missing from the cache is one the repo did not have.
    if optional and (local_files_only or isinstance(e.__cause__, LocalEntryNotFoundError)):
      return None
    raise
  data = read_bounded(path, filename)
  try:
    verify_hub_blob(data, path, what)
  except IntegrityError:
    evict(path)
    raise
  return path, data


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
