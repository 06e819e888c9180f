"""Folders replaced whole or not at all: the new one is written beside the old, then renamed in.

Replacing ``NAME`` (:func:`replace_folder`):

1. the leftovers of an interrupted replacement are settled (:func:`recover`);
2. the new content is written into ``.NAME.new-XXXX``, every file and the folder are fsynced,
   and it is renamed ``.NAME.ready-XXXX`` (so a ``.ready`` folder is always complete);
3. ``NAME`` is renamed ``.NAME.old-XXXX``, ``.NAME.ready-XXXX`` is renamed ``NAME`` and the
   parent folder is fsynced;
4. ``.NAME.old-XXXX`` is deleted.

A kill at any instant, or a full disk (which can only fail step 2), leaves ``NAME`` holding the
complete old or the complete new content, except between the two renames of step 3, when
``NAME`` is missing and both complete copies sit beside it: :func:`complete_folder` (used by
readers) then points at the new one, and the next replacement restores it before it starts.
No ``.NAME.*`` sibling remains after a replacement that succeeds. One writer at a time: a
second one replacing the same folder concurrently may fail, but never leaves a mix.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

STAGES = ("new", "ready", "old")


def _siblings(path: Path) -> dict[str, list[Path]]:
  """The ``.NAME.<stage>-XXXX`` folders beside ``path``, newest first, by stage."""
  found: dict[str, list[Path]] = {stage: [] for stage in STAGES}
  pattern = re.compile(re.escape(f".{path.name}.") + f"({'|'.join(STAGES)})-[A-Za-z0-9_]+")
  try:
    entries = list(os.scandir(path.parent))
  except OSError:
    return found
  for entry in entries:
    match = pattern.fullmatch(entry.name)
    if match and entry.is_dir(follow_symlinks=False):
      found[match.group(1)].append(Path(entry.path))
  for paths in found.values():
    paths.sort(key=lambda p: p.stat().st_mtime_ns if p.exists() else 0, reverse=True)
  return found


def _real(path: str | os.PathLike) -> Path:
  return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def complete_folder(path: str | os.PathLike) -> Path:
  """``path`` if it is a folder, else the complete copy an interrupted replacement left beside
  it (the new one if there is one), else ``path``. Reads only; changes nothing."""
  if os.path.isdir(path):
    return Path(path)
  siblings = _siblings(_real(path))
  for stage in ("ready", "old"):
    if siblings[stage]:
      return siblings[stage][0]
  return Path(path)


def recover(path: str | os.PathLike) -> None:
  """Settles an interrupted replacement of ``path``: restores ``path`` from its complete copy
  if it is missing, then deletes every ``.NAME.*`` leftover."""
  path = _real(path)
  siblings = _siblings(path)
  if not path.exists():
    for stage in ("ready", "old"):
      if siblings[stage]:
        os.rename(siblings[stage].pop(0), path)
        _fsync_dir(path.parent)
        break
  for paths in siblings.values():
    for leftover in paths:
      shutil.rmtree(leftover, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _fsync_tree(root: Path) -> None:
  for folder, _, files in os.walk(root):
    for name in files:
      fd = os.open(os.path.join(folder, name), os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
    _fsync_dir(Path(folder))


def check_replaceable(path: str | os.PathLike,
                      replaceable: Callable[[str], bool] | None = None) -> None:
  """Raises what :func:`replace_folder` would for ``path``, before any work is done."""
  path = _real(path)
  if path.exists() and not path.is_dir():
    raise NotADirectoryError(f"{path}: exists and is not a folder; expected a folder to "
                             "replace, or a new name")
  cwd = _real(os.getcwd())
  if path == cwd or path in cwd.parents:
    raise ValueError(f"{path}: is the working directory or one above it, which is never "
                     f"replaced; expected a folder of its own, e.g. {path / 'model'}")
  if replaceable is not None and path.is_dir():
    foreign = sorted(name for name in os.listdir(path) if not replaceable(name))
    if foreign:
      shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                        else "")
      raise FileExistsError(f"{path}: holds {shown}, which saving would delete (the folder is "
                            "replaced whole); expected a new or empty folder, or one written "
                            "by save_pretrained")


@contextlib.contextmanager
def replace_folder(path: str | os.PathLike,
                   replaceable: Callable[[str], bool] | None = None) -> Iterator[Path]:
  """Yields an empty folder to fill; when the block ends without error it replaces ``path``.

  See the module docstring for the guarantee. When the block raises (a full disk, say),
  ``path`` is left as it was and the partial folder is deleted.

  Args:
    path: the folder to create or replace (its parent is created if missing).
    replaceable: given, ``path`` is replaced only if each entry in it passes (e.g. the file
      names of a saved model); otherwise :class:`FileExistsError` names the others.

  Raises:
    FileExistsError: ``path`` holds entries that ``replaceable`` refuses.
    NotADirectoryError: ``path`` is a file.
    ValueError: ``path`` is the working directory or one of its parents.
  """
  path = _real(path)
  recover(path)
  check_replaceable(path, replaceable)
  path.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.new-"))
  tag = staging.name.rsplit("-", 1)[1]
  try:
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    yield staging
    _fsync_tree(staging)
    ready = staging.with_name(f".{path.name}.ready-{tag}")
    os.rename(staging, ready)
    staging = ready
    _fsync_dir(path.parent)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  old = path.with_name(f".{path.name}.old-{tag}")
  try:
    if path.exists():
      os.rename(path, old)  # fails for a mount point, say: nothing has changed yet
  except BaseException:
    shutil.rmtree(ready, ignore_errors=True)
    raise
  try:
    os.rename(ready, path)
  except BaseException:
    if old.exists() and not path.exists():
      os.rename(old, path)
    raise
  _fsync_dir(path.parent)
  shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask
