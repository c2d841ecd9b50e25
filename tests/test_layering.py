"""The I/O line (DESIGN.md section 5): tasks, models and procedure are pure code.

Every module under ``amp_debate/{tasks,models,procedure}`` is parsed (not imported) and scanned: it
may not import from ``train``, ``data``, ``main`` or ``experiments``, open files, read environment
variables or parse arguments. ``models`` also never imports ``tasks`` or ``procedure``, and ``tasks``
imports neither ``models`` nor ``procedure``.
"""

import ast
import pathlib
import textwrap

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "amp_debate"
PURE = ("tasks", "models", "procedure")
# Modules no pure module may import (the module itself or anything under it).
ABOVE = ("amp_debate.train", "amp_debate.data", "amp_debate.main", "experiments")
# Argument parsers and the other ways to reach the outside world.
FORBIDDEN_MODULES = ("argparse", "absl.flags", "absl.app", "ml_collections.config_flags")
FORBIDDEN_ATTRIBUTES = {("os", "environ"), ("os", "getenv"), ("os", "putenv"), ("sys", "argv")}
SIBLINGS = {"models": ("amp_debate.tasks", "amp_debate.procedure"),
            "tasks": ("amp_debate.models", "amp_debate.procedure")}


def _under(module: str, prefixes) -> bool:
  return any(module == p or module.startswith(p + ".") for p in prefixes)


def _imported(node: ast.AST, module_name: str) -> list[str]:
  """Full names a node imports: ``from a.b import c`` -> ["a.b", "a.b.c"]; relative ones resolved."""
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  if isinstance(node, ast.ImportFrom):
    base = node.module or ""
    if node.level:
      package = module_name.split(".")[:-node.level]
      base = ".".join(package + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]
  return []


def violations(source: str, module_name: str) -> list[str]:
  """Every breach of the I/O line in one module's source, as "line N: what" strings."""
  layer = module_name.split(".")[1] if module_name.count(".") else ""
  forbidden = ABOVE + FORBIDDEN_MODULES + SIBLINGS.get(layer, ())
  found = []
  for node in ast.walk(ast.parse(source)):
    for name in _imported(node, module_name):
      if _under(name, forbidden):
        found.append(f"line {node.lineno}: imports {name}")
      elif isinstance(node, ast.ImportFrom) and name in ("os.environ", "os.getenv", "sys.argv"):
        found.append(f"line {node.lineno}: imports {name}")
    if isinstance(node, ast.Call):
      func = node.func
      if (isinstance(func, ast.Name) and func.id == "open") or (
          isinstance(func, ast.Attribute) and func.attr == "open"):
        found.append(f"line {node.lineno}: calls open(")
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
        and (node.value.id, node.attr) in FORBIDDEN_ATTRIBUTES):
      found.append(f"line {node.lineno}: uses {node.value.id}.{node.attr}")
  return found


def _modules():
  for layer in PURE:
    for path in sorted((PACKAGE / layer).rglob("*.py")):
      parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
      yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_pure_module_is_scanned():
  names = {name for _, name in _modules()}
  assert {"amp_debate.tasks", "amp_debate.tasks.base", "amp_debate.models.transformer",
          "amp_debate.procedure.debate"} <= names
  assert not any(name.startswith("amp_debate.data") for name in names)


@pytest.mark.parametrize("path, module_name", list(_modules()),
                         ids=[name for _, name in _modules()])
def test_pure_modules_do_no_io_and_import_nothing_above_them(path, module_name):
  assert violations(path.read_text(), module_name) == [], f"{path} crosses the I/O line"


def test_the_scan_finds_each_kind_of_breach():
  source = textwrap.dedent("""
      import argparse
      import os
      from absl import flags
      from amp_debate.train import step
      from amp_debate import data
      from .. import train
      from experiments.configs import default
      from amp_debate.tasks import tokenizer

      def f(path):
        with open(path) as fh:
          return fh.read(), os.environ["HOME"], os.getenv("X"), gzip.open(path)
  """)
  found = violations(source, "amp_debate.models.transformer")
  assert sorted(line.split(": ", 1)[1] for line in found) == sorted([
      "imports argparse", "imports absl.flags", "imports amp_debate.train",
      "imports amp_debate.train.step", "imports amp_debate.data", "imports amp_debate.train",
      "imports experiments.configs", "imports experiments.configs.default",
      "imports amp_debate.tasks", "imports amp_debate.tasks.tokenizer",
      "calls open(", "uses os.environ", "uses os.getenv", "calls open(",
  ]), found
  # The same import is fine one layer up, and plain os use is not a breach.
  assert violations("from amp_debate.tasks import tokenizer\nimport os\nos.path.join('a')\n",
                    "amp_debate.procedure.debate") == []
