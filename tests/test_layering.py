"""The I/O line (DESIGN.md section 5): tasks, models, procedure and safety are pure code.

Every module under ``amp_debate/{tasks,models,procedure,safety}`` is parsed (not imported) and
scanned: it may not import from ``train``, ``data``, ``main``, ``tools`` or ``experiments``, open
files, read environment variables or parse arguments. ``models`` also never imports ``tasks`` or
``procedure``, and ``tasks`` imports neither ``models`` nor ``procedure``. The command-line tools
(``amp_debate/tools``) sit above ``train``: nothing under ``train`` or ``data`` imports them.
"""

import ast
import pathlib
import textwrap

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "amp_debate"
PURE = ("tasks", "models", "procedure", "safety")
# Modules no pure module may import (the module itself or anything under it).
ABOVE = ("amp_debate.train", "amp_debate.data", "amp_debate.main", "amp_debate.tools",
         "experiments")
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


def _modules(layers=PURE):
  for layer in layers:
    for path in sorted((PACKAGE / layer).rglob("*.py")):
      parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
      yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_pure_module_is_scanned():
  names = {name for _, name in _modules()}
  assert {"amp_debate.tasks", "amp_debate.tasks.base", "amp_debate.models.transformer",
          "amp_debate.procedure.debate", "amp_debate.safety", "amp_debate.safety.drift",
          "amp_debate.safety.kl_attack"} <= names
  assert not any(name.startswith(("amp_debate.data", "amp_debate.tools")) for name in names)


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
      from amp_debate.tools import drift

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
      "imports amp_debate.tools", "imports amp_debate.tools.drift",
      "calls open(", "uses os.environ", "uses os.getenv", "calls open(",
  ]), found
  # The same import is fine one layer up, and plain os use is not a breach.
  assert violations("from amp_debate.tasks import tokenizer\nimport os\nos.path.join('a')\n",
                    "amp_debate.procedure.debate") == []


# ---- the tools sit above train ----------------------------------------------------------------
BELOW_TOOLS = ("train", "data")


def tools_imports(source: str, module_name: str) -> list[str]:
  """Every import of ``amp_debate.tools`` (or anything under it) in one module's source."""
  return [f"line {node.lineno}: imports {name}" for node in ast.walk(ast.parse(source))
          for name in _imported(node, module_name) if _under(name, ("amp_debate.tools",))]


@pytest.mark.parametrize("path, module_name", list(_modules(BELOW_TOOLS)),
                         ids=[name for _, name in _modules(BELOW_TOOLS)])
def test_train_and_data_do_not_import_the_tools(path, module_name):
  assert tools_imports(path.read_text(), module_name) == [], f"{path} imports a tool"


def test_the_tools_scan_finds_an_import_of_a_tool():
  assert {"amp_debate.train.trainer", "amp_debate.data.eval_sets"} <= {
      name for _, name in _modules(BELOW_TOOLS)}
  source = textwrap.dedent("""
      from amp_debate.tools import drift
      import amp_debate.tools.kl_attack

      def f():
        from ..tools import mnist_judge
        return mnist_judge
  """)
  assert [line.split(": ", 1)[1] for line in tools_imports(source, "amp_debate.train.trainer")] == [
      "imports amp_debate.tools", "imports amp_debate.tools.drift",
      "imports amp_debate.tools.kl_attack", "imports amp_debate.tools",
      "imports amp_debate.tools.mnist_judge"]
  assert tools_imports("from amp_debate.train import step\nimport amp_debate.toolsy\n",
                       "amp_debate.train.trainer") == []
