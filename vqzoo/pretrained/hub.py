"""Talking to the Hugging Face Hub: bounded in time, verified, one-line errors.

Every Hub operation vqzoo makes (a download, a push) runs under a total deadline,
``VQZOO_HUB_DEADLINE`` seconds (default 25), and each metadata request under
``VQZOO_HUB_TIMEOUT`` seconds (default 10). A Hub that hangs, fails or drops the connection
gives a :class:`HubError` (or ``FileNotFoundError`` for a repo, revision or file that does not
exist) with one line saying what failed; the cause is chained. Every downloaded file is
checked against the object id the Hub announced for it (:func:`verify_hub_blob`); a file that
fails is evicted from the cache.

A Hub that cannot be reached at all (the name does not resolve, the connection is refused, no
route) is told apart before any request (:func:`unreachable`): a download then uses the cache
alone, and fails at once, in one line, if the file is not there; a push fails at once. A push
is never reported as failed while its commit may still land: one that runs past its deadline
is cancelled if nothing was sent yet; past that point a deadline or a dropped connection
raises :class:`HubOutcomeUnknown`, which names the command that shows whether it landed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import threading
import urllib.parse
import urllib.request
from typing import Any, Callable, TypeVar

from vqzoo.pretrained.integrity import IntegrityError, read_bounded, verify_hub_blob

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_DEADLINE_S = 25.0
# Branch and tag names (no "..", no leading or trailing "/"), PR refs, or full commit ids.
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REVISION = re.compile(r"[0-9a-f]{40}|refs/pr/[0-9]+|"
                       r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")


_log = logging.getLogger("vqzoo")
OFFLINE_HINT = "set HF_HUB_OFFLINE=1 to work from the local cache without trying the network"
_NO_ROUTE = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN,
             errno.EADDRNOTAVAIL}


class HubError(ConnectionError):
  """The Hub could not be reached in time, or answered with an error."""


class HubOutcomeUnknown(HubError):
  """A push whose commit may or may not land: after it began to send, it ran past its
  deadline, its connection failed, or a gateway timed out.

  Attributes:
    repo_id, branch: where the commit was going.
    head_before: the branch's head commit before the push (``None``: the branch did not exist).
    check_command: the shell command that shows the branch's head now.
  """

  def __init__(self, message: str, repo_id: str, branch: str, head_before: str | None):
    super().__init__(message)
    self.repo_id, self.branch, self.head_before = repo_id, branch, head_before
    self.check_command = check_command(repo_id, branch)


def check_command(repo_id: str, branch: str) -> str:
  """The shell command that prints the head commit of ``branch`` in ``repo_id``."""
  return f"hf models info {repo_id} --revision {branch} --expand sha"


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


def endpoint() -> str:
  """The Hub URL the client talks to (``HF_ENDPOINT``, read by ``huggingface_hub``)."""
  from huggingface_hub import constants
  return constants.ENDPOINT


def unreachable(url: str | None = None, timeout: float = 3.0) -> str | None:
  """Why the Hub (or the proxy in front of it) cannot be reached at all, or ``None``.

  One TCP connection, no request: a name that does not resolve, a refused connection or no
  route gives the reason at once. A Hub that is merely slow, or a connection that times out,
  gives ``None``: such a Hub gets the usual bounded deadlines, not a verdict.

  Args:
    url: the Hub URL (default: :func:`endpoint`).
    timeout: seconds the probe may take before it counts as inconclusive.
  """
  split = urllib.parse.urlsplit(url or endpoint())
  host, port = split.hostname or "", split.port or (443 if split.scheme == "https" else 80)
  proxies = urllib.request.getproxies()
  proxy = proxies.get(split.scheme) or proxies.get("all")
  if proxy and not urllib.request.proxy_bypass(host):
    proxied = urllib.parse.urlsplit(proxy if "//" in proxy else f"http://{proxy}")
    host, port = proxied.hostname or "", proxied.port or 8080
  verdict: dict[str, str] = {}

  def probe() -> None:
    try:
      socket.create_connection((host, port), timeout=timeout).close()
    except socket.gaierror as e:
      verdict["why"] = f"cannot resolve {host} ({e.strerror or e})"
    except ConnectionRefusedError:
      verdict["why"] = f"connection to {host}:{port} refused"
    except OSError as e:  # a timeout (errno None) and anything unexpected: inconclusive
      if e.errno in _NO_ROUTE:
        verdict["why"] = f"no route to {host}:{port} ({e.strerror})"

  worker = threading.Thread(target=probe, name="vqzoo-hub-probe", daemon=True)
  worker.start()
  worker.join(timeout + 1.0)  # a resolver that hangs: inconclusive too
  return verdict.get("why")


def _offline() -> bool:
  from huggingface_hub import constants
  return bool(constants.HF_HUB_OFFLINE)


def check_reachable(local_files_only: bool = False) -> str | None:
  """:func:`unreachable`, unless the network is not to be used (``local_files_only`` or
  ``HF_HUB_OFFLINE``): then ``None`` without a probe."""
  return None if local_files_only or _offline() else unreachable()


def with_deadline(fn: Callable[[], T], what: str) -> T:
  """Runs ``fn`` (a Hub download) and returns its result within :func:`deadline_s` seconds.

  Only for operations that change nothing on the Hub: one that runs past the deadline goes on
  in a daemon thread, whose result is dropped (a push goes through :func:`push` instead).

  Raises:
    HubError: it did not finish in time, or the Hub failed.
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


def _head(repo_id: str, branch: str, token: Any) -> str | None:
  """The commit ``branch`` of ``repo_id`` points to, ``None`` if the repo or branch is new."""
  from huggingface_hub import HfApi
  from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
  try:
    return HfApi(token=token).model_info(repo_id, revision=branch, timeout=timeout_s()).sha
  except (RepositoryNotFoundError, RevisionNotFoundError):
    return None


def _may_have_landed(error: BaseException) -> bool:
  """Whether a push that raised ``error`` may still have made its commit: the connection
  failed with no answer, or a gateway gave up (502, 504) while the Hub behind it went on."""
  from huggingface_hub.errors import HfHubHTTPError
  transport: tuple[type, ...] = (ConnectionError, TimeoutError)
  for client in ("httpx2", "httpx"):  # huggingface_hub's HTTP client (httpx2 in 2.x)
    try:
      transport += (__import__(client).TransportError,)
    except (ImportError, AttributeError):
      pass
  seen = error
  while seen is not None:
    if isinstance(seen, HfHubHTTPError):
      response = getattr(seen, "response", None)
      return getattr(response, "status_code", None) in (502, 504)
    if isinstance(seen, transport) and not isinstance(seen, HubError):
      return True
    seen = seen.__cause__ or seen.__context__
  return False


def _unknown(what: str, cause: str, repo_id: str, branch: str, head: str | None,
             hint: str = "") -> HubOutcomeUnknown:
  before = (f"it was {head} before this push" if head
            else f"the branch {branch} did not exist before this push")
  return HubOutcomeUnknown(
      f"{what}: {cause} while sending the commit, so its outcome is unknown: it may have "
      f"landed or may still land. `{check_command(repo_id, branch)}` shows the branch's head "
      f"({before}); push again if it did not change{hint}", repo_id, branch, head)


def push(fn: Callable[[], T], repo_id: str, *, branch: str | None = None,
         token: Any = None) -> T:
  """Runs ``fn`` (a push to ``repo_id``) within :func:`deadline_s` seconds, saying what happened.

  The branch's head is read first. A deadline reached before ``fn`` starts cancels it (nothing
  is sent). Once ``fn`` runs, a deadline, a dropped connection or a gateway timeout raises
  :class:`HubOutcomeUnknown`, never a failure, since the commit may still land (a push that
  ends after its deadline is logged on the ``vqzoo`` logger).

  Raises:
    HubError: the Hub cannot be reached, answered with an error, or the push was cancelled at
      its deadline before anything was sent.
    HubOutcomeUnknown: the commit may or may not have landed (the message says how to tell).
    FileNotFoundError: no such revision.
  """
  what = f"push to {repo_id}"
  branch = branch or "main"
  why = check_reachable()
  if why or _offline():
    raise HubError(f"{what}: cannot reach the Hub at {endpoint()} ("
                   f"{why or 'HF_HUB_OFFLINE is set'}); nothing was sent")
  lock = threading.Lock()
  phase = {"now": "reading the head", "head": None}  # -> "pushing" -> "abandoned"/"cancelled"
  result: dict[str, Any] = {}

  def run() -> None:
    try:
      head = _head(repo_id, branch, token)
      with lock:
        if phase["now"] == "cancelled":
          return
        phase.update(now="pushing", head=head)
      outcome = ("value", fn())
    except BaseException as e:  # handed to the caller below, or logged if it is gone
      outcome = ("error", e)
    with lock:
      result[outcome[0]] = outcome[1]
      late = phase["now"] == "abandoned"
    if late:
      said = (f"failed after all ({_one_line(outcome[1])})" if outcome[0] == "error"
              else f"landed after all ({outcome[1]})")
      _log.warning("%s: it ran past its deadline and %s", what, said)

  deadline = deadline_s()
  worker = threading.Thread(target=run, name=f"vqzoo-hub: {what}", daemon=True)
  worker.start()
  worker.join(deadline)
  with lock:
    now = phase["now"]
    if not result:  # still running: stop it before it sends anything, or leave it be
      phase["now"] = "abandoned" if now == "pushing" else "cancelled"
  if not result and now != "pushing":
    raise HubError(f"{what}: no answer from the Hub within {deadline:g} s while reading the "
                   f"branch {branch}; cancelled before anything was sent (set "
                   "VQZOO_HUB_DEADLINE to wait longer)")
  if not result:
    raise _unknown(what, f"no answer from the Hub within {deadline:g} s", repo_id, branch,
                   phase["head"], " (set VQZOO_HUB_DEADLINE to wait longer)")
  if "error" in result:
    error = result["error"]
    if now == "pushing" and _may_have_landed(error):
      raise _unknown(what, f"the connection failed ({_one_line(error)})", repo_id, branch,
                     phase["head"]) from error
    raise _translate(error, what) from error
  return result["value"]


def download(repo_id: str, filename: str, *, revision: str | None, cache_dir: str | None = None,
             force_download: bool = False, local_files_only: bool = False,
             token: str | bool | None = None, optional: bool = False,
             unreachable_because: str | None = None) -> tuple[str, bytes] | None:
  """``(cache path, verified bytes)`` of ``filename`` in ``repo_id@revision``.

  With ``optional``, a file the repo does not have (or, offline, that the cache does not hold)
  gives ``None``; other failures raise. A file the cache already knows to be absent at a commit
  ``revision`` gives ``None`` without asking the Hub (the client would retry an unreachable Hub
  for about 20 s before falling back to the cache). ``unreachable_because`` (what
  :func:`check_reachable` said) reads the cache alone, and names the reason if it fails.

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

  why = unreachable_because
  if why is not None:  # the cache alone can answer: no request, no retries
    local_files_only = True

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
    if why is not None:
      raise HubError(f"{what}: cannot reach the Hub at {endpoint()} ({why}) and the file is not "
                     f"in the local cache; check the network, or {OFFLINE_HINT}") from e
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
