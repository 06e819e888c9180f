"""The import graph of ``vqzoo``: no cycle, and no module imports from a layer above its own.

Every ``import`` and ``from ... import`` of every module is read with ``ast``, function-local
ones included (a lazy import hides a cycle, it does not remove it). Layers, lowest first:
the low-level modules (configs, io, images, grid, _version, assets, weights, folders, ...), then
``nn`` with ``cpu_tuning`` (which finds the hooks ``nn.hooks`` declares), ``pretrained``,
``training``, ``evaluation`` (the measuring instruments, which read training's data, classifiers
and codes), the package root ``vqzoo`` (the public re-exports) and the CLI (``vqzoo.cli``,
``scripts/``).
"""

from __future__ import annotations

import ast
from pathlib import Path

from _util import REPO

LOW = {"vqzoo.configs", "vqzoo.io", "vqzoo.images", "vqzoo.grid",
       "vqzoo._version", "vqzoo.assets", "vqzoo.weights", "vqzoo.folders", "vqzoo.decoded_images",
       "vqzoo.sampling", "vqzoo.compilation_cache", "vqzoo.image_folder", "vqzoo.result_warnings"}
LAYERS = {"low": 0, "vqzoo.nn": 1, "vqzoo.cpu_tuning": 1, "vqzoo.pretrained": 2,
          "vqzoo.training": 3, "vqzoo.evaluation": 4, "vqzoo": 5, "vqzoo.cli": 6,
          "vqzoo.cli_devices": 6, "scripts": 6}
# Edges another branch removes; each must still exist here (see the last test), so the entry
# is deleted when that branch lands. vqzoo.training.finetuning reads __version__ from the root.
AWAITING_MERGE: set = set()


def modules() -> dict[str, Path]:
  found = {}
  for path in sorted((REPO / "vqzoo").rglob("*.py")):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    found[".".join(parts)] = path
  for path in sorted((REPO / "scripts").glob("*.py")):
    found[f"scripts.{path.stem}"] = path
  return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
  """The vqzoo modules ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets = [(a.name, None) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([node.module] if node.module else []))
      targets = [(base, a.name) for a in node.names]
    else:
      continue
    for module, attribute in targets:
      if module != "vqzoo" and not module.startswith("vqzoo."):
        continue
      sub = f"{module}.{attribute}" if attribute else None
      target = sub if sub in known else module
      out.add(target)
      # Importing a.b.c runs the package a.b first, unless the importer is already inside it.
      parts = target.split(".")
      for i in range(2, len(parts)):
        parent = ".".join(parts[:i])
        if not (name == parent or name.startswith(parent + ".")):
          out.add(parent)
  return out - {name}


def graph() -> dict[str, set[str]]:
  found = modules()
  return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer(name: str) -> int:
  if name in LOW or any(name.startswith(m + ".") for m in LOW):
    return LAYERS["low"]
  for prefix in ("vqzoo.cli", "vqzoo.cli_devices", "vqzoo.nn", "vqzoo.cpu_tuning",
                 "vqzoo.pretrained", "vqzoo.training", "vqzoo.evaluation", "scripts"):
    if name == prefix or name.startswith(prefix + "."):
      return LAYERS[prefix]
  if name == "vqzoo":
    return LAYERS["vqzoo"]
  raise AssertionError(f"{name}: in no layer; add it to LOW or LAYERS in {__file__}")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """One cycle through each strongly connected component of more than one module."""
  index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

  def visit(v: str) -> None:  # Tarjan
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(edges.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return found


def test_the_graph_sees_local_and_relative_imports():
  edges = graph()
  # cards.py imports the registry inside a function; the root imports everything it exports.
  assert "vqzoo.pretrained.registry" in edges["vqzoo.pretrained.cards"]
  assert {"vqzoo.nn", "vqzoo.pretrained", "vqzoo.configs"} <= edges["vqzoo"]
  # frechet reads the classifier inside a function; evaluation sits on training.
  assert {"vqzoo.training", "vqzoo.training.classifier"} <= edges["vqzoo.evaluation.frechet"]
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_from_a_layer_above_its_own():
  edges = graph()
  upward = sorted((a, b) for a, targets in edges.items() for b in targets
                  if layer(b) > layer(a) and (a, b) not in AWAITING_MERGE)
  assert not upward, "imports that run up the layers: " + ", ".join(f"{a} -> {b}"
                                                                     for a, b in upward)


def test_no_import_cycle_inside_vqzoo():
  edges = {a: {b for b in targets if (a, b) not in AWAITING_MERGE}
           for a, targets in graph().items()}
  assert not cycles(edges), f"import cycles: {cycles(edges)}"


def test_pretrained_reads_files_without_knowing_the_model():
  edges = graph()
  assert "vqzoo.pretrained.model" not in edges["vqzoo.pretrained.loading"]
  assert "vqzoo.pretrained.loading" in edges["vqzoo.pretrained.model"]


def test_edges_awaiting_merge_still_exist():
  """When this fails, the other branch has landed: empty ``AWAITING_MERGE``."""
  edges = graph()
  assert all(b in edges[a] for a, b in AWAITING_MERGE), AWAITING_MERGE
