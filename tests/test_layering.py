"""The layering of ARCHITECTURE.md holds: no import cycle among jaxvision's modules
(counting imports inside functions), families import only jaxvision.core, core imports
no family, nothing imports an entry point; and import-linter's contracts are kept."""
import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = {"jaxvision.cli", "jaxvision.models", "jaxvision.families"}


def _modules():
  mods = {}
  for root, _, files in os.walk(os.path.join(ROOT, "jaxvision")):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        name = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
        mods[name.removesuffix(".__init__")] = path
  return mods


def _graph():
  """module -> set of jaxvision modules it imports anywhere in its body."""
  mods = _modules()
  edges = {m: set() for m in mods}
  for m, path in mods.items():
    package = m if path.endswith("__init__.py") else m.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(open(path).read())):
      targets = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")
          base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
      for t in targets:
        while t and t not in mods:
          t = t.rsplit(".", 1)[0] if "." in t else ""
        if t and t != m:
          edges[m].add(t)
  return edges


def _family(m):
  parts = m.split(".")
  return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] not in
                                         ("cli", "models", "families")) else None


def test_no_import_cycle():
  edges = _graph()
  index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]
  sys.setrecursionlimit(10000)

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      scc = []
      while True:
        w = stack.pop()
        on.discard(w)
        scc.append(w)
        if w == v:
          break
      if len(scc) > 1:
        cycles.append(sorted(scc))

  for v in edges:
    if v not in index:
      visit(v)
  assert not cycles, f"import cycles: {cycles}"


def test_families_import_only_core_and_nothing_imports_entry_points():
  edges = _graph()
  bad = []
  for m, targets in edges.items():
    fm = _family(m)
    for t in targets:
      ft = _family(t)
      if t in ENTRY_POINTS and m not in ENTRY_POINTS:
        bad.append(f"{m} -> {t} (an entry point)")
      elif fm == "core" and ft != "core":
        bad.append(f"{m} -> {t} (core imports a family)")
      elif fm not in (None, "core") and ft not in ("core", fm):
        bad.append(f"{m} -> {t} (a family imports another)")
  assert not bad, "; ".join(sorted(bad))


def test_every_family_is_listed_and_has_the_standard_files():
  from jaxvision import families
  pkgs = sorted(d for d in os.listdir(os.path.join(ROOT, "jaxvision"))
                if d != "core" and os.path.isfile(os.path.join(ROOT, "jaxvision", d, "__init__.py")))
  assert sorted(f.split(".")[1] for f in families.FAMILIES) == pkgs
  for p in pkgs:
    files = set(os.listdir(os.path.join(ROOT, "jaxvision", p)))
    # every family trains and has a command; architectures live in models.py
    # (style's generators.py), weights import in convert.py where the family has one
    assert {"task.py", "commands.py"} <= files, p
    assert "models.py" in files or "generators.py" in files, p


@pytest.mark.skipif(shutil.which("lint-imports") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "lint-imports")), reason="import-linter missing")
def test_import_linter_contracts():
  exe = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
  p = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
