"""Every caller of the one loop resumes bit-exactly after ``kill -9`` (a child process each).

The VQ-VAE trainer across two processes is tested in test_distributed.py; here each of
training, fine-tuning, prior fitting and classifier training is killed between two
checkpoints, resumed, and compared bit for bit with a run that was never interrupted.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from _util import FAST_COMPILE, REPO, assert_trees_equal

CHILD = REPO / "tests" / "_resume_child.py"
TIMEOUT_S = 600


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["XLA_FLAGS"] = FAST_COMPILE  # one CPU device, not the suite's eight
  return env


def _run(args, **kwargs):
  return subprocess.Popen([sys.executable, str(CHILD), *map(str, args)], cwd=REPO, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(proc):
  out, _ = proc.communicate(timeout=TIMEOUT_S)
  assert proc.returncode == 0, out[-3000:]


def _load(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


@pytest.mark.heavy
@pytest.mark.parametrize("caller", ["train", "finetune", "prior", "classifier"])
def test_killed_run_resumes_bit_exactly(tmp_path, caller):
  from vqzoo.training import checkpoint
  straight = _run([caller, tmp_path / "a" / "work", tmp_path / "a.npz"])
  (tmp_path / "b").mkdir()
  killed = _run([caller, tmp_path / "b" / "work", tmp_path / "b.npz", "--pause", "30"])
  deadline = time.monotonic() + TIMEOUT_S
  line = ""
  while "checkpoint" not in line:  # the first checkpoint is written: kill it mid-run
    line = killed.stdout.readline()
    if not line and killed.poll() is not None or time.monotonic() > deadline:
      killed.kill()
      pytest.fail(f"no checkpoint before the run ended: {killed.stdout.read()[-3000:]}")
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  names = [p.name for p in (tmp_path / "b" / "work").iterdir()]
  ckpt = next(tmp_path.glob("b/work/*checkpoint.safetensors"))
  assert checkpoint.step_of(ckpt) == 5, names
  assert not (tmp_path / "b.npz").exists()  # it did stop mid-run
  _finish(_run([caller, tmp_path / "b" / "work", tmp_path / "b.npz", "--resume"]))
  _finish(straight)
  a = _load(tmp_path / "a.npz")
  assert a
  assert_trees_equal(a, _load(tmp_path / "b.npz"))
