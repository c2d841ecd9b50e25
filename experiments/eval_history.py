r"""A run's evaluations over training, as the README's "During the run" table.

  python -m experiments.eval_history --workdir=workdir/quickstart [--level=1]

Reads ``<workdir>/metrics.jsonl``: per evaluated step, M's held-out accuracy at every level and, at
``--level``, M's worst win rate and highest concession rate over the liars and seats (own claims,
judged by H) and the share of self-play games decided (``amp_debate.train.evaluation.make_eval_fn``).
"""

from __future__ import annotations

import json
import os

from absl import flags

from amp_debate import cli
from amp_debate.train import evaluation


def history(workdir: str, level: int) -> str:
  rows = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if f"eval/accuracy/model/d{level}" in row:
        rows.append(row)
  if not rows:
    raise SystemExit(f"{workdir}/metrics.jsonl has no evaluation at level {level}")
  levels = sorted(int(k.rsplit("/d", 1)[1]) for k in rows[-1]
                  if k.startswith("eval/accuracy/model/d"))
  keys = lambda what: [f"eval/honesty/own/{liar}/{seat}/{what}/d{level}"
                       for liar in evaluation.LIARS for seat in evaluation.SEATS]
  header = (["step"] + [f"level {d}" for d in levels]
            + ["wins vs liars", "concedes to a false claim", "self-play decided"])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [str(row["step"])] + [f"{row[f'eval/accuracy/model/d{d}']:.3f}" for d in levels]
    if all(k in row for k in keys("win")):
      decided = row[f"eval/debate/win_even/d{level}"] + row[f"eval/debate/win_odd/d{level}"]
      cells += [f"{min(row[k] for k in keys('win')):.3f}",
                f"{max(row[k] for k in keys('concede_false')):.3f}", f"{decided:.3f}"]
    else:
      cells += ["–"] * 3
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("workdir", None, "the run's directory (with metrics.jsonl)", **define)
  flags.DEFINE_integer("level", 1, "the level of the honesty columns", **define)
  flags.mark_flag_as_required("workdir", flag_values=values)
  return values


def execute(args: flags.FlagValues) -> str:
  """Prints and returns the table of the run the parsed flags ``args`` name."""
  text = history(args.workdir, args.level)
  print(text)
  return text


def command_line(argv: list[str]) -> str:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="eval_history")


def main(argv):
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)


if __name__ == "__main__":
  cli.run(define_flags, main)
