"""What every command line of the repository repeats, on absl flags.

Each command line (``amp_debate.main``, ``amp_debate/tools``, ``amp_debate.data.eval_sets``, the
scripts under ``experiments/`` and ``benchmarks/``) follows one pattern:

- ``define_flags(values=flags.FLAGS)`` defines its flags in ``values``: absl's global FLAGS only
  when the module runs as the program, so importing it defines no flag (tests import several
  command lines in one process; two ``--workdir`` in FLAGS would clash);
- ``parse`` (here) parses them, a bad or missing flag or a stray argument reported in one line
  ``error: ...`` (exit code 1), never absl's usage text or a traceback;
- ``command_line(argv)`` runs the program in this process on flags of its own (a fresh
  ``flags.FlagValues()``: FLAGS untouched), for tests and for scripts that run others
  (``command_line`` here);
- ``main(argv)`` is absl's main, and ``if __name__ == "__main__": cli.run(define_flags, main)``.

``define_study_flags`` defines the flags the study scripts share (``--workdir``, ``--results``,
``--parallel``, ``--table_only``, ``--from_results``). Pure Python and absl: no jax here.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

from absl import app, flags

# Flags this module defines (define_study_flags) belong to its caller: `--help` lists them with
# the program's own.
flags.disclaim_key_flags()

T = TypeVar("T")

STUDY_HELP = {
    "workdir": "directory of the runs (one subdirectory each)",
    "results": "output path without extension",
    "parallel": "runs at a time (one process each)",
    "table_only": "train nothing; tabulate the runs already finished in --workdir",
    "from_results": "train nothing, read no workdir: the tables again from the records in "
                    "--results.json",
}


def fail(message: str) -> NoReturn:
  """A user's mistake: ``error: <message>`` on stderr, exit code 1 (no traceback)."""
  sys.exit(f"error: {message}")


def parse(values: flags.FlagValues, argv: Sequence[str], *,
          error: Callable[[str], Any] = fail, line: int = 0) -> list[str]:
  """absl flag parsing of ``argv`` (``argv[0]`` is the program) into ``values``; returns
  ``[argv[0]]``. A bad or missing flag (absl's ``flags.Error``: line ``line`` of its message, the
  first by default) or a stray positional argument goes to ``error`` as one line (default:
  ``fail``, which exits)."""
  try:
    rest = values(list(argv))
  except flags.Error as e:
    lines = str(e).strip().splitlines() or [type(e).__name__]
    error(lines[line].strip())
    raise  # ``error`` returned: nothing was parsed
  if len(rest) > 1:
    error(f"unexpected arguments: {' '.join(rest[1:])}")
  return rest


def parse_config(values: flags.FlagValues, argv: Sequence[str], *, name: str = "config",
                 error: Callable[[str], Any] = fail) -> list[str]:
  """``parse`` for a command line with an ml_collections config file flag ``--<name>``: the
  mistakes in it reported as one line too (a config file that raises, an override naming a field
  the config does not have, a missing or unreadable file), never a traceback."""
  try:
    # A bad flag, or an error raised by the config file itself (e.g. a bad task name): the last
    # line of absl's message is the cause.
    rest = parse(values, argv, error=error, line=-1)
    values[name].value.keys()  # ml_collections defers a failed load of the file to the first access
  except flags.Error as e:
    error(str(e).strip().splitlines()[-1])
    raise
  except (AttributeError, KeyError) as e:  # --config.x.y=v naming a field that does not exist
    error(f"a --{name} override names a field the config does not have: {e}")
    raise
  except OSError as e:  # a missing or unreadable config file (the last line names the file)
    cause = re.sub(r"^\[Errno \d+\] ", "", str(e).strip().splitlines()[-1].strip())
    error(f"cannot load --{name}: {cause}")
    raise
  return rest


def command_line(define_flags: Callable[[flags.FlagValues], flags.FlagValues],
                 execute: Callable[[flags.FlagValues], T], argv: Sequence[str], *,
                 program: str = "", error: Callable[[str], Any] = fail) -> T:
  """A command line run in this process: ``argv`` (its arguments, no program name) parsed into a
  fresh ``flags.FlagValues()`` that ``define_flags`` fills (absl's global FLAGS untouched), then
  ``execute(values)``'s result."""
  values = define_flags(flags.FlagValues())
  parse(values, [program or "command_line", *argv], error=error)
  return execute(values)


def recorded(define_flags: Callable[[flags.FlagValues], flags.FlagValues],
             execute: Callable[[flags.FlagValues, str], T], program: str
             ) -> tuple[Callable[[Sequence[str]], T], Callable[[list[str]], None]]:
  """``(command_line, main)`` of a program whose ``execute(values, command)`` records the command
  line it ran (``program`` and its arguments) with its results: ``command_line(argv)`` runs it in
  this process on flags of its own (``command_line`` above), ``main`` is absl's main (the flags
  already parsed into FLAGS; ``parse`` refused stray arguments)."""

  def in_process(argv: Sequence[str]) -> T:
    return command_line(define_flags, lambda values: execute(values, " ".join([program, *argv])),
                        argv, program=program)

  def main(argv: list[str]) -> None:
    del argv
    execute(flags.FLAGS, " ".join([program, *sys.argv[1:]]))

  return in_process, main


def run(define_flags: Callable[..., Any], main: Callable[[list[str]], Any], *,
        error: Callable[[str], Any] = fail, config: bool = False) -> None:
  """The program (``if __name__ == "__main__"``): its flags defined in absl's FLAGS, sys.argv
  parsed by ``parse`` (``parse_config`` with ``config``: a ``--config`` file flag) with one-line
  errors, then absl's ``app.run(main)``."""
  define_flags(flags.FLAGS)
  parser = parse_config if config else parse
  app.run(main, flags_parser=lambda argv: parser(flags.FLAGS, argv, error=error))


def define_study_flags(values: flags.FlagValues, *, workdir: str | None = None,
                       results: str | None = None, parallel: bool = False,
                       table_only: bool = False, from_results: bool = False,
                       help: Mapping[str, str] | None = None) -> flags.FlagValues:
  """The flags study scripts share, each defined when asked for: ``--workdir`` and ``--results``
  (strings; their defaults given here), ``--parallel`` (integer, default 1), ``--table_only`` and
  ``--from_results`` (booleans, default False). ``help`` replaces a flag's help text (by name).
  Returns ``values``."""
  texts = {**STUDY_HELP, **(help or {})}
  define = dict(flag_values=values)
  if workdir is not None:
    flags.DEFINE_string("workdir", workdir, texts["workdir"], **define)
  if results is not None:
    flags.DEFINE_string("results", results, texts["results"], **define)
  if parallel:
    flags.DEFINE_integer("parallel", 1, texts["parallel"], **define)
  if table_only:
    flags.DEFINE_bool("table_only", False, texts["table_only"], **define)
  if from_results:
    flags.DEFINE_bool("from_results", False, texts["from_results"], **define)
  return values


def namespace(values: flags.FlagValues) -> types.SimpleNamespace:
  """The parsed flags' values as attributes, a ``-`` in a flag's name read as ``_`` (the benchmarks'
  ``--task-options`` is ``namespace(values).task_options``, as argparse spelled it)."""
  return types.SimpleNamespace(**{name.replace("-", "_"): value
                                  for name, value in values.flag_values_dict().items()})


def non_defaults(values: flags.FlagValues, names: Sequence[str]) -> dict[str, Any]:
  """``{name: value}`` of the flags ``names`` (in that order) whose value is not their default."""
  return {name: values[name].value for name in names
          if values[name].value != values[name].default}
