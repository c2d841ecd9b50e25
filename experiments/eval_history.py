r"""A run's evaluations over training, as the README's "During the run" table.

  python -m experiments.eval_history --workdir=workdir/quickstart [--level=1]

Reads ``<workdir>/metrics.jsonl``: per evaluated step, M's held-out accuracy at every level and, at
``--level``, M's worst win rate and highest concession rate over the liars and seats (own claims,
judged by H) and the share of self-play games decided (``amp_debate.train.evaluation.make_eval_fn``).
"""

from __future__ import annotations

import argparse
import json
import os

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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--level", type=int, default=1, help="the level of the honesty columns")
  args = parser.parse_args()
  print(history(args.workdir, args.level))


if __name__ == "__main__":
  main()
