"""Compiled memory of the train step against batch and t_max, and the largest batch in a budget.

    python benchmarks/memory.py [--task permutation] [--mode hybrid] [--presets tiny,small,base]
        [--batches 32,64,128] [--t-max 4,8,16] [--budget-gib 16]
        [--out FILE]

For each model preset the step of ``experiments/configs/default.py:task=<task>,mode=<mode>,
size=<preset>`` (the full-size config: the task's default options, distillation of every posed
subquestion) is lowered and compiled for one device of this machine (nothing runs), and XLA's
memory analysis read: arguments + outputs + temporaries (the state is donated, so its outputs
reuse the argument buffers; both are counted, an upper bound). A least-squares line through the
batches gives bytes per game, how far the measured points are from it (linearity), and the
largest batch whose prediction fits ``--budget-gib``, rounded down to a multiple of 8. A second
table varies t_max at the smallest batch. Compiled for the CPU backend: an accelerator's
compiler fuses differently, so read the figures as the program's size, not a device's exact
peak.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

from amp_debate import cli  # noqa: E402
from amp_debate.train import step as step_lib  # noqa: E402
from experiments.configs import default  # noqa: E402

GIB = 2 ** 30


def compiled_bytes(task_name: str, mode: str, preset: str, batch: int, t_max: int | None) -> int:
  """Arguments + outputs + temporaries of the compiled step (bytes)."""
  config = default.get_config(f"task={task_name},mode={mode},size={preset}")
  config.batch_size = batch
  if t_max is not None and mode != "amplification":
    config.debate.t_max = t_max
  task, model, tx, step_config, pure = common.build_step(config)
  state = jax.eval_shape(lambda rng: step_lib.init_state(task, model, tx, step_config, rng),
                         jax.random.key(0))
  compiled = jax.jit(pure, donate_argnums=0).lower(state, jax.random.key(1)).compile()
  memory = compiled.memory_analysis()
  return int(memory.argument_size_in_bytes + memory.output_size_in_bytes
             + memory.temp_size_in_bytes)


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this script
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("task", "permutation", "the task", **define)
  flags.DEFINE_string("mode", "hybrid", "the training mode", **define)
  flags.DEFINE_string("presets", "tiny,small,base", "comma-separated model presets", **define)
  flags.DEFINE_string("batches", "32,64,128", "comma-separated batches (at least two)", **define)
  flags.DEFINE_string("t-max", "4,8,16", "comma-separated debate lengths", **define)
  flags.DEFINE_float("budget-gib", 16.0, "the memory budget (GiB)", **define)
  flags.DEFINE_string("out", "", "also write the report (markdown) here", **define)
  return values


def execute(values: flags.FlagValues) -> dict:
  """The benchmark the parsed flags ``values`` ask for (the module docstring)."""
  args = cli.namespace(values)
  batches = sorted({int(b) for b in args.batches.split(",") if b})
  lengths = sorted({int(t) for t in args.t_max.split(",") if t})
  if len(batches) < 2:
    cli.fail("--batches needs at least two values to fit a line")

  batch_rows, length_rows, summary = [], [], {}
  for preset in [p for p in args.presets.split(",") if p]:
    sizes = [compiled_bytes(args.task, args.mode, preset, b, None) for b in batches]
    slope, intercept = np.polyfit(batches, sizes, 1)
    worst = max(abs(s - (slope * b + intercept)) / s for b, s in zip(batches, sizes))
    fits = int((args.budget_gib * GIB - intercept) // slope) // 8 * 8 if slope > 0 else 0
    summary[preset] = {"fits": fits, "deviation": worst}
    batch_rows.append(
        f"| {preset} | " + " | ".join(f"{s / 2 ** 20:.0f}" for s in sizes) +
        f" | {slope / 2 ** 20:.2f} | {intercept / 2 ** 20:.0f} | {worst:.1%} | {fits} |")
    print(batch_rows[-1], file=sys.stderr, flush=True)
    if args.mode != "amplification":
      by_length = [compiled_bytes(args.task, args.mode, preset, batches[0], t) for t in lengths]
      summary[preset]["t_max_ratios"] = [s / by_length[0] for s in by_length]
      length_rows.append(f"| {preset} | " + " | ".join(
          f"{s / 2 ** 20:.0f} ({s / by_length[0]:.2f}x)" for s in by_length) + " |")
      print(length_rows[-1], file=sys.stderr, flush=True)

  device = jax.devices()[0]
  head = " | ".join(f"batch {b} MiB" for b in batches)
  report = (
      f"Compiled memory of the {args.mode} step ({args.task}, full-size config per preset), "
      f"{device.platform} backend, jax {jax.__version__}: arguments + outputs + temporaries, "
      f"one device.\n\n| preset | {head} | MiB per game (fit) | fixed MiB (fit) | "
      f"largest deviation from the line | largest batch in {args.budget_gib:g} GiB |\n"
      f"|---|{'---|' * len(batches)}---|---|---|---|\n" + "\n".join(batch_rows))
  if length_rows:
    report += (f"\n\nBy t_max at batch {batches[0]} (ratio to t_max = {lengths[0]}):\n\n"
               "| preset | " + " | ".join(f"t_max {t}" for t in lengths) + " |\n|---|" +
               "---|" * len(lengths) + "\n" + "\n".join(length_rows))
  report += (f"\n\nCommand: python benchmarks/memory.py --task {args.task} --mode {args.mode} "
             f"--presets {args.presets} --batches {args.batches} --t-max {args.t_max} "
             f"--budget-gib {args.budget_gib:g}\n")
  common.emit(report, args.out)
  return {"presets": summary, "lengths": lengths, "report": report}


def command_line(argv: list[str]) -> dict:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="memory.py")


def main(argv) -> None:
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)

if __name__ == "__main__":
  cli.run(define_flags, main)
