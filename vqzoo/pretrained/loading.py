"""Reading a model: one model spec -> its verified files, as an :class:`Artifact`.

A model spec is one of

* a **zoo name** (``vqzoo.list_models()``): the bundled files, checked against the registry's
  pins, else the pinned Hub revision, checked the same way; its config must also equal the
  registry's;
* ``hf-hub:owner/repo[@revision][#sha256=DIGEST]``: that Hub repo (never the working directory),
  every file checked against the id the Hub announced, and against ``DIGEST`` (the artifact's
  manifest digest, :func:`vqzoo.pretrained.integrity.manifest_digest`) when given;
* a **path** (a ``pathlib.Path``, or a string that starts with ``/``, ``.`` or ``~`` or
  contains a path separator) to a directory written by ``save_pretrained``. A bare name is
  never a path: ``./mnist-mlp`` is the folder, ``mnist-mlp`` the zoo model.

A file that fails its pin raises :class:`~vqzoo.IntegrityError` naming the file and both
digests, online or offline.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from typing import Any, Mapping

from vqzoo.configs import ModelConfig, PriorConfig
from vqzoo.folders import complete_folder
from vqzoo.pretrained import hub, registry, serialization
from vqzoo.pretrained.artifact import Artifact
from vqzoo.pretrained.integrity import (ARTIFACT_FILES, CARD_NAME, CONFIG_NAME,
                                        PRIOR_CONFIG_NAME, PRIOR_FILES, PRIOR_WEIGHTS_NAME,
                                        WEIGHTS_NAME, IntegrityError, manifest_digest,
                                        read_bounded, sha256_bytes)

HUB_PREFIX = "hf-hub:"
# owner/repo[@rev] as from_pretrained takes it; a leading "." or "~" is a path, never an owner.
_BARE_HUB_ID = r"[A-Za-z0-9_][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+(@.+)?"


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """Where a model spec points.

  Attributes:
    kind: ``"zoo"``, ``"hub"`` or ``"path"``.
    name: the zoo name, the Hub repo id or the directory.
    revision: Hub revision (``None``: the default branch, or the zoo pin's).
    sha256: the artifact's manifest digest it must have (``None``: no pin).
  """

  kind: str
  name: str
  revision: str | None = None
  sha256: str | None = None

  def __str__(self) -> str:
    if self.kind == "hub":
      return HUB_PREFIX + self.name + (f"@{self.revision}" if self.revision else "")
    return self.name


def parse_hub_id(spec: str) -> tuple[str, str | None]:
  """``"owner/repo@rev"`` -> ``("owner/repo", "rev")``; the revision is optional."""
  repo_id, _, revision = spec.partition("@")
  if (repo_id.count("/") != 1 or not all(repo_id.split("/"))
      or not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo_id) or ".." in repo_id):
    raise ValueError(f"expected a Hub repo id like 'owner/name[@revision]', got {spec!r}")
  return repo_id, hub.check_revision(revision or None)


def _looks_like_path(spec: str) -> bool:
  return spec.startswith(("/", ".", "~")) or "/" in spec or os.sep in spec


def resolve(spec: str | os.PathLike, revision: str | None = None) -> ModelSource:
  """Parses a model spec (see the module docstring) without touching files or the network.

  Raises:
    KeyError: a bare name that is no zoo model (the message lists close names).
    ValueError: a malformed Hub id, revision or pin.
  """
  hub.check_revision(revision)
  if isinstance(spec, os.PathLike):
    return ModelSource("path", os.fspath(spec))
  if not isinstance(spec, str) or not spec:
    raise ValueError(f"model: expected a zoo name, 'hf-hub:owner/repo[@rev]' or a path, "
                     f"got {spec!r}")
  if spec.startswith(HUB_PREFIX):
    body, _, pin = spec[len(HUB_PREFIX):].partition("#")
    digest = None
    if pin:
      match = re.fullmatch(r"sha256=([0-9a-f]{64})", pin)
      if not match:
        raise ValueError(f"pin: expected '#sha256=<64 hex digits>', got {'#' + pin!r}")
      digest = match.group(1)
    repo_id, rev = parse_hub_id(body)
    return ModelSource("hub", repo_id, revision or rev, digest)
  if spec in registry.REGISTRY:
    return ModelSource("zoo", spec, revision)
  if _looks_like_path(spec):
    return ModelSource("path", os.path.expanduser(spec))
  close = difflib.get_close_matches(spec, registry.REGISTRY, n=3, cutoff=0.3)
  hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
  raise KeyError(f"unknown zoo model {spec!r}.{hint} Known: {', '.join(registry.list_models())}"
                 f". A local directory is given as a path (./{spec}), a Hub repo as "
                 f"hf-hub:owner/name.")


def resolve_pretrained(spec: str | os.PathLike, revision: str | None = None) -> ModelSource:
  """:func:`resolve` with the ``from_pretrained`` (Hugging Face) reading of a bare name.

  A zoo name is the zoo model (a folder of that name is given as ``./name``); an existing
  directory is a path (``"saved-model"``, ``"./saved-model"``, ``"owner/repo"`` when that
  folder exists); any other ``owner/repo[@rev]`` is that Hub repo.

  Raises:
    KeyError, ValueError: as :func:`resolve`.
  """
  if (isinstance(spec, str) and spec and not spec.startswith(HUB_PREFIX)
      and spec not in registry.REGISTRY):
    if os.path.isdir(os.path.expanduser(spec)):
      hub.check_revision(revision)
      return ModelSource("path", os.path.expanduser(spec))
    if re.fullmatch(_BARE_HUB_ID, spec):
      return resolve(HUB_PREFIX + spec, revision)
  return resolve(spec, revision)


def _parse_json_config(data: bytes, where: str, cls: type, what: str) -> Any:
  try:
    raw = json.loads(data.decode("utf-8"))
    if not isinstance(raw, dict):
      raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    return cls.from_dict(raw)
  except (ValueError, TypeError, AttributeError, OverflowError, RecursionError,
          UnicodeDecodeError) as e:
    raise ValueError(f"{where}: not a valid vqzoo {what}: {type(e).__name__}: {e}") from None


def parse_config(data: bytes, where: str) -> ModelConfig:
  """``config.json`` bytes -> a validated :class:`ModelConfig`.

  Raises:
    ValueError: not JSON, not an object, or a field of the wrong type or range (named).
  """
  return _parse_json_config(data, where, ModelConfig, "config")


def parse_prior_config(data: bytes, where: str) -> PriorConfig:
  """``prior.json`` bytes -> a validated :class:`~vqzoo.configs.PriorConfig` (errors as
  :func:`parse_config`)."""
  return _parse_json_config(data, where, PriorConfig, "prior config")


def _read_dir(folder: str) -> tuple[dict[str, bytes], str | None]:
  """The artifact files of a model directory, and its card (optional)."""
  folder = os.fspath(complete_folder(folder))  # or the copy an interrupted replacement left
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: no such model directory (a zoo name is given bare, a Hub "
                            "repo as hf-hub:owner/name)")
  files = {}
  for name in ARTIFACT_FILES:
    path = os.path.join(folder, name)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{folder}: no {name} (not a directory written by save_pretrained)")
    files[name] = read_bounded(path, name)
  present = [n for n in PRIOR_FILES if os.path.exists(os.path.join(folder, n))]
  if present and len(present) != len(PRIOR_FILES):
    raise FileNotFoundError(f"{folder}: has {present[0]} but not the other prior file "
                            f"(a prior is {' + '.join(PRIOR_FILES)})")
  for name in present:
    files[name] = read_bounded(os.path.join(folder, name), name)
  card_path = os.path.join(folder, CARD_NAME)
  card = read_bounded(card_path, CARD_NAME).decode("utf-8", "replace") if os.path.isfile(
      card_path) else None
  return files, card


@dataclasses.dataclass
class _HubFiles:
  files: dict[str, bytes]
  paths: dict[str, str]
  card: str | None
  record: dict[str, Any]

  def checked(self, check) -> None:
    """Runs ``check()``; on an :class:`IntegrityError` evicts the files from the cache."""
    try:
      check()
    except IntegrityError:
      for path in self.paths.values():
        hub.evict(path)
      raise


def _read_hub(repo_id: str, revision: str | None, **hub_kwargs: Any) -> _HubFiles:
  # One probe for the whole artifact: an unreachable Hub leaves the cache alone to answer.
  offline = hub_kwargs.get("local_files_only", False)
  hub_kwargs["unreachable_because"] = hub.check_reachable(offline)
  files, paths = {}, {}
  for name in ARTIFACT_FILES:
    paths[name], files[name] = hub.download(repo_id, name, revision=revision, **hub_kwargs)
  # The optional files come from the weights' commit: one consistent snapshot, and a file the
  # cache knows to be absent there is not asked for again.
  commit = hub.commit_of(paths[WEIGHTS_NAME])
  for name in PRIOR_FILES:
    got = hub.download(repo_id, name, revision=commit or revision, optional=True, **hub_kwargs)
    if got is not None:
      paths[name], files[name] = got
  card = hub.download(repo_id, CARD_NAME, revision=commit or revision, optional=True,
                      **hub_kwargs)
  record = {"repo_id": repo_id, "revision": revision or "main", "commit": commit}
  return _HubFiles(files, paths, None if card is None else card[1].decode("utf-8", "replace"),
                   record)


def verify_files(files: Mapping[str, bytes], expected: Mapping[str, str], where: str,
                 exact: bool = False) -> None:
  """Raises :class:`IntegrityError` naming the first file whose sha256 is not ``expected``'s.

  With ``exact``, a file that ``expected`` does not pin is refused too.
  """
  unpinned = sorted(set(files) - set(expected)) if exact else []
  if unpinned:
    raise IntegrityError(f"refusing {where}: {', '.join(unpinned)} is not covered by its pin")
  for name, digest in expected.items():
    actual = sha256_bytes(files[name]) if name in files else "missing"
    if actual != digest:
      raise IntegrityError(f"refusing {where}/{name}: sha256 is {actual}, expected {digest} "
                           "(the file is corrupt or was altered)")


def _verify_manifest(files: Mapping[str, bytes], digest: str | None, where: str) -> str:
  actual = manifest_digest({n: sha256_bytes(b) for n, b in files.items()})
  if digest is not None and actual != digest:
    raise IntegrityError(f"refusing {where}: its manifest sha256 is {actual}, expected {digest} "
                         f"(one of {', '.join(sorted(files))} differs from the pinned ones)")
  return actual


def _artifact(files: Mapping[str, bytes], card: str | None, source: dict[str, Any], where: str,
              expected_config: ModelConfig | None = None) -> Artifact:
  """Parses verified files into an :class:`Artifact` (shapes are checked by the model)."""
  config = parse_config(files[CONFIG_NAME], f"{where}/{CONFIG_NAME}")
  if expected_config is not None and config != expected_config:
    raise IntegrityError(f"refusing {where}/{CONFIG_NAME}: it differs from the registry's config "
                         f"for {source.get('zoo')} ({config.to_dict()} != "
                         f"{expected_config.to_dict()})")
  params, state = serialization.parse_weights(files[WEIGHTS_NAME], f"{where}/{WEIGHTS_NAME}")
  prior = prior_params = None
  if PRIOR_CONFIG_NAME in files or PRIOR_WEIGHTS_NAME in files:
    if not all(n in files for n in PRIOR_FILES):
      raise FileNotFoundError(f"{where}: a prior needs both {' and '.join(PRIOR_FILES)}")
    prior = parse_prior_config(files[PRIOR_CONFIG_NAME], f"{where}/{PRIOR_CONFIG_NAME}")
    prior_params, _ = serialization.parse_weights(files[PRIOR_WEIGHTS_NAME],
                                                  f"{where}/{PRIOR_WEIGHTS_NAME}")
  digests = {"sha256": sha256_bytes(files[WEIGHTS_NAME]),
             "manifest_sha256": _verify_manifest(files, None, where),
             "codec_sha256": manifest_digest({n: sha256_bytes(files[n]) for n in ARTIFACT_FILES})}
  return Artifact(config=config, params=params, state=state, weights=files[WEIGHTS_NAME],
                  prior=prior, prior_params=prior_params, card=card, source=source,
                  digests=digests)


def _read_zoo(source: ModelSource, **hub_kwargs: Any) -> Artifact:
  entry = registry.get_entry(source.name)
  if entry.weights.sha256 is None:
    raise FileNotFoundError(f"zoo model {source.name!r} has no trained weights yet; train it "
                            f"with `python scripts/train.py --variant {source.name} --bundle`")
  pins = entry.weights.files
  record = {"zoo": entry.name, "repo_id": entry.weights.repo_id,
            "revision": source.revision or entry.weights.revision}
  bundled_error: IntegrityError | None = None
  bundled = complete_folder(entry.bundled_dir)
  if all((bundled / name).exists() for name in ARTIFACT_FILES):
    files, card = _read_dir(str(bundled))
    try:
      verify_files(files, pins, f"bundled {entry.name}", exact=True)
      return _artifact(files, card, {**record, "bundled": True}, f"bundled {entry.name}",
                       entry.config)
    except IntegrityError as e:
      bundled_error = e  # an altered bundled file: fetch the pinned one from the Hub instead
  try:
    fetched = _read_hub(entry.weights.repo_id, record["revision"], **hub_kwargs)
  except (OSError, ValueError) as e:
    if bundled_error is not None:  # the Hub could not replace it: the integrity error stands
      raise IntegrityError(f"{bundled_error} (and the Hub copy could not be fetched: "
                           f"{type(e).__name__}: {e})") from e
    raise
  where = f"hf-hub:{entry.weights.repo_id}@{record['revision']}"
  fetched.checked(lambda: verify_files(fetched.files, pins, where, exact=True))
  return _artifact(fetched.files, fetched.card, {**record, **fetched.record}, where, entry.config)


def read_artifact(name_or_path: str | os.PathLike | ModelSource, *, revision: str | None = None,
                  cache_dir: str | None = None, local_files_only: bool = False,
                  token: str | bool | None = None, force_download: bool = False,
                  expected_sha256: str | None = None) -> Artifact:
  """Reads and verifies a model's files; :func:`vqzoo.load` builds the model from them.

  Args:
    name_or_path: a zoo name, ``"hf-hub:owner/repo[@rev][#sha256=DIGEST]"`` or a path (see
      the module docstring), or a :class:`ModelSource` already resolved.
    revision: Hub revision (branch, tag or commit); overrides ``@rev``.
    cache_dir: Hugging Face cache directory.
    local_files_only: never touch the network (``HF_HUB_OFFLINE=1`` does the same).
    token: Hub token.
    force_download: download again even if cached.
    expected_sha256: sha256 the weights file (``model.safetensors``) must have.

  Returns:
    The verified :class:`~vqzoo.pretrained.artifact.Artifact`.

  Raises:
    IntegrityError: a file differs from its pin, or a zoo model's config from the registry's.
    KeyError: an unknown zoo name. FileNotFoundError: no such directory, repo, revision or
    file. vqzoo.pretrained.hub.HubError: the Hub failed or did not answer in time.
    ValueError: a malformed spec, config or weights file.
  """
  source = (name_or_path if isinstance(name_or_path, ModelSource)
            else resolve(name_or_path, revision))
  hub_kwargs = dict(cache_dir=cache_dir, local_files_only=local_files_only, token=token,
                    force_download=force_download)
  weights_pin = {} if expected_sha256 is None else {WEIGHTS_NAME: expected_sha256}
  if source.kind == "zoo":
    artifact = _read_zoo(source, **hub_kwargs)
    verify_files({WEIGHTS_NAME: artifact.weights}, weights_pin, str(source))
    return artifact
  if source.kind == "hub":
    fetched = _read_hub(source.name, source.revision, **hub_kwargs)
    where = str(source)
    fetched.checked(lambda: (verify_files(fetched.files, weights_pin, where),
                             _verify_manifest(fetched.files, source.sha256, where)))
    return _artifact(fetched.files, fetched.card, fetched.record, where)
  files, card = _read_dir(source.name)
  verify_files(files, weights_pin, source.name)
  return _artifact(files, card, {"path": os.path.abspath(source.name)}, source.name)


__all__ = ["read_artifact", "resolve", "resolve_pretrained", "parse_hub_id", "parse_config",
           "parse_prior_config", "verify_files", "Artifact", "ModelSource", "HUB_PREFIX"]
