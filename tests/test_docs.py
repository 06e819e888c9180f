"""The API reference (`make docs`) builds from the docstrings without a warning."""

import subprocess
import sys

from _util import REPO  # noqa: E402
MODULES = ["vqzoo", "vqzoo.nn", "vqzoo.pretrained", "vqzoo.training", "vqzoo.cpu_tuning",
           "vqzoo.configs", "vqzoo.images", "vqzoo.io", "vqzoo.folders", "vqzoo.grid",
           "vqzoo.cli"]


def test_api_reference_builds_without_warnings(tmp_path):
  makefile = (REPO / "Makefile").read_text()
  assert " ".join(MODULES) in makefile  # the test builds what `make docs` builds
  result = subprocess.run([sys.executable, "-W", "error", "-m", "pdoc", *MODULES, "-o",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and "Warn" not in result.stdout + result.stderr, result.stderr
  pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
  assert {"vqzoo.html", "vqzoo/nn.html", "vqzoo/pretrained.html", "vqzoo/training.html"} <= pages
