"""The API reference (`make docs`) builds from the docstrings without a warning; its front page
is the README's guide with a list of the modules, and it holds no source listings."""

import re
import subprocess
import sys

from _util import REPO  # noqa: E402
MODULES = ["vqzoo", "vqzoo.nn", "vqzoo.pretrained", "vqzoo.training", "vqzoo.evaluation",
           "vqzoo.cpu_tuning", "vqzoo.configs", "vqzoo.images", "vqzoo.io", "vqzoo.folders",
           "vqzoo.grid", "vqzoo.cli"]
OPTIONS = ["--no-show-source"]


def test_api_reference_builds_without_warnings(tmp_path):
  makefile = (REPO / "Makefile").read_text()
  # the test builds what `make docs` builds
  assert f"-m pdoc {' '.join(OPTIONS)} $(DOC_MODULES)" in makefile
  assert f"DOC_MODULES = {' '.join(MODULES)}" in makefile
  result = subprocess.run([sys.executable, "-W", "error", "-m", "pdoc", *OPTIONS, *MODULES, "-o",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0 and "Warn" not in result.stdout + result.stderr, result.stderr
  pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
  expected = {"vqzoo.html"} | {m.replace(".", "/") + ".html" for m in MODULES[1:]}
  assert expected <= pages, expected - pages
  assert "url=./vqzoo.html" in (tmp_path / "index.html").read_text()  # the front page
  front = (tmp_path / "vqzoo.html").read_text()
  readme_headings = re.findall(r"^## (.+)$", (REPO / "README.md").read_text(), re.M)
  assert len(readme_headings) > 5
  for heading in readme_headings:  # the README's guide, whole
    assert f">{heading}</h2>" in front, heading
  for module in MODULES[1:]:  # every module linked from the front page
    assert f'href="{module.replace(".", "/")}.html"' in front, module
  for page in pages:
    assert 'class="view-source' not in (tmp_path / page).read_text(), f"{page} lists source code"
