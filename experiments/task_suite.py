r"""Every task at its runlocal size: supervised, amplification-only and hybrid, by level.

  python -m experiments.task_suite --workdir=workdir/task_suite              # every run, the table
  python -m experiments.task_suite --workdir=workdir/task_suite --tasks=wildcard --modes=supervised
  python -m experiments.task_suite --workdir=workdir/task_suite --table_only # finished runs only

Each run is ``python -m amp_debate.main``'s training of
``experiments/configs/default.py:task=<task>,mode=<mode>,runlocal`` (the task's runlocal options and
model recipe, ``default.RUNLOCAL``), one seed (``--seed``), in ``<workdir>/<task>/<mode>_s<seed>``;
a run whose ``summary.json`` exists is not run again, and a killed suite resumes its unfinished
run (the trainer's resume). A run recorded in the results file (``--results``.json) with the
recipe the config gives today (task options, batch, layers, width, steps) is not run again
either, so the table survives a deleted workdir; ``--fresh`` ignores the results file. Per task
and level the table gives M's held-out greedy accuracy and Amp(H, M)'s for each mode, H alone, the
first evaluated step at which M is >= 95% at every level, human calls per training question and
wall time. Written to ``experiments/results/task_suite.md``, ``.json`` and ``.png`` (M's worst
level against step; matplotlib) (``--results``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

from amp_debate import tasks, train
from experiments import ablation, supervised_reference
from experiments.configs import default

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "task_suite")
MODES = ("supervised", "amplification", "hybrid")
THRESHOLD = 0.95


def _first_reached(workdir: str, threshold: float) -> tuple[int | None, float | None]:
  """The first evaluated step with M >= threshold at every level, and its training seconds."""
  seconds, reached = {}, None
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "perf/train_seconds" in row:
        seconds[row["step"]] = row["perf/train_seconds"]
      if reached is None and row.get("eval/accuracy/model/min", -1.0) >= threshold:
        reached = row["step"]
  return reached, seconds.get(reached) if reached is not None else None


def _curve(workdir: str) -> list[list[float]]:
  """[[step, M's held-out accuracy at its worst level], ...] from a run's evaluations (a step
  evaluated twice, by a resumed run, keeps its last value)."""
  points = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "eval/accuracy/model/min" in row:
        points[row["step"]] = row["eval/accuracy/model/min"]
  return [[step, points[step]] for step in sorted(points)]


def _config(task: str, mode: str, seed: int):
  config = default.get_config(f"task={task},mode={mode},runlocal")
  config.seed = seed
  return config


def recorded_summaries(path: str) -> dict[tuple[str, str, int], dict]:
  """The summaries in a results file (``{}`` if there is none), keyed by (task, mode, seed)."""
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


def stored_summary(task: str, mode: str, seed: int, workdir: str,
                   recorded: dict | None = None) -> dict | None:
  """A finished run's summary: from the run's directory, or else from ``recorded`` where that
  holds today's recipe; None if the run has yet to be trained."""
  run_dir = os.path.join(workdir, task, f"{mode}_s{seed}")
  summary_path = os.path.join(run_dir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    if "d_model" not in summary:  # summaries written before the width column
      with open(os.path.join(run_dir, "config.json")) as f:
        summary["d_model"] = json.load(f)["model"]["d_model"]
    if "curve" not in summary and os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
      summary["curve"] = _curve(run_dir)  # summaries written before the plot
    return summary
  previous = (recorded or {}).get((task, mode, seed))
  if previous is not None and same_recipe(previous, _config(task, mode, seed)):
    return previous
  return None


def run_one(task: str, mode: str, seed: int, workdir: str,
            recorded: dict | None = None) -> dict:
  """Trains one run (or returns its stored summary, ``stored_summary``) and returns its
  summary."""
  summary = stored_summary(task, mode, seed, workdir, recorded)
  if summary is not None:
    return summary
  run_dir = os.path.join(workdir, task, f"{mode}_s{seed}")
  config = _config(task, mode, seed)
  start = time.time()
  result = train.run(config, run_dir)
  if result.status != "done":
    raise SystemExit(f"{run_dir}: {result.status}; rerun to resume")
  reached, reached_s = _first_reached(run_dir, THRESHOLD)
  summary = {"task": task, "mode": mode, "seed": seed, "steps": result.step,
             "options": dict(config.task_options), "num_layers": config.model.num_layers,
             "d_model": config.model.d_model, "batch_size": config.batch_size,
             "wall_s": time.time() - start, "eval": result.eval,
             "reached_step": reached, "reached_train_s": reached_s, "curve": _curve(run_dir),
             "eval_set": supervised_reference._eval_name(run_dir)}
  if mode != "supervised":
    summary.update(ablation._training_means(run_dir))
  with open(os.path.join(run_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="workdir/task_suite")
  parser.add_argument("--tasks", default=",".join(tasks.names()),
                      help="comma-separated task names (default: every registered task)")
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--results", default=RESULTS, help="output path without extension")
  parser.add_argument("--table_only", action="store_true",
                      help="run nothing; tabulate the finished runs (in --workdir or recorded)")
  parser.add_argument("--fresh", action="store_true",
                      help="ignore the runs recorded in the results file (rerun them)")
  args = parser.parse_args()
  names = [t for t in args.tasks.split(",") if t]
  modes = [m for m in args.modes.split(",") if m]
  for name in names:
    if name not in tasks.names():
      parser.error(f"--tasks: unknown task {name!r} (known: {', '.join(tasks.names())})")
  for mode in modes:
    if mode not in MODES:
      parser.error(f"--modes: {mode!r} is not one of {', '.join(MODES)}")
  recorded = {} if args.fresh else recorded_summaries(args.results + ".json")
  if not args.table_only:
    # Mode-major: every task's supervised run first (the upper bound each column is read against).
    for mode in modes:
      for name in names:
        done = stored_summary(name, mode, args.seed, args.workdir, recorded) is not None
        print(f"== {name} {mode} seed={args.seed}" +
              (": finished (in --workdir or the results file), not rerun" if done else ""),
              flush=True)
        run_one(name, mode, args.seed, args.workdir, recorded)
  # The table holds every finished run of every task and mode (the requested ones just ran), so
  # a suite run on some tasks rewrites the results file without dropping the others.
  by_task = {name: [s for mode in MODES
                    if (s := stored_summary(name, mode, args.seed, args.workdir, recorded))]
             for name in tasks.names()}
  by_task = {k: v for k, v in by_task.items() if v}
  png = plot(by_task, args.results + ".png")
  sections = [f"## Overview (M's held-out accuracy at its worst level)\n\n{overview(by_task)}"]
  if png:
    sections.append(f"![M's worst level against step, by task and mode]"
                    f"({os.path.basename(png)})")
  for name, summaries in by_task.items():
    sections.append(f"## {name}\n\n{eval_sets_line(summaries)}\n\n{task_table(summaries)}")
  command = f"python -m experiments.task_suite --seed={args.seed}"
  if args.modes != ",".join(MODES):
    command += f" --modes={args.modes}"
  if os.path.abspath(args.results) != RESULTS:
    command += f" --results={os.path.relpath(args.results)}"
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
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  with open(args.results + ".md", "w") as f:
    f.write(f"# Every task at its runlocal size\n\n{text}\n\n{notes}\n")
  with open(args.results + ".json", "w") as f:
    json.dump([s for v in by_task.values() for s in v], f, indent=2)
  print(f"\n{text}\n\n{notes}\nwrote {args.results}.md and .json" +
        (f" and {png}" if png else " (no plot: matplotlib is not installed)"))


if __name__ == "__main__":
  main()
