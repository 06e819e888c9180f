"""Every code block of README.md runs as written, so that the README cannot drift.

Blocks run in order, in one temporary directory (with ``scripts/`` and ``examples/`` linked in,
as in the repository root): ``bash`` blocks with ``bash -euo pipefail``, ``python`` blocks as
scripts, both in this interpreter's environment (its ``bin/`` first on ``PATH``, as after
``source .venv-test/bin/activate``) and with ``TFDS_DATA_DIR`` set as the README says. A block
right after ``<!-- not run: REASON -->`` is skipped: the set-up itself, or one that needs the
Hub, several processes or a cluster.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _util import REPO, user_env  # noqa: E402

BLOCK = re.compile(r"(?:<!--\s*not run:\s*(?P<why>.*?)\s*-->\s*\n)?```(?P<lang>bash|python)\n"
                   r"(?P<code>.*?)```", re.S)
SKIP_REASONS = ("the set-up itself", "needs a Hub", "multi-process", "needs several hosts",
                "needs a SLURM cluster")


def readme_blocks(text: str) -> list[tuple[str, str, str | None]]:
  """``(language, code, reason not run or None)`` of each fenced bash/python block, in order."""
  return [(m["lang"], m["code"], m["why"]) for m in BLOCK.finditer(text)]


def test_every_block_is_found_and_only_allowed_ones_are_skipped():
  text = (REPO / "README.md").read_text()
  blocks = readme_blocks(text)
  assert len(blocks) == text.count("```bash") + text.count("```python")
  for lang, code, why in blocks:
    assert why is None or why.startswith(SKIP_REASONS), f"not a reason to skip: {why!r}"
  assert sum(why is None for *_, why in blocks) >= 7  # the README's guide runs
  assert any("push_to_hub" in code for _, code, why in blocks if why)  # Hub lines are apart
  assert not any("push_to_hub" in code or "vqzoo push" in code
                 for _, code, why in blocks if why is None)


def test_readme_setup_names_the_environment_and_the_data():
  text = (REPO / "README.md").read_text()
  assert "source .venv-test/bin/activate" in text
  assert "export TFDS_DATA_DIR=" in text


@pytest.mark.heavy
def test_readme_code_blocks_run_as_written(tmp_path, tfds_dir):
  for name in ("scripts", "examples"):
    (tmp_path / name).symlink_to(REPO / name)
  env = user_env(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                 TFDS_DATA_DIR=tfds_dir,
                 PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                          os.environ.get("PYTHONPATH")])))
  env.pop("JAX_NUM_CPU_DEVICES", None)
  timings = []
  for i, (lang, code, why) in enumerate(readme_blocks((REPO / "README.md").read_text())):
    if why is not None:
      continue
    script = tmp_path / f"block{i:02d}.{'sh' if lang == 'bash' else 'py'}"
    script.write_text(code)
    command = (["bash", "-euo", "pipefail", str(script)] if lang == "bash"
               else [sys.executable, str(script)])
    start = time.perf_counter()
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=240)
    timings.append((i, round(time.perf_counter() - start, 1)))
    assert result.returncode == 0, (f"README block {i} ({lang}) failed:\n{code}\n"
                                    f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
  assert (tmp_path / "my-model" / "model.safetensors").is_file()
  assert (tmp_path / "mlp-with-prior" / "prior.json").is_file()
  assert (tmp_path / "runs" / "ft" / "README.md").is_file()
  assert (tmp_path / "runs" / "my-mlp" / "config.json").is_file()
  print("seconds per block:", timings)
