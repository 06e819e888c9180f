"""A local, in-memory stand-in for the part of the Hugging Face Hub that vqzoo uses.

Written against what the real ``huggingface_hub`` client (2.4.0) sends, so tests can
drive ``push_to_hub`` / ``hf_hub_download`` / ``HfApi`` unmodified:

- ``POST /api/repos/create``: 200 ``{"url", "name", "id"}``; 409 if it exists (the
  client's ``exist_ok=True`` swallows the 409).
- ``POST /api/validate-yaml``: 200 ``{"errors": [], "warnings": []}``.
- ``POST /api/models/{repo}/preupload/{rev}``: every file ``uploadMode: "regular"`` (no
  LFS, no xet), ``shouldIgnore: false``, ``oid`` = git blob sha1 of the file at ``rev``
  or null (the client drops unchanged files from the commit).
- ``POST /api/models/{repo}/commit/{rev}``: ndjson lines ``header``, ``file`` (base64),
  ``deletedFile``, ``deletedFolder``; makes a new 40-hex commit keeping the full file
  set of every commit; 200 ``{"commitUrl", "commitOid", ...}``.
- ``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{rev}``: model info
  (``id``, ``sha``, ``siblings``, ``lastModified``, ...).
- ``HEAD`` and ``GET /{repo}/resolve/{rev}/{path}``: ``ETag`` (quoted sha256 of the
  bytes), ``X-Repo-Commit``, ``Content-Length``, ``Accept-Ranges``;
  ``Range: bytes=N-`` answers 206 with ``Content-Range`` (used to resume a download).

``rev`` is a branch name (``main``) or a full 40-hex commit id. Errors carry the
``X-Error-Code`` header the client maps to its exceptions (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``). Write endpoints require an
``Authorization: Bearer ...`` header (401 otherwise), as the real Hub does.

``hf_hub_download`` needs no ``Location`` / ``X-Linked-Etag`` / ``X-Linked-Size`` when
the file is served directly (no redirect): the ETag names the cache blob, ``X-Repo-Commit``
the snapshot folder, ``Content-Length`` the expected size; no ``X-Xet-Hash`` header means
a plain HTTP GET.

Failure injection: :meth:`HubServer.set_failure` (``"500"``: answer 500, ``"hang"``: hold
the request without answering until :meth:`stop` or ``hang_seconds``, ``"drop"``: send half
the body and close the connection), optionally only for requests matching a predicate;
:meth:`HubServer.alter_file` rewrites a stored file's bytes (the served ETag follows the new
bytes, like a compromised mirror would, or with ``keep_etag`` stays the old one: a lying one).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

_COMMIT_ID_LEN = 40
_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
  """The git object id of a blob, what the Hub calls a regular file's ``oid``."""
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_commit_id(rev: str) -> bool:
  return len(rev) == _COMMIT_ID_LEN and all(c in "0123456789abcdef" for c in rev)


@dataclass
class Commit:
  oid: str
  parent: str | None
  message: str
  files: dict[str, bytes]
  date: str


@dataclass
class Repo:
  repo_id: str
  repo_type: str
  private: bool
  commits: dict[str, Commit] = field(default_factory=dict)
  branches: dict[str, str] = field(default_factory=dict)

  def resolve(self, rev: str) -> Commit | None:
    if rev in self.branches:
      return self.commits[self.branches[rev]]
    if _is_commit_id(rev):
      return self.commits.get(rev)
    return None


class _HubError(Exception):

  def __init__(self, status: int, message: str, code: str | None = None,
               headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubServer:
  """An in-memory Hub on ``127.0.0.1`` (random free port), one thread per request."""

  def __init__(self, hang_seconds: float = 60.0):
    self.repos: dict[tuple[str, str], Repo] = {}
    self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
    self.hang_seconds = hang_seconds
    self.lying_etags: dict[bytes, str] = {}  # served bytes -> the ETag announced for them
    self._failure: str | None = None
    self._failure_match: Callable[[str, str], bool] | None = None
    self._release = threading.Event()
    self._lock = threading.RLock()
    self._counter = 0
    self._httpd: ThreadingHTTPServer | None = None
    self._thread: threading.Thread | None = None
    self.url: str | None = None

  # ------------------------------------------------------------------ lifecycle

  def start(self) -> str:
    """Starts serving; returns the base URL (``http://127.0.0.1:PORT``)."""
    if self._httpd is not None:
      raise RuntimeError("already started")
    hub = self

    class Handler(_Handler):
      server_hub = hub

    self._release.clear()
    self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
    self._thread = threading.Thread(target=self._httpd.serve_forever,
                                    kwargs={"poll_interval": 0.05}, name="hub-server",
                                    daemon=True)
    self._thread.start()
    return self.url

  def stop(self) -> None:
    """Stops serving (releasing hung requests); the stored repos are kept."""
    if self._httpd is None:
      return
    self._release.set()
    self._httpd.shutdown()
    self._httpd.server_close()
    self._thread.join(timeout=5)
    self._httpd = self._thread = None

  def __enter__(self) -> "HubServer":
    self.start()
    return self

  def __exit__(self, *exc) -> None:
    self.stop()

  # ------------------------------------------------------------------ failure injection

  def set_failure(self, mode: str | None, match: Callable[[str, str], bool] | None = None) -> None:
    """``mode``: ``None`` (healthy), ``"500"``, ``"hang"`` or ``"drop"``; ``match(method, path)``
    limits it."""
    if mode not in (None, "500", "hang", "drop"):
      raise ValueError(f"failure mode: expected None, '500', 'hang' or 'drop', got {mode!r}")
    with self._lock:
      self._failure, self._failure_match = mode, match
      if mode is None:
        self._release.set()  # let hung requests go
      else:
        self._release.clear()

  def alter_file(self, repo_id: str, path: str, data: bytes | Callable[[bytes], bytes],
                 revision: str = "main", repo_type: str = "model", keep_etag: bool = False
                 ) -> bytes:
    """Rewrites ``path`` in the commit ``revision`` points to, in place; returns the old bytes.

    With ``keep_etag`` the server goes on announcing the old bytes' ETag (a lying mirror).
    """
    with self._lock:
      commit = self._repo(repo_type, repo_id).resolve(revision)
      if commit is None or path not in commit.files:
        raise KeyError(f"{repo_id}@{revision}: no {path}")
      old = commit.files[path]
      commit.files[path] = data(old) if callable(data) else bytes(data)
      if keep_etag:
        self.lying_etags[commit.files[path]] = hashlib.sha256(old).hexdigest()
      return old

  # ------------------------------------------------------------------ inspection

  def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
    with self._lock:
      return self._repo(repo_type, repo_id).branches[branch]

  def files(self, repo_id: str, revision: str = "main",
            repo_type: str = "model") -> dict[str, bytes]:
    with self._lock:
      commit = self._repo(repo_type, repo_id).resolve(revision)
      if commit is None:
        raise KeyError(f"{repo_id}: no revision {revision!r}")
      return dict(commit.files)

  def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
    """Commit ids of the main branch, oldest first."""
    with self._lock:
      repo = self._repo(repo_type, repo_id)
      oid, out = repo.branches.get("main"), []
      while oid is not None:
        out.append(oid)
        oid = repo.commits[oid].parent
      return out[::-1]

  # ------------------------------------------------------------------ storage

  def _repo(self, repo_type: str, repo_id: str) -> Repo:
    repo = self.repos.get((repo_type, repo_id))
    if repo is None:
      raise _HubError(404, f"Repository Not Found for url: {repo_type} {repo_id}", "RepoNotFound")
    return repo

  def _new_commit(self, repo: Repo, parent: str | None, message: str,
                  files: dict[str, bytes]) -> Commit:
    self._counter += 1
    digest = hashlib.sha1()
    salt = [repo.repo_id, parent, message, self._counter, time.time_ns()]
    digest.update(json.dumps(salt).encode())
    for path in sorted(files):
      digest.update(path.encode() + b"\0" + git_blob_sha1(files[path]).encode())
    commit = Commit(digest.hexdigest(), parent, message, dict(files),
                    time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))
    repo.commits[commit.oid] = commit
    return commit

  def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
    with self._lock:
      if (repo_type, repo_id) in self.repos:
        raise _HubError(409, "You already created this model repo")
      repo = Repo(repo_id, repo_type, private)
      repo.branches["main"] = self._new_commit(repo, None, "initial commit",
                                               {".gitattributes": _GITATTRIBUTES}).oid
      self.repos[(repo_type, repo_id)] = repo
      return repo


class _Handler(BaseHTTPRequestHandler):
  server_hub: HubServer  # set by HubServer.start on a subclass
  protocol_version = "HTTP/1.0"  # one request per connection: nothing dangles after stop()

  def log_message(self, format, *args):  # noqa: A002 - silence the stderr access log
    pass

  # ------------------------------------------------------------------ plumbing

  @property
  def hub(self) -> HubServer:
    return self.server_hub

  def _body(self) -> bytes:
    length = int(self.headers.get("Content-Length") or 0)
    return self.rfile.read(length) if length else b""

  def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
            content_type: str = "application/json", head_only: bool = False) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.end_headers()
    if not head_only and body:
      if getattr(self, "_drop", False):
        self.wfile.write(body[:len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        return
      self.wfile.write(body)

  def _json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
    self._send(status, json.dumps(payload).encode(), headers)

  def _require_auth(self) -> None:
    if not (self.headers.get("Authorization") or "").startswith("Bearer "):
      raise _HubError(401, "Invalid username or password.")

  def _dispatch(self, method: str) -> None:
    split = urlsplit(self.path)
    path, query = unquote(split.path), parse_qs(split.query)
    hub = self.hub
    with hub._lock:
      hub.requests.append((method, self.path, {k.lower(): v for k, v in self.headers.items()}))
      failure, match = hub._failure, hub._failure_match
    self._drop = False
    if failure == "drop" and (match is None or match(method, path)):
      self._drop = True  # answered normally, but any body is cut off half-way
    elif failure is not None and (match is None or match(method, path)):
      if failure == "500":
        self._body()
        self._send(500, json.dumps({"error": "Internal Error"}).encode(),
                   head_only=(method == "HEAD"))
        return
      hub._release.wait(hub.hang_seconds)  # hold the request; answer nothing
      self.close_connection = True
      return
    try:
      self._route(method, split.path, path, query)
    except _HubError as e:
      headers = dict(e.headers)
      if e.code:
        headers["X-Error-Code"] = e.code
      headers["X-Error-Message"] = e.message
      self._send(e.status, json.dumps({"error": e.message}).encode(), headers,
                 head_only=(method == "HEAD"))
    except (BrokenPipeError, ConnectionResetError):
      pass

  def do_GET(self):  # noqa: N802
    self._dispatch("GET")

  def do_HEAD(self):  # noqa: N802
    self._dispatch("HEAD")

  def do_POST(self):  # noqa: N802
    self._dispatch("POST")

  # ------------------------------------------------------------------ routes

  def _route(self, method: str, raw_path: str, path: str, query: dict) -> None:
    # Split the raw path so that a quoted revision ("refs%2Fpr%2F1") stays one segment.
    parts = [unquote(p) for p in raw_path.strip("/").split("/")]
    if method == "POST" and parts == ["api", "repos", "create"]:
      return self._create_repo()
    if method == "POST" and parts == ["api", "validate-yaml"]:
      self._body()
      return self._json(200, {"errors": [], "warnings": []})
    if parts[:1] == ["api"] and len(parts) >= 4 and parts[1] in ("models", "datasets", "spaces"):
      repo_type = parts[1][:-1]
      repo_id = "/".join(parts[2:4])
      rest = parts[4:]
      if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
        return self._preupload(repo_type, repo_id, rest[1])
      if method == "POST" and len(rest) == 2 and rest[0] == "commit":
        return self._commit(repo_type, repo_id, rest[1], query)
      if method == "GET" and (rest == [] or (len(rest) == 2 and rest[0] == "revision")):
        return self._info(repo_type, repo_id, rest[1] if rest else "main")
    if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
      return self._resolve(method, "model", "/".join(parts[:2]), parts[3], "/".join(parts[4:]))
    if method in ("GET", "HEAD") and len(parts) >= 6 and parts[0] in ("datasets", "spaces") \
        and parts[3] == "resolve":
      return self._resolve(method, parts[0][:-1], "/".join(parts[1:3]), parts[4],
                           "/".join(parts[5:]))
    self._body()
    raise _HubError(404, f"no route for {method} {path}")

  def _create_repo(self) -> None:
    self._require_auth()
    payload = json.loads(self._body() or b"{}")
    name, org = payload.get("name"), payload.get("organization")
    if not name or not org:
      raise _HubError(400, "name and organization are required")
    repo_type = payload.get("type") or "model"
    repo_id = f"{org}/{name}"
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    url = f"{self.hub.url}/{prefix}{repo_id}"
    try:
      self.hub.create_repo(repo_id, repo_type, payload.get("visibility") == "private"
                           or bool(payload.get("private")))
    except _HubError as e:
      if e.status == 409:
        return self._json(409, {"error": e.message, "url": url}, {"X-Error-Message": e.message})
      raise
    self._json(200, {"url": url, "name": repo_id, "id": repo_id})

  def _commit_of(self, repo: Repo, rev: str) -> Commit:
    commit = repo.resolve(rev)
    if commit is None:
      raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
    return commit

  def _preupload(self, repo_type: str, repo_id: str, rev: str) -> None:
    self._require_auth()
    payload = json.loads(self._body() or b"{}")
    with self.hub._lock:
      repo = self.hub._repo(repo_type, repo_id)
      commit = self._commit_of(repo, rev)
      files = []
      for f in payload.get("files", []):
        old = commit.files.get(f["path"])
        files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                      "oid": None if old is None else git_blob_sha1(old)})
    self._json(200, {"files": files, "commitOid": commit.oid})

  def _commit(self, repo_type: str, repo_id: str, rev: str, query: dict) -> None:
    self._require_auth()
    body = self._body()
    if query.get("create_pr"):
      raise _HubError(400, "this test server does not do pull requests")
    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
    if not lines or lines[0].get("key") != "header":
      raise _HubError(400, "the first ndjson line must be the header")
    header = lines[0]["value"]
    with self.hub._lock:
      repo = self.hub._repo(repo_type, repo_id)
      if rev not in repo.branches:
        raise _HubError(404, f"Invalid rev id: {rev} (commits go to a branch)", "RevisionNotFound")
      head = repo.commits[repo.branches[rev]]
      parent = header.get("parentCommit")
      if parent is not None and parent != head.oid:
        raise _HubError(412, f"A commit has happened since. Please refresh and try again. "
                        f"(parent {parent} is not the head {head.oid})")
      files = dict(head.files)
      for line in lines[1:]:
        key, value = line.get("key"), line.get("value", {})
        if key == "file":
          if value.get("encoding") != "base64":
            raise _HubError(400, f"unsupported encoding {value.get('encoding')!r}")
          files[value["path"]] = base64.b64decode(value["content"])
        elif key == "deletedFile":
          if value["path"] not in files:
            raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
          del files[value["path"]]
        elif key == "deletedFolder":
          folder = value["path"].rstrip("/") + "/"
          files = {p: d for p, d in files.items() if not p.startswith(folder)}
        else:  # lfsFile and anything else: preupload never asks for LFS
          raise _HubError(400, f"unsupported commit operation {key!r}")
      message = header.get("summary") or ""
      if header.get("description"):
        message += "\n\n" + header["description"]
      commit = self.hub._new_commit(repo, head.oid, message, files)
      repo.branches[rev] = commit.oid
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    self._json(200, {"success": True, "commitOid": commit.oid,
                     "commitUrl": f"{self.hub.url}/{prefix}{repo_id}/commit/{commit.oid}",
                     "commitMessage": header.get("summary"), "hookOutput": "",
                     "pullRequestUrl": None})

  def _info(self, repo_type: str, repo_id: str, rev: str) -> None:
    with self.hub._lock:
      repo = self.hub._repo(repo_type, repo_id)
      commit = self._commit_of(repo, rev)
      first = repo.commits[self.hub.commits(repo_id, repo_type)[0]]
      info = {"_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id,
              "modelId": repo_id, "author": repo_id.split("/")[0], "sha": commit.oid,
              "lastModified": commit.date, "createdAt": first.date, "private": repo.private,
              "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
              "siblings": [{"rfilename": p} for p in sorted(commit.files)]}
    self._json(200, info)

  def _resolve(self, method: str, repo_type: str, repo_id: str, rev: str, filename: str) -> None:
    with self.hub._lock:
      repo = self.hub._repo(repo_type, repo_id)
      commit = self._commit_of(repo, rev)
      data = commit.files.get(filename)
    if data is None:
      raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
    etag = self.hub.lying_etags.get(data) or hashlib.sha256(data).hexdigest()
    headers = {"ETag": f'"{etag}"', "X-Repo-Commit": commit.oid,
               "Accept-Ranges": "bytes", "Content-Disposition": f'inline; filename="{filename}"'}
    status, body = 200, data
    range_header = self.headers.get("Range")
    if range_header and range_header.startswith("bytes="):
      start_s, _, end_s = range_header[len("bytes="):].partition("-")
      start = int(start_s) if start_s else 0
      end = int(end_s) if end_s else len(data) - 1
      if start >= len(data):
        raise _HubError(416, "Range Not Satisfiable",
                        headers={"Content-Range": f"bytes */{len(data)}"})
      body = data[start:end + 1]
      status = 206
      headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
    self._send(status, body, headers, content_type="application/octet-stream",
               head_only=(method == "HEAD"))


# ---------------------------------------------------------------------- pytest wiring


def point_client_at(monkeypatch, url: str | None, home) -> None:
  """Points the already-imported ``huggingface_hub`` at ``url`` with a fresh cache under ``home``.

  ``huggingface_hub.constants`` reads ``HF_ENDPOINT`` & co. once at import time, and
  ``hf_hub_url`` formats ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (not ``ENDPOINT``), so
  both the environment (for subprocesses) and the constants are patched.
  """
  from huggingface_hub import constants

  home = Path(home)
  cache = home / "hub"
  cache.mkdir(parents=True, exist_ok=True)
  env = {"HF_HOME": str(home), "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1",
         "HF_TOKEN": "dummy", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
         "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0", "NO_PROXY": "127.0.0.1,localhost",
         "no_proxy": "127.0.0.1,localhost"}
  if url is not None:
    env["HF_ENDPOINT"] = url
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
  if url is not None:
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        url + "/{repo_id}/resolve/{revision}/{filename}")
  monkeypatch.setattr(constants, "HF_HOME", str(home))
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
  monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
  monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
  monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
  monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)


@pytest.fixture
def hub(monkeypatch, tmp_path):
  """A running :class:`HubServer` the ``huggingface_hub`` client talks to, with a fresh cache."""
  server = HubServer()
  url = server.start()
  point_client_at(monkeypatch, url, tmp_path / "hf_home")

  try:
    yield server
  finally:
    finish_abandoned_operations(server)
    server.stop()


def finish_abandoned_operations(server: HubServer, timeout_s: float = 30.0) -> None:
  """Heals ``server`` and waits for Hub operations a test abandoned at its deadline.

  ``vqzoo`` leaves an operation that ran past its deadline to finish in a daemon thread. Were
  the server stopped under it, its retries would meet a refused connection, and the
  ``huggingface_hub`` client answers that by closing its shared HTTP client, breaking the
  next test's requests in flight. Healed, the server lets it end at once.
  """
  server.set_failure(None)
  server._release.set()
  end = time.monotonic() + timeout_s
  for thread in threading.enumerate():
    if thread.name.startswith("vqzoo-hub:"):
      thread.join(max(0.0, end - time.monotonic()))
