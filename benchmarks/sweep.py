"""A whole sweep vmapped against the same sweep run one run after another: wall time, end to end.

    python benchmarks/sweep.py [--runs 4] [--steps 100] [--mode hybrid] [--out FILE]

The sweep is ``--runs`` seeds of the quick start (``experiments/configs/default.py:
task=permutation,mode=<mode>,quickstart`` with ``num_steps=<steps>``), run twice by the sweep
runner in fresh workdirs: ``--vmap=1`` (each run its own process-level trainer: its own compile,
evaluations and checkpoints, one after another) and ``--vmap=<runs>`` (one vmapped group:
``amp_debate.train.run_group``). Each is timed from the command's start to its end (process start,
compiles, training, evaluations, checkpoints, the table), so the ratio is what a user waits for.
Also reported: whether both give each run the same final held-out accuracy (they should: a
vmapped run equals the run trained alone, tests/test_trainer.py). ``benchmarks/seeds.py`` measures
the step alone; here compiles and evaluations, paid once per group instead of once per run, count
too.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

from absl import flags

from amp_debate import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = "python benchmarks/sweep.py"
SWEEP = """def get_sweep():
  return [{{"seed": s, "num_steps": {steps}}} for s in range({runs})]
"""


def run_sweep(sweep_file: str, workdir: str, mode: str, vmap: int) -> float:
  """Runs the sweep in a subprocess; returns its wall seconds."""
  cmd = [sys.executable, "-m", "amp_debate.sweep", f"--sweep={sweep_file}",
         f"--config=experiments/configs/default.py:task=permutation,mode={mode},quickstart",
         f"--workdir={workdir}", f"--vmap={vmap}"]
  start = time.perf_counter()
  subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def accuracies(workdir: str, runs: int) -> list[float]:
  out = []
  for entry in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, entry, "summary.json")
    if os.path.isfile(path):
      with open(path) as f:
        row = json.load(f)
      out.append((row["index"], row.get("eval/accuracy/model/mean")))
  assert len(out) == runs, f"{len(out)} of {runs} runs finished in {workdir}"
  return [a for _, a in sorted(out)]


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this script
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_integer("runs", 4, "seeds in the sweep", **define)
  flags.DEFINE_integer("steps", 100, "num_steps of each run", **define)
  flags.DEFINE_string("mode", "hybrid", "the training mode", **define)
  flags.DEFINE_string("out", None, "also write the report (markdown) here", **define)
  return values


def execute(values: flags.FlagValues, command: str) -> str:
  """The benchmark the parsed flags ``values`` ask for (the module docstring); ``command`` is the
  command line the report names."""
  args = cli.namespace(values)
  with tempfile.TemporaryDirectory() as tmp:
    sweep_file = os.path.join(tmp, "seeds.py")
    with open(sweep_file, "w") as f:
      f.write(SWEEP.format(runs=args.runs, steps=args.steps))
    seconds, accs = {}, {}
    for vmap in (1, args.runs):
      workdir = os.path.join(tmp, f"vmap{vmap}")
      seconds[vmap] = run_sweep(sweep_file, workdir, args.mode, vmap)
      accs[vmap] = accuracies(workdir, args.runs)
  import jax  # pylint: disable=import-outside-toplevel
  same = accs[1] == accs[args.runs]
  report = "\n".join([
      f"## sweep: {args.runs} seeds vmapped in one group vs one after another",
      "",
      f"Command: `{command.strip()}` on {platform.machine()} ({os.cpu_count()} cores, "
      f"{jax.devices()[0].platform}), jax {jax.__version__}. The sweep: {args.runs} seeds of "
      f"`experiments/configs/default.py:task=permutation,mode={args.mode},quickstart` with "
      f"num_steps={args.steps}, each timed end to end (processes, compiles, training, "
      "evaluations, checkpoints, the table).",
      "",
      "| sweep runner | wall time | per run | vs vmapped |",
      "|---|---|---|---|",
      f"| `--vmap=1` (one after another) | {seconds[1]:.0f} s | {seconds[1] / args.runs:.0f} s | "
      f"{seconds[1] / seconds[args.runs]:.2f}x |",
      f"| `--vmap={args.runs}` (one vmapped group) | {seconds[args.runs]:.0f} s | "
      f"{seconds[args.runs] / args.runs:.0f} s | 1.00x |",
      "",
      f"Final held-out accuracy (mean over levels) per run, one after another: "
      f"{', '.join(f'{a:.4f}' for a in accs[1])}; vmapped: "
      f"{', '.join(f'{a:.4f}' for a in accs[args.runs])} "
      f"({'identical' if same else 'DIFFERENT'}).",
      ""])
  print(report)
  if args.out:
    with open(args.out, "w") as f:
      f.write(report)
  return report


# command_line(argv) in this process, and absl's main.
command_line, main = cli.recorded(define_flags, execute, PROGRAM)

if __name__ == "__main__":
  cli.run(define_flags, main)
