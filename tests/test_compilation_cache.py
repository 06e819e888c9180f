"""The persistent compilation cache: on in vqzoo's entry points, never in the library."""

import os
import subprocess
import sys

import pytest

from _util import REPO

JIT = "import jax, jax.numpy as jnp; jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64)))"


def _run(code, tmp_path, **env):
  full = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  full.update(VQZOO_CACHE=str(tmp_path), JAX_PLATFORMS="cpu", XLA_FLAGS="",
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout


def _entries(tmp_path):
  folder = tmp_path / "jax"
  return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_the_library_leaves_the_cache_alone(tmp_path):
  out = _run(f"import vqzoo, vqzoo.training, vqzoo.cli; {JIT}; "
             "print(jax.config.jax_compilation_cache_dir)", tmp_path)
  assert out.strip() == "None" and not _entries(tmp_path)


def test_an_entry_point_caches_its_compilations_in_vqzoos_cache_dir(tmp_path):
  out = _run(f"from vqzoo import compilation_cache as c; print(c.enable()); {JIT}", tmp_path)
  assert out.strip() == str(tmp_path / "jax") and _entries(tmp_path)


@pytest.mark.parametrize("how", ["off", "jax-dir"])
def test_the_cache_can_be_turned_off_or_pointed_elsewhere(tmp_path, how):
  env = ({"VQZOO_COMPILATION_CACHE": "0"} if how == "off"
         else {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "theirs")})
  out = _run(f"from vqzoo import compilation_cache as c; print(c.enable()); {JIT}", tmp_path,
             **env).strip()
  assert not _entries(tmp_path)
  if how == "off":
    assert out == "None"
  else:
    assert out == str(tmp_path / "theirs") and any((tmp_path / "theirs").iterdir())
