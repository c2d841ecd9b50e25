r"""Runs the shipped ablation sweeps (experiments/sweeps/) at the quick start's size and commits
their tables and plots.

  python -m experiments.sweep_study [--sweeps=anneal,call_prob,learned_stop,target,modes] \
      [--workdir=workdir/sweep_study] [--vmap=8] [--out=experiments/results/sweeps]

Each sweep runs as ``python -m amp_debate.sweep --sweep=experiments/sweeps/<name>.py
--config=experiments/configs/default.py:task=permutation,quickstart --vmap=<vmap>
--workdir=<workdir>/<name>`` (the sweep runner's resume applies: rerunning the study resumes or
skips what is done). Afterwards ``<out>/<name>/`` receives the sweep's ``results.md``,
``results.csv``, ``accuracy.png`` and ``curves.png``, plus ``debate_length.png`` (each run's
debate-length distribution over the last tenth of training, from its ``summary.json``), and
``<out>/README.md`` indexes them with each sweep's command and wall time. The quick start (the
permutation task, n=5, two levels, 600 steps, 2 layers of width 128) is the size at which every
sweep fits in CPU minutes; ``modes.py`` names the shortest-path runlocal recipe in its docstring,
here it runs at the quick start too.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

from absl import flags

from amp_debate import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/configs/default.py:task=permutation,quickstart"
SWEEPS = ("anneal", "call_prob", "learned_stop", "target", "modes", "selfplay_leaf", "stop_rl",
          "selfplay_from_leaf", "complete_supports", "shaped")
# Sweeps whose runs start from another mode's defaults (the sweep file sets the rest).
CONFIGS = {name: "experiments/configs/default.py:task=permutation,mode=debate,quickstart"
           for name in ("selfplay_leaf", "stop_rl", "selfplay_from_leaf", "complete_supports")}
FILES = ("results.md", "results.csv", "accuracy.png", "curves.png")


def command(name: str, workdir: str, vmap: int) -> list[str]:
  return [sys.executable, "-m", "amp_debate.sweep", f"--sweep=experiments/sweeps/{name}.py",
          f"--config={CONFIGS.get(name, CONFIG)}", f"--workdir={os.path.join(workdir, name)}",
          f"--vmap={vmap}"]


def summaries(sweep_dir: str) -> list[dict]:
  """The finished runs' summary.json records, in run order."""
  rows = []
  for entry in sorted(os.listdir(sweep_dir)):
    path = os.path.join(sweep_dir, entry, "summary.json")
    if os.path.isfile(path):
      with open(path) as f:
        rows.append(json.load(f))
  return sorted(rows, key=lambda r: r["index"])


def plot_lengths(rows: list[dict], path: str) -> bool:
  """One horizontal bar per run, split by debate length: the fraction of its training debates
  (last tenth of training) that ended after 0, 1, 2, ... arguments. Returns whether anything was
  drawn."""
  rows = [r for r in rows if r.get("debate_length_hist_end")]
  if not rows:
    return False
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  lengths = max(len(r["debate_length_hist_end"]) for r in rows)
  fig = Figure(figsize=(9, 1.2 + 0.3 * len(rows)), layout="constrained")
  ax = fig.subplots()
  names = [r["name"][:60] for r in rows]
  left = [0.0] * len(rows)
  for t in range(lengths):
    widths = [(r["debate_length_hist_end"] + [0.0] * lengths)[t] for r in rows]
    if any(widths):
      ax.barh(names, widths, left=left, label=str(t), color=f"C{t % 10}")
    left = [a + b for a, b in zip(left, widths)]
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel("fraction of training debates (last tenth of training)")
  ax.tick_params(axis="y", labelsize="small")
  ax.legend(title="arguments made", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
  fig.savefig(path)
  return True


def collect(name: str, workdir: str, out: str, cmd: list[str], shown: str) -> dict:
  """Copies one sweep's table and plots to ``<out>/<name>/``; returns its index entry."""
  src = os.path.join(workdir, name)
  dst = os.path.join(out, name)
  os.makedirs(dst, exist_ok=True)
  for file in FILES:
    if os.path.isfile(os.path.join(src, file)):
      shutil.copyfile(os.path.join(src, file), os.path.join(dst, file))
  rows = summaries(src)
  extra = plot_lengths(rows, os.path.join(dst, "debate_length.png"))
  if extra:
    with open(os.path.join(dst, "results.md"), "a") as f:
      f.write("\n![debate_length](debate_length.png)\n")
  groups = {tuple(r.get("vmap_group") or [r["index"]]): r["wall_s"] for r in rows}
  return dict(name=name, runs=len(rows), groups=len(groups),
              command=" ".join(["python"] + cmd[1:]).replace(workdir, shown),
              seconds=sum(groups.values()))


def datasets(out: str, name: str) -> list[str]:
  """The eval sets named in a collected sweep's results.csv (its ``dataset`` column)."""
  path = os.path.join(out, name, "results.csv")
  if not os.path.isfile(path):
    return []
  with open(path, newline="") as f:
    return sorted({row["dataset"] for row in csv.DictReader(f) if row.get("dataset")})


def held_out(dataset: str) -> bool:
  """Eval sets from version 2.0.0 on hold their questions out of training by construction
  (issue 27); earlier ones were plain draws the runs also trained on."""
  version = dataset.rsplit(":", 1)[-1]
  return version.split(".", 1)[0].isdigit() and int(version.split(".", 1)[0]) >= 2


def write_index(entries: list[dict], out: str) -> None:
  lines = ["# Ablation sweeps at the quick start's size", "",
           "Written by `python -m experiments.sweep_study` (every sweep file in "
           "experiments/sweeps/, the quick start's task and model: "
           f"`{CONFIG}`, 600 steps, CPU, unless the sweep's command or file says otherwise). "
           "Each sweep's table gives every run's overrides, seed, "
           "dataset version, final held-out accuracy by level (M answering alone, greedy), "
           "debate length, human calls per question and wall time (for vmapped runs: the "
           "group's wall time, shared by its runs). Wall times are from a 2-core machine that other "
           "jobs shared during some sweeps (not a speed measurement: benchmarks/sweep.py measures "
           "a vmapped sweep against a sequential one in one run). Eval sets before version "
           "2.0.0 were drawn from the training distribution, and those runs trained on most of "
           "their questions (issue 27): their accuracies are marked not held out, kept until "
           "the sweep is rerun.", "",
           "| sweep | runs | units (vmapped groups or single runs) | training wall time (sum over units) | eval set | command |",
           "|---|---|---|---|---|---|"]
  for e in entries:
    wall = f"{e['seconds'] / 60:.1f} min"
    sets = datasets(out, e["name"])
    named = ", ".join(f"`{d}`" + ("" if held_out(d) else " (not held out)") for d in sets)
    lines.append(f"| [{e['name']}]({e['name']}/results.md) | {e['runs']} | {e['groups']} | "
                 f"{wall} | {named} | `{e['command']}` |")
  with open(os.path.join(out, "README.md"), "w") as f:
    f.write("\n".join(lines) + "\n")


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("sweeps", ",".join(SWEEPS), "comma-separated sweeps of experiments/sweeps/",
                      **define)
  cli.define_study_flags(values, workdir="workdir/sweep_study",
                         help={"workdir": "directory of the sweeps (one subdirectory each)"})
  flags.DEFINE_integer("vmap", 8, "the sweep runner's --vmap", **define)
  flags.DEFINE_string("out", os.path.join(ROOT, "experiments", "results", "sweeps"),
                      "where the tables, plots and index go", **define)
  flags.DEFINE_bool("collect_only", False, "Only copy the finished sweeps' tables and plots.",
                    **define)
  return values


def execute(args: flags.FlagValues) -> int:
  """The sweeps the parsed flags ``args`` ask for (the module docstring); returns the exit
  status (0, or the last failed sweep's)."""
  names = [n for n in args.sweeps.split(",") if n]
  workdir = os.path.abspath(args.workdir)
  for name in names:
    if not os.path.isfile(os.path.join(ROOT, "experiments", "sweeps", f"{name}.py")):
      cli.fail(f"no sweep experiments/sweeps/{name}.py")
  os.makedirs(args.out, exist_ok=True)
  index_path = os.path.join(args.out, "index.json")
  index = {}
  if os.path.isfile(index_path):
    with open(index_path) as f:
      index = {e["name"]: e for e in json.load(f)}
  status = 0
  for name in names:
    cmd = command(name, workdir, args.vmap)
    if not args.collect_only:
      print("$ " + " ".join(cmd[1:]), flush=True)
      rc = subprocess.call(cmd, cwd=ROOT)
      if rc != 0:
        print(f"sweep {name} ended with status {rc}", flush=True)
        status = rc
        continue
    if os.path.isdir(os.path.join(workdir, name)):
      index[name] = collect(name, workdir, args.out, cmd, args.workdir)
  entries = [index[n] for n in SWEEPS if n in index]
  with open(index_path, "w") as f:
    json.dump(entries, f, indent=2)
  write_index(entries, args.out)
  return status


def command_line(argv: list[str]) -> int:
  """The command line run in this process on flags of its own (absl's FLAGS untouched); returns
  its exit status."""
  return cli.command_line(define_flags, execute, argv, program="sweep_study")


def main(argv) -> int:
  """absl's main: the flags are parsed into FLAGS already; returns the exit status."""
  del argv
  return execute(flags.FLAGS)


if __name__ == "__main__":
  cli.run(define_flags, main)
