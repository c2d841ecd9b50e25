r"""Regenerates ``experiments/results/supervised_reference.json``: the supervised upper bound.

  python -m experiments.supervised_reference --arg=task=permutation,quickstart --workdir=workdir/supervised

Trains ``mode=supervised`` with the same config arg (same task, model, batch, steps and eval split
as the corresponding hybrid run) and stores M's held-out accuracy by difficulty under the eval set's
name. ``python -m amp_debate.main`` passes this file to the trainer (``--reference``; by default when
run from the repository root), which prints it as the "supervised (reference)" column of its final
table whenever the run evaluates on that eval set.
"""

from __future__ import annotations

import json
import os

from absl import flags

from amp_debate import cli, train
from experiments.configs import default

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "supervised_reference.json")


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("arg", "task=permutation,quickstart",
                      "the config arg of experiments/configs/default.py (mode=supervised added)",
                      **define)
  cli.define_study_flags(values, workdir="workdir/supervised_reference",
                         help={"workdir": "the supervised run's directory"})
  return values


def execute(args: flags.FlagValues) -> dict:
  """Trains (or resumes) the run the parsed flags ``args`` ask for and stores its accuracies;
  returns the stored entry."""
  config = default.get_config(args.arg + ",mode=supervised")
  result = train.run(config, args.workdir)
  levels = sorted(int(k.rsplit("/d", 1)[1]) for k in result.eval
                  if k.startswith("eval/accuracy/model/d"))
  if result.status != "done":
    raise SystemExit(f"{args.workdir}: {result.status}; rerun to resume")
  with open(os.path.join(args.workdir, "summary.json")) as f:
    name = json.load(f)["eval_set"]  # the eval set's full name, as the trainer cites it
  entry = {str(d): result.eval[f"eval/accuracy/model/d{d}"] for d in levels}
  entry["mean"] = result.eval["eval/accuracy/model/mean"]
  entry["source"] = (f"python -m experiments.supervised_reference --arg={args.arg} "
                     f"({config.num_steps} steps, seed {config.seed})")
  stored = json.load(open(RESULTS)) if os.path.exists(RESULTS) else {}
  stored[name] = entry
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, "w") as f:
    json.dump(stored, f, indent=2, sort_keys=True)
  print(f"stored under {name!r} in {RESULTS}: {entry}")
  return entry


def command_line(argv: list[str]) -> dict:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="supervised_reference")


def main(argv):
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)


if __name__ == "__main__":
  cli.run(define_flags, main)
