r"""Ablation sweeps from config files: run every setting, resume what was cut off, tabulate.

  python -m amp_debate.sweep --sweep=experiments/sweeps/call_prob.py \
      --config=experiments/configs/default.py:task=permutation,quickstart --workdir=workdir/call_prob

A sweep file is a small Python file whose ``get_sweep()`` returns the list of runs, each a dict of
config overrides (``amp_debate.sweep.product`` and ``chain`` build such lists):

  def get_sweep():
    return sweep.product({"debate.call_prob": [1.0, 0.3]}, {"seed": [0, 1]})

``--sweep=path.py:key=value,...`` passes that argument to ``get_sweep(arg)`` (a study's sizes:
``experiments/sweeps/ablation.py:seeds=1``). A sweep file may name its base config in ``CONFIG``
(used when ``--config`` is not given; default ``DEFAULT_CONFIG``). A run's ``name`` key, if any,
names its directory instead of its overrides (a chained study refers to an earlier run by it), and
a string value may contain ``{workdir}``, replaced by the sweep's workdir (``init_from:
"{workdir}/safe"``; the run's name and the table keep the placeholder).

A key is a dotted config field (``debate.call_prob``) or one of the config file's arguments
(``ARG_KEYS`` of experiments/configs/default.py: ``mode``, ``size``, ...), which rebuilds the base
config with that argument (so ``mode=debate`` gets every default the debate mode sets). Every run is
checked against the config before anything runs: an unknown field, a value of the wrong type or one
the config's own checks refuse ends the sweep with a one-line message.

Each run trains in ``<workdir>/<name>`` (the name spells its overrides) with the trainer's automatic
resume. ``summary.json`` (the trainer's, with the sweep's keys merged in: index, name, overrides,
wall_s, the table's columns) marks a finished run: rerunning the sweep skips those, resumes the
others from their latest checkpoint and runs the rest, so a killed sweep is rerun with the same
command.
SIGTERM stops the current run at a checkpoint (the trainer's preemption path) and the sweep with
it. ``--parallel=N`` runs N runs at a time, each in its own process (``--only=I`` in a child);
``--count`` prints the number of runs (for cluster array jobs, ``launch/sweep_cluster.sh``).

``--vmap=N`` trains runs that share a compiled step (configs differing only in the seed and the
hyperparameters that are data in the state: learning rate, λ weights and anneals, limit,
multiplier step, β; ``config_lib.DATA_FIELDS``) together, up to N at a time, as one vmapped
program (``amp_debate.train.run_group``): one compile and one batched step for the group instead
of one per run. Each run's directory gets the files its own run would write (metrics, results,
its checkpoints), so the table is the same, and a group resumes from its runs' checkpoints. With
``--vmap`` the units of ``--only``, ``--count`` and ``--parallel`` are the groups (a run that
shares its step with no other is a group of one).

Afterwards (and with ``--table_only``) the sweep writes ``<workdir>/results.md`` and
``results.csv``: one row per run with its overrides, seed, dataset version, final held-out
accuracy per level, debate length, human calls per question and wall time; and ``accuracy.png``
(held-out accuracy by level) and ``curves.png`` (held-out accuracy against step) when matplotlib is
installed.

Study scripts use the same runner from Python: ``run_sweep(spec, config, workdir)`` runs (or, with
``train=False``, only reads) a sweep and returns its ``Run`` objects, whose ``summary`` the
study tabulates; ``override(config, {"a.b": v})`` applies dotted overrides with the sweep's checks.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from absl import flags, logging

from amp_debate import cli, options

SUMMARY = "summary.json"
DEFAULT_CONFIG = "experiments/configs/default.py:task=permutation,quickstart"


class SweepError(ValueError):
  """A bad sweep file, base config or override (one-line message)."""


# ---- writing sweeps ----------------------------------------------------------------------------
def product(*axes: Mapping[str, Iterable[Any]]) -> list[dict[str, Any]]:
  """Every combination: ``product({"a": [1, 2]}, {"b": [3, 4]})`` -> 4 runs (``a`` outermost).
  Keys inside one mapping are zipped: ``{"x": [1, 2], "y": [3, 4]}`` -> x=1,y=3 and x=2,y=4."""
  groups = []
  for axis in axes:
    values = [list(v) for v in axis.values()]
    if len({len(v) for v in values}) > 1:
      raise SweepError(f"zipped keys {list(axis)} have different numbers of values")
    groups.append([dict(zip(axis, row)) for row in zip(*values)])
  return [dict(itertools.chain.from_iterable(d.items() for d in combo))
          for combo in itertools.product(*groups)]


def chain(*sweeps: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The runs of several sweeps, one after the other."""
  return [dict(run) for s in sweeps for run in s]


# ---- loading ---------------------------------------------------------------------------------------
def _import(path: str, what: str):
  if not os.path.isfile(path):
    raise SweepError(f"{what} {path} does not exist")
  name = "_amp_debate_" + re.sub(r"\W", "_", os.path.abspath(path))
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses in the file look their module up
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # a user's file: any error in it is reported as one line
    del sys.modules[name]
    raise SweepError(f"{what} {path} failed to load: {type(e).__name__}: {e}") from None
  return module


def _call_get_sweep(module, path: str, arg: str):
  if not callable(getattr(module, "get_sweep", None)):
    raise SweepError(f"sweep file {path} has no get_sweep() function")
  try:
    return module.get_sweep(arg) if arg else module.get_sweep()
  except Exception as e:  # pylint: disable=broad-except
    call = f"get_sweep({arg!r})" if arg else "get_sweep()"
    raise SweepError(f"sweep file {path}: {call} failed: {type(e).__name__}: {e}") from None


def load_sweep(spec: str) -> list[dict[str, Any]]:
  """The runs of the sweep file ``spec`` (``path.py`` or ``path.py:arg``: its ``get_sweep()`` or
  ``get_sweep(arg)``), checked for shape only."""
  path, arg = _split_config(spec)
  module = _import(path, "sweep file")
  runs = _call_get_sweep(module, path, arg)
  if not isinstance(runs, (list, tuple)) or not runs:
    raise SweepError(f"sweep file {path}: get_sweep() must return a non-empty list of dicts")
  for i, run in enumerate(runs):
    if not isinstance(run, Mapping) or not all(isinstance(k, str) for k in run):
      raise SweepError(f"sweep file {path}: run {i} is not a dict of config overrides: {run!r}")
    if not isinstance(run.get("name", ""), str) or run.get("name") == "":
      raise SweepError(f"sweep file {path}: run {i}: name must be a non-empty string")
  return [dict(run) for run in runs]


def sweep_config(spec: str) -> str:
  """The base config of the sweep file ``spec``: its ``CONFIG``, else ``DEFAULT_CONFIG``."""
  module = _import(_split_config(spec)[0], "sweep file")
  config = getattr(module, "CONFIG", DEFAULT_CONFIG)
  if not isinstance(config, str):
    raise SweepError(f"sweep file {spec}: CONFIG must be a config spec (path.py:arg)")
  return config


def _split_config(spec: str) -> tuple[str, str]:
  path, _, arg = spec.partition(":")
  return path, arg


@dataclasses.dataclass
class Run:
  """One run of a sweep: its overrides, the config they give, where it trains."""

  index: int
  overrides: dict[str, Any]
  config: Any
  name: str
  workdir: str

  @property
  def done(self) -> bool:
    return os.path.isfile(os.path.join(self.workdir, SUMMARY))

  @property
  def started(self) -> bool:
    return os.path.isdir(os.path.join(self.workdir, "checkpoints"))

  @property
  def summary(self) -> dict[str, Any] | None:
    """The finished run's ``summary.json`` (None before it finishes)."""
    if not self.done:
      return None
    with open(os.path.join(self.workdir, SUMMARY)) as f:
      summary = json.load(f)
    for key, value in (("index", self.index), ("name", self.name), ("overrides", self.overrides)):
      summary.setdefault(key, value)  # a run the trainer finished and the sweep did not reach
    if "wall_s" not in summary and os.path.isfile(os.path.join(self.workdir, "metrics.jsonl")):
      # ... (killed between the two writes): its columns from its log
      summary.setdefault("dataset", summary.get("eval_set", ""))
      for key, value in _final_metrics(self.workdir).items():
        summary.setdefault(key, value)
    return summary


def run_name(overrides: Mapping[str, Any]) -> str:
  """A directory name that spells the overrides, each key by its last dotted part (two parts where
  the last is shared, e.g. ``weights.rl`` and ``weights_end.rl``); hashed when too long."""
  last = [k.rsplit(".", 1)[-1] for k in overrides]
  short = [k.split(".")[-2:] if last.count(k.rsplit(".", 1)[-1]) > 1 else [k.rsplit(".", 1)[-1]]
           for k in overrides]
  text = ",".join(f"{'.'.join(s)}={v}" for s, v in zip(short, overrides.values())) or "base"
  text = re.sub(r"[^\w.=,+-]", "_", text)
  if len(text) > 120:
    text = text[:100] + "-" + hashlib.sha1(text.encode()).hexdigest()[:10]
  return text


def set_field(config, key: str, value, where: str = "override") -> None:
  """Sets the dotted field ``key`` of ``config`` to ``value``, refusing (``SweepError``, a message
  that starts with ``where``) a field the config does not have, a section, or a value of the
  wrong type."""
  *parents, leaf = key.split(".")
  node = config
  for i, part in enumerate(parents):
    if part not in node or not hasattr(node[part], "keys"):
      raise SweepError(f"{where}: the config has no field {'.'.join(parents[:i + 1])!r} "
                       f"(in {key!r})")
    node = node[part]
  if leaf not in node:
    raise SweepError(f"{where}: the config has no field {key!r}")
  old = node[leaf]
  if hasattr(old, "keys"):
    raise SweepError(f"{where}: {key!r} is a section, not a field; override its fields")
  if isinstance(old, bool) != isinstance(value, bool) and old is not None:
    raise SweepError(f"{where}: {key!r} must be {type(old).__name__}, got {value!r}")
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise SweepError(f"{where}: {key!r} must be {type(old).__name__}, got {value!r} ({e})") from None


def override(config, overrides: Mapping[str, Any], where: str = "override"):
  """``config`` with the dotted-field ``overrides`` set (in place; returned), each checked as a
  sweep's are (``set_field``). The config's own checks (``config_lib.validate``) are not run."""
  for key, value in overrides.items():
    set_field(config, key, value, where)
  return config


def _expand(value, workdir: str):
  return value.replace("{workdir}", workdir) if isinstance(value, str) else value


def build_runs(sweep_spec: str, config_spec: str | None, workdir: str) -> list[Run]:
  """Every run's config, checked (fields, types, the config's own checks) before any runs.
  ``config_spec`` None: the sweep file's ``CONFIG`` (``sweep_config``)."""
  from amp_debate.train import config_lib  # pylint: disable=import-outside-toplevel
  runs = load_sweep(sweep_spec)
  path, base_arg = _split_config(config_spec or sweep_config(sweep_spec))
  module = _import(path, "--config")
  if not callable(getattr(module, "get_config", None)):
    raise SweepError(f"--config {path} has no get_config(arg) function")
  arg_keys = tuple(getattr(module, "ARG_KEYS", ()))
  built, names = [], {}
  for i, overrides in enumerate(runs):
    name = overrides.pop("name", None) or run_name(overrides)
    where = f"sweep run {i} ({name})"
    args = {k: v for k, v in overrides.items() if k in arg_keys}
    try:
      base = options.parse(base_arg, bare=True, what="config arg")
      arg = ",".join(k if v is True else f"{k}={v}"
                     for k, v in {**base, **args}.items() if v is not False)
      config = module.get_config(arg)
    except (ValueError, KeyError) as e:
      raise SweepError(f"{where}: {e}") from None
    config = copy.deepcopy(config)
    override(config, {k: _expand(v, workdir) for k, v in overrides.items() if k not in arg_keys},
             where)
    try:
      config_lib.validate(config)
    except ValueError as e:
      raise SweepError(f"{where}: {e}") from None
    if name in names:
      raise SweepError(f"{where} repeats run {names[name]}")
    names[name] = i
    built.append(Run(i, overrides, config, name, os.path.join(workdir, name)))
  return built


# ---- running -----------------------------------------------------------------------------------
def _final_metrics(workdir: str) -> dict[str, Any]:
  """The table's columns from the run's metrics: held-out accuracy by level, honesty, debate
  length at the end of training, human calls per question."""
  from amp_debate.train import metrics_io  # pylint: disable=import-outside-toplevel
  records = metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = [r for r in records if "eval/accuracy/model/mean" in r]
  train_rows = [r for r in records if "human_calls/per_question" in r]
  out: dict[str, Any] = {}
  if evals:
    out.update({k: v for k, v in evals[-1].items() if k.startswith("eval/accuracy/model/")
                or k.startswith("eval/debate/length/")})
    # Honesty judged by H (issue 27): M's own claims against each scripted liar, worst seat and
    # worst level; self-play at the sampling temperature: how often the winner's claim is true.
    from amp_debate.train.evaluation import LIARS, SEATS  # pylint: disable=import-outside-toplevel
    for liar in LIARS:
      seats = [evals[-1].get(f"eval/honesty/own/{liar}/{seat}/win/min") for seat in SEATS]
      if all(v is not None for v in seats):
        out[f"honesty/{liar}/win/worst"] = min(seats)
    if "eval/debate/winner_true/mean" in evals[-1]:
      out["selfplay/winner_true/mean"] = evals[-1]["eval/debate/winner_true/mean"]
  if train_rows:
    tail = train_rows[-max(1, len(train_rows) // 10):]
    out["human_calls_per_question"] = sum(r["human_calls/per_question"]
                                          for r in train_rows) / len(train_rows)
    if "debate/mean_length" in tail[-1]:
      out["debate_length_end"] = sum(r["debate/mean_length"] for r in tail) / len(tail)
      hist = sorted((int(k.rsplit("/", 1)[1]), k) for k in tail[-1]
                    if k.startswith("debate/length_hist/"))
      counts = [sum(r.get(k, 0.0) for r in tail) for _, k in hist]
      total = sum(counts) or 1.0
      out["debate_length_hist_end"] = [c / total for c in counts]
  return out


def _wall(workdir: str, add: float | None = None) -> float:
  path = os.path.join(workdir, "sweep_wall.json")
  total = 0.0
  if os.path.isfile(path):
    with open(path) as f:
      total = json.load(f)["seconds"]
  if add is not None:
    total += add
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
      json.dump({"seconds": total}, f)
  return total


def _write_summary(run: Run, result, wall: float, group: list[int] | None = None) -> None:
  """Merges the sweep's keys (index, name, overrides, wall_s, vmap_group, the table's columns)
  into the ``summary.json`` the trainer wrote for the finished run (``reports.write_summary``:
  mode, task, seed, steps, eval_set, eval, human_calls, debate_length, ...)."""
  path = os.path.join(run.workdir, SUMMARY)
  summary = dict(getattr(result, "summary", None) or {})
  if os.path.isfile(path):
    with open(path) as f:
      summary.update(json.load(f))
  for key, value in (("seed", run.config.seed), ("mode", run.config.mode),
                     ("task", run.config.task), ("steps", result.step)):
    summary.setdefault(key, value)
  summary.update(index=run.index, name=run.name, overrides=run.overrides, wall_s=wall,
                 dataset=summary.get("eval_set", ""), **_final_metrics(run.workdir))
  if group:
    summary["vmap_group"] = group
  with open(path + ".tmp", "w") as f:
    json.dump(summary, f, indent=2, default=str)
  os.replace(path + ".tmp", path)


def execute(run: Run) -> str:
  """Trains (or resumes) one run in this process; writes its summary when done. Returns the
  trainer's status ("done" or "preempted")."""
  from amp_debate import train  # pylint: disable=import-outside-toplevel
  start = time.time()
  try:
    result = train.run(run.config, run.workdir)
  finally:
    wall = _wall(run.workdir, time.time() - start)
  if result.status == "done":
    _write_summary(run, result, wall)
  return result.status


def execute_unit(unit: list[Run], workdir: str) -> str:
  """Trains (or resumes) a unit: one run, or a group of runs vmapped in one program
  (``amp_debate.train.run_group``; each run's wall time is the group's). Writes each finished
  run's summary. Returns the trainer's status ("done" or "preempted")."""
  del workdir  # each run keeps its own checkpoints, in its own directory
  if len(unit) == 1:
    return execute(unit[0])
  from amp_debate import train  # pylint: disable=import-outside-toplevel
  start = time.time()
  try:
    results = train.run_group([r.config for r in unit], [r.workdir for r in unit])
  finally:
    elapsed = time.time() - start
    walls = [_wall(r.workdir, elapsed) for r in unit]
  if results[0].status == "done":
    for run, result, wall in zip(unit, results, walls):
      _write_summary(run, result, wall, group=[r.index for r in unit])
  return results[0].status


def make_units(runs: list[Run], vmap: int) -> list[list[Run]]:
  """The sweep's units of work: each run alone (``vmap`` <= 1), or groups of at most ``vmap``
  runs whose configs differ only in the seed and data hyperparameters
  (``amp_debate.train.programs.group_key``), in the order of their first run. The grouping depends
  on the sweep alone (not on which runs are done), so a rerun finds the same groups."""
  if vmap <= 1:
    return [[run] for run in runs]
  from amp_debate.train import programs  # pylint: disable=import-outside-toplevel
  by_key: dict[str, list[Run]] = {}
  for run in runs:
    by_key.setdefault(programs.group_key(run.config), []).append(run)
  units = [members[i:i + vmap] for members in by_key.values()
           for i in range(0, len(members), vmap)]
  return sorted(units, key=lambda unit: unit[0].index)


def _unit_name(unit: list[Run]) -> str:
  return unit[0].name if len(unit) == 1 else (
      f"{len(unit)} runs vmapped: " + "; ".join(f"[{r.index}] {r.name}" for r in unit))


def _done(unit: list[Run]) -> bool:
  return all(r.done for r in unit)


def _child_command(argv_base: list[str], index: int) -> list[str]:
  return [sys.executable, "-m", "amp_debate.sweep", *argv_base, f"--only={index}"]


def run_parallel(units: list[list[Run]], argv_base: list[str], parallel: int) -> bool:
  """Runs the unfinished units ``parallel`` at a time, each as a child process (``--only=I``; its
  log in ``<first run's workdir>/sweep.log``). SIGTERM/SIGINT are passed on to the children (each
  saves a checkpoint). Returns whether every unit finished."""
  pending = [(i, u) for i, u in enumerate(units) if not _done(u)]
  active: list[tuple[int, list[Run], subprocess.Popen, Any]] = []
  stopping = False

  def stop(signum, frame):
    del frame
    nonlocal stopping
    stopping = True
    for _, _, proc, _ in active:
      proc.send_signal(signum)

  previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
  failed = []
  try:
    while pending or active:
      while pending and len(active) < parallel and not stopping:
        index, unit = pending.pop(0)
        os.makedirs(unit[0].workdir, exist_ok=True)
        log = open(os.path.join(unit[0].workdir, "sweep.log"), "a")  # pylint: disable=consider-using-with
        proc = subprocess.Popen(_child_command(argv_base, index), stdout=log,
                                stderr=subprocess.STDOUT)
        print(f"[{index}] started {_unit_name(unit)} (pid {proc.pid})", flush=True)
        active.append((index, unit, proc, log))
      time.sleep(0.2)
      for item in list(active):
        index, unit, proc, log = item
        if proc.poll() is not None:
          log.close()
          active.remove(item)
          state = "done" if _done(unit) else f"stopped (exit {proc.returncode})"
          print(f"[{index}] {state}: {_unit_name(unit)}", flush=True)
          if not _done(unit):
            failed.append(unit)
      if stopping and not active:
        break
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  for unit in failed:
    print(f"not finished: {_unit_name(unit)}; see {os.path.join(unit[0].workdir, 'sweep.log')}",
          flush=True)
  return not failed and not pending and not stopping


def run_all(units: list[list[Run]], workdir: str, *, parallel: int = 1,
            argv_base: list[str] | None = None) -> bool:
  """Runs every unfinished unit (resuming the started ones): in this process one after the other,
  or ``parallel`` child processes at a time (``argv_base``: the sweep's CLI arguments). Stops at
  a preemption. Returns whether every unit finished."""
  runs = [r for unit in units for r in unit]
  todo = [r for r in runs if not r.done]
  vmapped = sum(len(u) for u in units if len(u) > 1 and not _done(u))
  print(f"{len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run "
        f"({sum(r.started for r in todo)} to resume)"
        + (f"; {vmapped} of them vmapped in groups" if vmapped else "") + ".", flush=True)
  if parallel > 1:
    return run_parallel(units, argv_base or [], parallel)
  for index, unit in enumerate(units):
    if _done(unit):
      continue
    started = any(r.started for r in unit)
    print(f"[{index}] {'resuming' if started else 'running'} {_unit_name(unit)}", flush=True)
    try:
      status = execute_unit(unit, workdir)
    except ValueError as e:
      raise ValueError(f"{_unit_name(unit)}: {e}") from None
    if status != "done":
      print(f"[{index}] preempted", flush=True)
      return False
  return True


def title_of(sweep_spec: str, config_spec: str, vmap: int = 1) -> str:
  """The table's title: the sweep, its config and the command that runs it."""
  return (f"Sweep {os.path.basename(_split_config(sweep_spec)[0])} on {config_spec} "
          f"(python -m amp_debate.sweep --sweep={sweep_spec} --config={config_spec}"
          + (f" --vmap={vmap}" if vmap > 1 else "") + ")")


def run_sweep(sweep_spec: str, config_spec: str | None, workdir: str, *, train: bool = True,
              parallel: int = 1, vmap: int = 1, table: bool = True) -> list[Run]:
  """A sweep from Python (what the CLI does): builds and checks every run, trains the unfinished
  ones (``train``; ``parallel`` child processes at a time, ``vmap`` runs per vmapped group),
  writes ``<workdir>/results.md`` and the plots (``table``) and returns the runs in sweep order
  (``Run.done``, ``Run.summary``). A study checks ``all(r.done for r in runs)``: a preempted
  sweep returns early, and rerunning the same call resumes it.

  Raises:
    SweepError: a bad sweep file, config or override (nothing has run).
    ValueError: the trainer refused a run (e.g. an incompatible checkpoint in its directory).
  """
  config_spec = config_spec or sweep_config(sweep_spec)
  runs = build_runs(sweep_spec, config_spec, workdir)
  if vmap < 1:
    raise SweepError(f"vmap must be >= 1 (1: no vmapping), got {vmap}")
  if train:
    base = [f"--sweep={sweep_spec}", f"--config={config_spec}", f"--workdir={workdir}",
            f"--vmap={vmap}"]
    run_all(make_units(runs, vmap), workdir, parallel=parallel, argv_base=base)
  if table:
    aggregate(runs, workdir, title_of(sweep_spec, config_spec, vmap))
  return runs


def history(workdir: str, key: str) -> list[list[float]]:
  """``[[step, value], ...]``: the values of ``key`` a run logged (``metrics.jsonl``), in step
  order; a step logged twice (evaluated again by a resumed run) keeps its last value; [] if
  none."""
  from amp_debate.train import metrics_io  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  points = {r["step"]: r[key] for r in metrics_io.read_jsonl(path) if key in r}
  return [[step, points[step]] for step in sorted(points)]


# ---- the table and plots -----------------------------------------------------------------------
def _summaries(runs: list[Run]) -> list[dict[str, Any]]:
  rows = []
  for run in runs:
    if run.done:
      rows.append(run.summary)
    else:
      rows.append(dict(index=run.index, name=run.name, overrides=run.overrides,
                       seed=run.config.seed, status="started" if run.started else "not run"))
  return rows


def _levels(rows) -> list[str]:
  keys = {k for r in rows for k in r if re.fullmatch(r"eval/accuracy/model/d\d+", k)}
  return sorted(keys, key=lambda k: int(k.rsplit("d", 1)[1]))


def aggregate(runs: list[Run], workdir: str, title: str) -> str:
  """Writes results.md, results.csv and the plots; returns the markdown."""
  rows = _summaries(runs)
  levels = _levels(rows)
  keys = sorted({k for r in rows for k in r["overrides"] if k != "seed"})
  # The markdown table shows the overrides that vary; the CSV every one.
  varying = [k for k in keys if len({repr(r["overrides"].get(k)) for r in rows}) > 1]
  constant = {k: rows[0]["overrides"][k] for k in keys if k not in varying}
  from amp_debate.train.evaluation import LIARS  # pylint: disable=import-outside-toplevel
  liars = [liar for liar in LIARS if any(f"honesty/{liar}/win/worst" in r for r in rows)]
  selfplay = any("selfplay/winner_true/mean" in r for r in rows)
  metrics = ["seed", "dataset", *[f"accuracy {k.rsplit('/', 1)[1]}" for k in levels],
             "accuracy mean", *[f"wins vs {liar} liar" for liar in liars],
             *(["self-play winner true"] if selfplay else []),
             "debate length (end)", "human calls / question", "wall time (s)", "status"]

  def fmt(value, digits=3):
    if value is None:
      return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

  def cells(r, columns):
    return ([str(r["index"])] + [fmt(r["overrides"].get(k)) for k in columns]
            + [fmt(r.get("seed")), r.get("dataset", ""), *[fmt(r.get(k)) for k in levels],
               fmt(r.get("eval/accuracy/model/mean")),
               *[fmt(r.get(f"honesty/{liar}/win/worst")) for liar in liars],
               *([fmt(r.get("selfplay/winner_true/mean"))] if selfplay else []),
               fmt(r.get("debate_length_end"), 2),
               fmt(r.get("human_calls_per_question"), 2), fmt(r.get("wall_s"), 0),
               r.get("status", "done")])

  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["run", *keys, *metrics])
    writer.writerows(cells(r, keys) for r in rows)
  header = ["run", *varying, *metrics]
  lines = [f"# {title}", ""]
  if constant:
    lines += ["Every run also sets: " + ", ".join(f"`{k}={v}`" for k, v in constant.items()), ""]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cells(r, varying)) + " |" for r in rows]
  plots = _plot(runs, rows, levels, workdir, varying)
  lines += [""] + [f"![{name}]({name})" for name in plots]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(text)
  return text


def _label(overrides: dict, varying: list[str], seed) -> str:
  """A run's label in the plots: only the overrides that vary across the sweep (the rest are the
  same for every bar), short names, and the seed; e.g. ``distinct_claims=True,seed=1``, or
  ``base,seed=0`` for a run that sets none of them."""
  parts = [f"{k.rsplit('.', 1)[-1]}={overrides[k]}" for k in varying if k in overrides]
  return ",".join((parts or ["base"]) + [f"seed={seed}"])


def _plot(runs, rows, levels, workdir, varying=()) -> list[str]:
  try:
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  except ImportError:
    return []
  done = [r for r in rows if "status" not in r]
  written = []
  if done and levels:
    fig = Figure(figsize=(max(6, 0.5 * len(done) * len(levels) + 3), 5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(levels)
    for j, key in enumerate(levels):
      ax.bar([i + j * width for i in range(len(done))], [r.get(key, 0.0) for r in done], width,
             label=key.rsplit("/", 1)[1])
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(done))],
                  [_label(r["overrides"], varying, r.get("seed"))[:72] for r in done],
                  rotation=30, ha="right", fontsize="small")
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy (M, greedy)")
    ax.legend(title="level")
    fig.savefig(os.path.join(workdir, "accuracy.png"))
    written.append("accuracy.png")
  curves = []
  for run in runs:
    points = history(run.workdir, "eval/accuracy/model/mean")
    if points:
      curves.append((_label(run.overrides, varying, run.config.seed), points))
  if curves:
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for name, points in curves:
      ax.plot(*zip(*points), marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out accuracy, mean over levels")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="x-small")
    fig.savefig(os.path.join(workdir, "curves.png"))
    written.append("curves.png")
  return written


# ---- CLI ---------------------------------------------------------------------------------------
def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("sweep", None, "Sweep file (a .py with get_sweep()), optionally "
                      "with its argument: path.py:key=value,...", **define)
  flags.DEFINE_string("config", None, "Base config file and its arg (path.py:arg); "
                      f"default: the sweep file's CONFIG, else {DEFAULT_CONFIG}.", **define)
  flags.DEFINE_string("workdir", None, "Directory of the sweep (one subdirectory a run).",
                      **define)
  flags.DEFINE_integer("parallel", 1, "Runs at a time (> 1: one process each).", **define)
  flags.DEFINE_integer("vmap", 1, "Vmap up to N runs that share a compiled step (differ "
                       "only in seed and data hyperparameters) in one program.", **define)
  flags.DEFINE_integer("only", None, "Run only unit I (0-based: a run, or with --vmap a "
                       "group) in this process.", **define)
  flags.DEFINE_bool("count", False, "Print the number of units (runs, or groups with "
                    "--vmap) and exit.", **define)
  flags.DEFINE_bool("dry_run", False, "Check every run, list them with their state.", **define)
  flags.DEFINE_bool("table_only", False, "Only write the table of finished runs.", **define)
  flags.mark_flags_as_required(["sweep"], flag_values=values)
  return values


def main(argv):
  """absl's main: the flags are parsed into FLAGS already (stray arguments refused)."""
  del argv
  values = flags.FLAGS
  if not values["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  try:
    if not values.workdir and not values.count:
      raise SweepError("--workdir is required")
    config = values.config or sweep_config(values.sweep)
    runs = build_runs(values.sweep, config, values.workdir or ".")
    if values.vmap < 1:
      raise SweepError(f"--vmap must be >= 1 (1: no vmapping), got {values.vmap}")
    units = make_units(runs, values.vmap)
    if values.count:
      print(len(units))
      return
    what = "run" if values.vmap <= 1 else "unit (run or vmapped group)"
    if values.only is not None and not 0 <= values.only < len(units):
      raise SweepError(f"--only={values.only} is not a {what} of this sweep "
                       f"(0..{len(units) - 1})")
  except SweepError as e:
    sys.exit(f"error: {e}")
  title = title_of(values.sweep, config, values.vmap)
  if values.dry_run:
    for index, unit in enumerate(units):
      for run in unit:
        state = "done" if run.done else "resume" if run.started else "new"
        prefix = f"[{index}]" if len(unit) == 1 else f"[{index}:{run.index}]"
        print(f"{prefix} {state:6s} {run.name}")
    return
  try:
    if values.only is not None:
      status = execute_unit(units[values.only], values.workdir)
      sys.exit(0 if status == "done" else 3)
    if not values.table_only:
      base = [f"--sweep={values.sweep}", f"--config={config}",
              f"--workdir={values.workdir}", f"--vmap={values.vmap}"]
      finished = run_all(units, values.workdir, parallel=values.parallel, argv_base=base)
      if not finished:
        aggregate(runs, values.workdir, title)
        print("sweep not finished: rerun the same command to resume", flush=True)
        sys.exit(3)
  except ValueError as e:  # the trainer's user-facing errors
    sys.exit(f"error: {e}")
  print(aggregate(runs, values.workdir, title))


if __name__ == "__main__":
  cli.run(define_flags, main)
