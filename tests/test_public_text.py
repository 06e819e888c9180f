"""Public text a user reads (README, cards, docstrings, CLI output) is plain and current."""

import configparser
import re

import pytest

from _util import REPO  # noqa: E402

# Phrases that point at a document no user has ("the loss specification") or at a value
# the reader cannot identify ("the seed", as a noun on its own).
UNPARSABLE = re.compile(r"loss specification|specification's|\bthe seed\b", re.I)


def _public_files():
  yield from (REPO / "README.md", REPO / "BENCHMARKS.md")
  yield from sorted((REPO / "model_cards").glob("*.md"))
  yield from sorted((REPO / "vqzoo" / "weights").glob("*/README.md"))
  yield from sorted((REPO / "vqzoo").rglob("*.py"))
  yield from sorted((REPO / "examples").glob("*"))


def test_no_public_text_names_a_document_or_value_the_reader_does_not_have():
  found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
           for path in _public_files() if path.is_file()
           for n, line in enumerate(path.read_text().splitlines(), 1) if UNPARSABLE.search(line)]
  assert not found, "unparsable public text:\n" + "\n".join(found)


def test_cli_list_and_help_say_what_the_models_are(capsys):
  from vqzoo.cli import build_parser, main
  assert main(["list"]) == 0
  listing = capsys.readouterr().out
  helps = [build_parser().format_help()] + [
      sub.format_help() for action in build_parser()._subparsers._group_actions
      for sub in action.choices.values()]
  for text in [listing, *helps]:
    assert not UNPARSABLE.search(text), text
  assert "784-128-64-D MLP" in listing and "van den Oord et al. 2017" in listing


def test_cli_list_columns_are_aligned_to_the_widest_entry(capsys):
  from vqzoo.cli import main
  from vqzoo.pretrained import registry
  assert main(["list"]) == 0
  lines = capsys.readouterr().out.splitlines()
  names = registry.list_models()
  assert [line.split()[0] for line in lines] == names
  widest_name = max(map(len, names))
  widest_description = max(len(registry.get_entry(n).description) for n in names)
  for line, name in zip(lines, names):
    description = registry.get_entry(name).description
    assert line.index(description) == widest_name + 2, line  # second column starts together
    tail = line[widest_name + 2 + widest_description:]
    assert tail.startswith("  ") and not tail.startswith("   "), line  # third column too


def test_bundled_cards_are_the_current_rendering():
  from vqzoo.pretrained import registry
  from vqzoo.pretrained.cards import zoo_card
  for name in registry.list_models():
    entry = registry.get_entry(name)
    if not entry.metrics:
      continue
    card = zoo_card(entry, entry.metrics)
    assert (entry.bundled_dir / "README.md").read_text() == card, (
        f"{name}: bundled card is stale; run `python scripts/zoo_tools.py` to re-render")
    assert (REPO / "model_cards" / f"{name}.md").read_text() == card, name


def test_skipped_files_are_one_plain_line_from_the_cli(tmp_path, capsys):
  from PIL import Image
  import numpy as np
  from vqzoo.cli import main
  folder = tmp_path / "pngs"
  folder.mkdir()
  for i in range(3):
    Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(folder / f"{i}.png")
  (folder / "notes.txt").write_text("not an image")
  assert main(["encode", "mnist-mlp", "--images", str(folder), "--out",
               str(tmp_path / "codes.npz"), "--no-progress"]) == 0
  err = [line for line in capsys.readouterr().err.splitlines() if "skipped" in line]
  assert len(err) == 1, err
  assert err[0].startswith("vqzoo encode: warning: skipped 1 ") and "notes.txt" in err[0]
  assert "UserWarning" not in err[0] and ".py:" not in err[0]


def test_package_data_is_declared_where_setuptools_looks_for_it():
  """Each data folder is a (namespace) package with its own package-data entry, so setuptools
  neither warns that ``vqzoo.assets.classifiers`` "would be ignored" nor leaves it out."""
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  assert cfg["options"]["packages"].strip() == "find_namespace:"
  data = cfg["options.package_data"]
  for folder in ("vqzoo/assets/classifiers",):
    files = sorted(p.name for p in (REPO / folder).iterdir() if p.suffix != ".py")
    assert files, folder
    patterns = [p.strip() for p in data[folder.replace("/", ".")].split(",")]
    for name in files:
      assert any(re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), name)
                 for p in patterns), f"{folder}/{name} is not package data"
  assert not any("/" in p for k in data for p in data[k].split(",") if k == "vqzoo.assets"), (
      "vqzoo.assets must not reach into classifiers/: it is a package of its own")
