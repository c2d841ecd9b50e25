"""One command-line style (``amp_debate.cli``): absl flags everywhere, none defined on import.

Every script under ``experiments/`` and ``benchmarks/`` and every command line of the package
defines its flags in a ``define_flags(values)`` called only when it runs (tests import several of
them in one process: two ``--workdir`` in absl's global FLAGS would clash), and a user's mistake
on the command line is one line ``error: ...``. No jax compile here.
"""

import ast
import importlib
import pathlib
import re
import shlex
import sys

import pytest
from absl import flags

from amp_debate import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
# Folders of Python whose command lines must not use argparse (config and sweep files have none).
SCANNED = ("amp_debate", "experiments", "benchmarks")
SKIPPED = (REPO / "experiments" / "configs", REPO / "experiments" / "sweeps")
MAIN = re.compile(r'^if __name__ == "__main__":', re.MULTILINE)


def _python_files():
  for top in SCANNED:
    for path in sorted((REPO / top).rglob("*.py")):
      if not any(path.is_relative_to(skip) for skip in SKIPPED):
        yield path


def _scripts():
  """(module name, path) of every script under experiments/ and benchmarks/ (benchmarks are
  imported by their bare names, as they import each other), then every command line of the
  package (a module that runs as ``__main__``)."""
  for path in sorted((REPO / "experiments").glob("*.py")):
    if path.stem != "__init__":
      yield f"experiments.{path.stem}", path
  for path in sorted(BENCHMARKS.glob("*.py")):
    yield path.stem, path
  for path in sorted((REPO / "amp_debate").rglob("*.py")):
    if MAIN.search(path.read_text()):
      yield ".".join(path.relative_to(REPO).with_suffix("").parts), path


def _imports_argparse(source: str) -> list[int]:
  lines = []
  for node in ast.walk(ast.parse(source)):
    names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
             [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
    if any(n == "argparse" or n.startswith("argparse.") for n in names):
      lines.append(node.lineno)
  return lines


def test_no_argparse():
  found = {str(p.relative_to(REPO)): lines for p in _python_files()
           if (lines := _imports_argparse(p.read_text()))}
  assert found == {}, f"argparse imported (use absl flags and amp_debate.cli): {found}"
  assert _imports_argparse("import argparse\nfrom argparse import ArgumentParser\n") == [1, 2]


def _ours(module_name: str) -> bool:
  """Whether a module that registered absl flags is this repository's (not a library's)."""
  return (module_name.split(".")[0] in ("amp_debate", "experiments")
          or module_name in {p.stem for p in BENCHMARKS.glob("*.py")}
          or str(REPO) in module_name)


@pytest.fixture(scope="module")
def scripts():
  """Every experiments/ and benchmarks/ module, imported: {name: module}."""
  sys.path.insert(0, str(BENCHMARKS))
  try:
    before = set(flags.FLAGS)
    modules = {name: importlib.import_module(name) for name, _ in _scripts()}
    after = set(flags.FLAGS)
  finally:
    sys.path.remove(str(BENCHMARKS))
  return modules, before, after


def test_importing_a_script_defines_no_flag(scripts):
  modules, before, after = scripts
  assert {"experiments.ablation", "aot_tpu", "amp_debate.main", "amp_debate.sweep",
          "amp_debate.data.eval_sets", "amp_debate.tools.kl_attack"} <= set(modules)
  assert len(modules) >= 30
  by_module = flags.FLAGS.flags_by_module_dict()
  new = after - before  # the libraries' own flags (absl logging, chex, orbax, ...) may appear
  ours = {name: sorted(f.name for f in defined) for name, defined in by_module.items()
          if _ours(name) and defined}
  assert ours == {}, f"flags defined in absl's FLAGS on import: {ours}"
  mine = {f.name for name, defined in by_module.items() if _ours(name) for f in defined}
  assert not new & mine


def test_every_command_line_follows_the_pattern(scripts):
  """``define_flags`` fills a fresh FlagValues (not FLAGS); a script run as a program goes
  through ``cli.run``."""
  modules, _, _ = scripts
  names = set(flags.FLAGS)
  for name, module in modules.items():
    source = pathlib.Path(module.__file__).read_text()
    if not MAIN.search(source):
      continue  # a helper (benchmarks/common.py)
    assert "cli.run(define_flags, main" in source, name
    values = module.define_flags(flags.FlagValues())
    assert isinstance(values, flags.FlagValues), name
    if name != "experiments.question_spaces":  # no flags of its own
      assert len(list(values)) >= 2, name
    assert callable(getattr(module, "main")), name
  assert set(flags.FLAGS) == names


# The spellings the committed regeneration commands use (README, BUILD_NOTES, results files),
# argparse's included: hyphenated names, space-separated values, an empty value, booleans.
CITED = [
    ("experiments.ablation", "--workdir=workdir/ablation --seeds=3 --mechanism_seeds=1 --parallel=2"),
    ("experiments.ablation", "--workdir=workdir/ablation --table_only"),
    ("experiments.task_suite", "--from_results --results=experiments/results/task_suite_supervised"),
    ("experiments.kl_budget_study", "--mode hybrid --safe_steps 5"),
    ("experiments.support_probe", "--workdir=a --workdir=b --batches=2"),
    ("aot_tpu", "--presets base --topologies v5e:4x4 --fsdp 4 --no-search --start-per-chip 4352 "
                "--out benchmarks/results/aot_tpu_probe.md"),
    ("aot_tpu", "--quick --hbm-gib 16 --max-compiles 3"),
    ("rollout", "--task-options max_exponent=16 --players oracle-liar --host-batches ''"),
    ("rollout", "--t_max 4,8 --host-t-max 4 --repeats 1"),
    ("memory", "--presets tiny --batches 8,16 --t-max 4,8 --budget-gib 16"),
    ("seeds", "--seeds 1,4 --learning-rates '' --steps 1"),
    ("time_to_accuracy", "--runlocal --steps 20 --eval-every 10 --first-seed 1 "
                         "--runs 'supervised;hybrid:step.num_minibatches=2'"),
    ("run", "--quick --skip time_to_accuracy,memory"),
]


@pytest.mark.parametrize("name, argv", CITED, ids=[f"{n}:{a.split()[0]}" for n, a in CITED])
def test_cited_command_lines_parse(scripts, name, argv):
  modules, _, _ = scripts
  values = modules[name].define_flags(flags.FlagValues())
  errors = []
  assert cli.parse(values, [name, *shlex.split(argv)], error=errors.append) == [name]
  assert errors == []


def test_aot_tpu_no_search_and_hyphens(scripts):
  aot_tpu = scripts[0]["aot_tpu"]
  values = aot_tpu.define_flags(flags.FlagValues())
  cli.parse(values, ["aot_tpu", "--no-search", "--start-per-chip", "8", "--hbm-gib=16"])
  args = aot_tpu.arguments(values)
  assert (args.search, args.start_per_chip, args.hbm_gib, args.max_compiles) == (False, 8, 16.0, 6)
  values = aot_tpu.define_flags(flags.FlagValues())
  cli.parse(values, ["aot_tpu"])
  assert aot_tpu.arguments(values).search
  values = aot_tpu.define_flags(flags.FlagValues())
  cli.parse(values, ["aot_tpu", "--max-compiles=0"])
  with pytest.raises(SystemExit, match="^error: --start-per-chip and --max-compiles must be >= 1$"):
    aot_tpu.arguments(values)


# ---- cli ----------------------------------------------------------------------------------------
def _values():
  values = flags.FlagValues()
  flags.DEFINE_integer("steps", 3, "steps", flag_values=values)
  flags.DEFINE_string("name", None, "a name", flag_values=values)
  flags.mark_flag_as_required("name", flag_values=values)
  return values


@pytest.mark.parametrize("argv, message", [
    (["--name=a", "--nope=1"], "error: Unknown command line flag 'nope'"),
    (["--name=a", "stray", "more"], "error: unexpected arguments: stray more"),
    (["--name=a", "--steps=x"], "error: flag --steps=x: invalid literal for int() with base 10: 'x'"),
    ([], "error: flag --name=None: Flag --name must have a value other than None."),
])
def test_parse_errors_are_one_line(argv, message):
  with pytest.raises(SystemExit) as exit_info:
    cli.parse(_values(), ["prog", *argv])
  assert exit_info.value.code == message  # sys.exit(str): printed to stderr, exit status 1


def test_parse_error_callback():
  lines = []
  with pytest.raises(flags.Error):  # a callback that returns: the flags were not parsed
    cli.parse(_values(), ["prog", "--steps=x", "--name=a"], error=lines.append)
  assert cli.parse(_values(), ["prog", "--name=a", "x"], error=lines.append) == ["prog", "x"]
  assert lines == ["flag --steps=x: invalid literal for int() with base 10: 'x'",
                   "unexpected arguments: x"]


def test_parse_and_command_line_leave_flags_alone():
  before = set(flags.FLAGS)
  values = _values()
  assert cli.parse(values, ["prog", "--name", "b", "--steps", "7"]) == ["prog"]
  assert (values.name, values.steps) == ("b", 7)
  got = cli.command_line(lambda v: (flags.DEFINE_integer("n", 1, "n", flag_values=v), v)[1],
                         lambda v: v.n * 10, ["--n=4"])
  assert got == 40 and set(flags.FLAGS) == before


def test_parse_config_errors_are_one_line(tmp_path):
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  (tmp_path / "bad.py").write_text("def get_config():\n  raise ValueError('bad task')\n")
  for argv, message in [([f"--config={tmp_path / 'nosuch.py'}"], "cannot load --config: No such file"),
                        ([f"--config={tmp_path / 'bad.py'}"], "ValueError: bad task")]:
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "c", flag_values=values)
    with pytest.raises(SystemExit) as exit_info:
      cli.parse_config(values, ["prog", *argv])
    assert str(exit_info.value.code).startswith("error: ") and message in exit_info.value.code
    assert "\n" not in exit_info.value.code


def test_study_flags():
  values = cli.define_study_flags(flags.FlagValues(), workdir="workdir/x", results="out/x",
                                  parallel=True, table_only=True, from_results=True)
  assert {name: values[name].default for name in values} == {
      "workdir": "workdir/x", "results": "out/x", "parallel": 1, "table_only": False,
      "from_results": False}
  assert values["results"].help == "output path without extension"
  assert values["parallel"].help == "runs at a time (one process each)"
  cli.parse(values, ["prog", "--table_only", "--parallel=2", "--results", "r"])
  assert (values.table_only, values.from_results, values.parallel, values.results) == (
      True, False, 2, "r")
  assert list(cli.define_study_flags(flags.FlagValues())) == []
  values = cli.define_study_flags(flags.FlagValues(), results="r", help={"results": "prefix"})
  assert list(values) == ["results"] and values["results"].help == "prefix"
  assert cli.non_defaults(values, ["results"]) == {}


def test_namespace_reads_hyphens_as_underscores():
  values = flags.FlagValues()
  flags.DEFINE_string("host-batches", "64", "b", flag_values=values)
  flags.DEFINE_bool("no-search", False, "s", flag_values=values)
  cli.parse(values, ["prog", "--host-batches", "", "--no-search"])
  args = cli.namespace(values)
  assert (args.host_batches, args.no_search) == ("", True)
