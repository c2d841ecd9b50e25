r"""Every task at its runlocal size: supervised, amplification-only and hybrid, by level.

  python -m experiments.task_suite --workdir=workdir/task_suite              # every run, the table
  python -m experiments.task_suite --workdir=workdir/task_suite --tasks=wildcard --modes=supervised
  python -m experiments.task_suite --workdir=workdir/task_suite --table_only # finished runs only
  python -m experiments.task_suite --from_results    # the tables again from task_suite.json

The runs are the sweep ``experiments/sweeps/task_suite.py`` (``--tasks``, ``--modes`` and
``--seed`` choose its runs), run by ``amp_debate.sweep`` in ``--workdir``: each
``experiments/configs/default.py:task=<task>,mode=<mode>,runlocal`` (the task's runlocal options
and model recipe, ``default.RUNLOCAL``) in its own directory, finished runs skipped, a killed
suite resumed by rerunning the command. The table holds every finished run of the suite in
``--workdir`` and, for the task, mode and seed it lacks, the run recorded in the results file
(``--results``.json) if that trained the recipe the config gives today (task options, batch,
layers, width, steps); so a suite run on some tasks rewrites the results file without dropping
the others. Per task and level the table gives M's held-out greedy accuracy and Amp(H, M)'s for
each mode, H alone, the first evaluated step at which M is >= 95% at every level, human calls per
training question and wall time. Written to ``experiments/results/task_suite.md``, ``.json`` (one
record per run, ``record``) and ``.png`` (M's worst level against step; matplotlib).
"""

from __future__ import annotations

import json
import math
import os

from absl import flags

from amp_debate import cli, sweep, tasks
from experiments.sweeps import task_suite as plan

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "task_suite")
SWEEP = "experiments/sweeps/task_suite.py"
MODES = plan.MODES
THRESHOLD = 0.95


def first_reached(curve: list[list[float]], seconds: list[list[float]],
                  threshold: float) -> tuple[int | None, float | None]:
  """The first evaluated step of ``curve`` ([[step, M's worst level], ...]) at or above
  ``threshold``, and its training seconds (``seconds``: [[step, perf/train_seconds], ...])."""
  reached = next((step for step, value in curve if value >= threshold), None)
  return reached, dict((s, v) for s, v in seconds).get(reached) if reached is not None else None


def record(run: sweep.Run) -> dict:
  """A finished run's record: its recipe (task options, layers, width, batch, steps), its summary's
  final evaluation, eval set, human calls and wall time, and from its logged evaluations the
  curve of M's worst level and the first step at 95%."""
  s, config = run.summary, run.config
  curve = sweep.history(run.workdir, "eval/accuracy/model/min")
  reached, reached_s = first_reached(curve, sweep.history(run.workdir, "perf/train_seconds"),
                                     THRESHOLD)
  return {"task": s["task"], "mode": s["mode"], "seed": s["seed"], "steps": s["steps"],
          "options": dict(s["task_options"]), "num_layers": config.model.num_layers,
          "d_model": config.model.d_model, "batch_size": config.batch_size,
          "wall_s": s["wall_s"], "eval": s["eval"], "reached_step": reached,
          "reached_train_s": reached_s, "curve": curve, "eval_set": s["eval_set"],
          "human_calls_per_question": s["human_calls"].get("per_question")}


def recorded_summaries(path: str) -> dict[tuple[str, str, int], dict]:
  """The records in a results file (``{}`` if there is none), keyed by (task, mode, seed)."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {(s["task"], s["mode"], s["seed"]): s for s in json.load(f)}


def same_recipe(summary: dict, config) -> bool:
  """Whether a recorded run trained the recipe ``config`` gives (options, batch, depth, width,
  steps)."""
  return (summary.get("options") == dict(config.task_options) and
          summary.get("batch_size", 64) == config.batch_size and  # recorded from issue 12 on
          summary.get("num_layers") == config.model.num_layers and
          summary.get("d_model") == config.model.d_model and
          summary.get("steps") == config.num_steps)


def collect(workdir: str, seed: int, recorded: dict) -> dict[str, list[dict]]:
  """Every task's records, modes in ``MODES`` order: the suite's finished runs in ``workdir``,
  else the ``recorded`` run where it holds today's recipe."""
  runs = {(r.config.task, r.config.mode): r
          for r in sweep.build_runs(f"{SWEEP}:seed={seed}", None, workdir)}
  by_task = {}
  for name in tasks.names():
    found = []
    for mode in MODES:
      run = runs[(name, mode)]
      if run.done:
        found.append(record(run))
      elif (s := recorded.get((name, mode, seed))) and same_recipe(s, run.config):
        found.append(s)
    if found:
      by_task[name] = found
  return by_task


def _cell(value) -> str:
  return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else (
      f"{value:.3f}" if isinstance(value, float) else str(value))


def task_table(summaries: list[dict]) -> str:
  """Markdown for one task's runs: rows M and Amp(H, M) per mode, then H alone."""
  levels = sorted({int(k.rsplit("/d", 1)[1]) for s in summaries for k in s["eval"]
                   if k.startswith("eval/accuracy/model/d")})
  header = (["run", "answers"] + [f"d{d}" for d in levels] +
            ["mean", f"first step ≥{THRESHOLD:.0%} at every level", "human calls / question",
             "steps", "wall time (s)"])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  by_mode = {s["mode"]: s for s in summaries}
  for mode in MODES:
    s = by_mode.get(mode)
    if s is None:
      continue
    e = s["eval"]
    for key, label in (("model", "M"), ("amp_h_m", "Amp(H, M)")):
      row = [mode, label] + [_cell(e.get(f"eval/accuracy/{key}/d{d}")) for d in levels]
      row.append(_cell(e.get(f"eval/accuracy/{key}/mean")))
      if key == "model":
        step, seconds = s.get("reached_step"), s.get("reached_train_s")
        reached = "not reached" if step is None else (
            f"{step} ({seconds:.0f} s)" if seconds is not None else str(step))
        row += [reached, _cell(s.get("human_calls_per_question")), str(s["steps"]),
                f"{s['wall_s']:.0f}"]
      else:
        row += [""] * 4
      lines.append("| " + " | ".join(row) + " |")
  if summaries:
    e = summaries[0]["eval"]
    row = ["–", "H alone"] + [_cell(e.get(f"eval/accuracy/h_alone/d{d}")) for d in levels]
    row += [_cell(e.get("eval/accuracy/h_alone/mean"))] + [""] * 4
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def eval_sets_line(summaries: list[dict]) -> str:
  """Which eval set each run evaluated on, e.g. ``Eval set X.`` or ``Eval sets X (supervised)
  and Y (hybrid).`` (a version bump that left a task's questions unchanged leaves earlier runs
  on the older name)."""
  modes_by_set: dict[str, list[str]] = {}
  for s in summaries:
    modes_by_set.setdefault(s.get("eval_set", "?"), []).append(s["mode"])
  if len(modes_by_set) == 1:
    return f"Eval set {next(iter(modes_by_set))}."
  return "Eval sets " + " and ".join(
      f"{name} ({', '.join(modes)})" for name, modes in sorted(modes_by_set.items())) + "."


def overview(by_task: dict[str, list[dict]]) -> str:
  """One row per task: its runlocal size and each mode's min-over-levels accuracy."""
  header = ["task", "runlocal options", "layers × width", "levels"] + [
      f"{m}: worst level" for m in MODES] + ["supervised wall time (s)"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for task, summaries in by_task.items():
    by_mode = {s["mode"]: s for s in summaries}
    any_run = summaries[0]
    levels = sorted(int(k.rsplit("/d", 1)[1]) for k in any_run["eval"]
                    if k.startswith("eval/accuracy/model/d"))
    options = ", ".join(f"{k}={v}" for k, v in sorted(any_run["options"].items()))
    row = [task, options, f"{any_run['num_layers']} × {any_run.get('d_model', '?')}",
           str(len(levels))]
    row += [_cell(by_mode[m]["eval"].get("eval/accuracy/model/min")) if m in by_mode else "–"
            for m in MODES]
    row.append(f"{by_mode['supervised']['wall_s']:.0f}" if "supervised" in by_mode else "–")
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def plot(by_task: dict[str, list[dict]], out_png: str) -> str | None:
  """A PNG, one panel per task: M's worst-level held-out accuracy against step for each mode with
  a recorded curve, and the 95% line. None if matplotlib is missing (an optional dependency)."""
  try:
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  names = list(by_task)
  cols = min(len(names), 3) or 1
  rows = max(-(-len(names) // cols), 1)
  fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
  for ax, name in zip(axes, names):
    for s in by_task[name]:
      if s.get("curve"):
        steps, accuracy = zip(*s["curve"])
        ax.plot(steps, accuracy, label=s["mode"])
      else:  # a run recorded before summaries kept their curve
        ax.plot([], [], label=f"{s['mode']} (no curve recorded)")
    ax.set_xlim(left=0, right=max([s["steps"] for s in by_task[name]] + [1]))
    ax.axhline(THRESHOLD, color="grey", linestyle=":", linewidth=1)
    ax.set_ylim(0, 1.02)
    ax.set_title(name)
    ax.set_xlabel("step")
    ax.set_ylabel("M, worst level")
    ax.legend(fontsize="small", loc="lower right")
  for ax in axes[len(names):]:
    ax.set_visible(False)
  os.makedirs(os.path.dirname(out_png) or ".", exist_ok=True)
  fig.savefig(out_png)
  return out_png


def markdown(by_task: dict[str, list[dict]], results: str, png: str | None) -> str:
  """``task_suite.md`` from the records (the command line from their seed and modes)."""
  records = [s for v in by_task.values() for s in v]
  sections = [f"## Overview (M's held-out accuracy at its worst level)\n\n{overview(by_task)}"]
  if png:
    sections.append(f"![M's worst level against step, by task and mode]"
                    f"({os.path.basename(png)})")
  for name, summaries in by_task.items():
    sections.append(f"## {name}\n\n{eval_sets_line(summaries)}\n\n{task_table(summaries)}")
  seed = records[0]["seed"] if records else 0
  modes = [m for m in MODES if any(s["mode"] == m for s in records)]
  command = f"python -m experiments.task_suite --seed={seed}"
  if modes != list(MODES):
    command += f" --modes={','.join(modes)}"
  if os.path.abspath(results) != RESULTS:
    command += f" --results={os.path.relpath(results)}"
  notes = (f"Regenerate: `{command}` (config "
           "`experiments/configs/default.py:task=<task>,mode=<mode>,runlocal`: each task's "
           "runlocal options and model recipe, `default.RUNLOCAL`). M greedy on the task's eval "
           "split (500 questions per level); Amp(H, M) = H decomposing once, M answering the "
           "subquestions; H alone = H's direct answer; first step ≥95% from the evaluations "
           "every `eval.every` steps, with its training seconds (after the first step's "
           "compile, evaluations excluded); human calls per training question averaged over "
           "logged steps; wall time includes compiles and evaluations. One seed. Eval sets "
           "2.0.0 hold only questions the training sampler never draws (issue 27; versions 1.x "
           "did not, `amp_debate.data.eval_sets` release notes).")
  text = "\n\n".join(sections)
  return f"# Every task at its runlocal size\n\n{text}\n\n{notes}\n"


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  cli.define_study_flags(
      values, workdir="workdir/task_suite", results=RESULTS, parallel=True, table_only=True,
      from_results=True,
      help={"table_only": "run nothing; tabulate the finished runs (in --workdir or recorded)",
            "from_results": "run nothing, read no workdir: the tables again from the records in "
                            "--results.json, as they are"})
  flags.DEFINE_string("tasks", ",".join(tasks.names()),
                      "comma-separated task names (default: every registered task)", **define)
  flags.DEFINE_string("modes", ",".join(MODES), "comma-separated modes", **define)
  flags.DEFINE_integer("seed", 0, "seed of every run", **define)
  return values


def execute(args: flags.FlagValues) -> dict[str, list[dict]]:
  """The suite the parsed flags ``args`` ask for (the module docstring); returns the records by
  task."""
  spec = (f"{SWEEP}:tasks={args.tasks.replace(',', '+')},modes={args.modes.replace(',', '+')},"
          f"seed={args.seed}")
  try:
    plan.parse(spec.partition(":")[2])
  except ValueError as e:
    cli.fail(f"--tasks/--modes: {e}")
  if args.from_results:
    by_task: dict[str, list[dict]] = {}
    for s in json.load(open(args.results + ".json")):
      by_task.setdefault(s["task"], []).append(s)
  else:
    if not args.table_only:
      try:
        runs = sweep.run_sweep(spec, None, args.workdir, parallel=args.parallel)
      except ValueError as e:  # a bad sweep, or a run the trainer refused
        cli.fail(str(e))
      if not all(r.done for r in runs):
        raise SystemExit("task suite not finished: rerun the same command to resume")
    # Every finished run of every task and mode (the requested ones just ran), so a suite run on
    # some tasks rewrites the results file without dropping the others.
    by_task = collect(args.workdir, args.seed, recorded_summaries(args.results + ".json"))
  png = plot(by_task, args.results + ".png")
  text = markdown(by_task, args.results, png)
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  with open(args.results + ".md", "w") as f:
    f.write(text)
  if not args.from_results:
    with open(args.results + ".json", "w") as f:
      json.dump([s for v in by_task.values() for s in v], f, indent=2)
  print(f"\n{text}\nwrote {args.results}.md" + ("" if args.from_results else " and .json") +
        (f" and {png}" if png else " (no plot: matplotlib is not installed)"))
  return by_task


def command_line(argv: list[str]) -> dict[str, list[dict]]:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="task_suite")


def main(argv):
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)


if __name__ == "__main__":
  cli.run(define_flags, main)
