r"""The trained liar against M that can and cannot be beaten (issue 27, item 2d).

  python -m experiments.trained_liar_study --workdir=workdir/trained_liar

For each M below: trains it if its run is not finished (``amp_debate.train.run``; a finished run
only re-evaluates), then fine-tunes a copy of M to win the false side against frozen M
(``amp_debate.tools.trained_liar.study``: REINFORCE on the liar's supports, H at the leaves; a
control arm plays the same games at learning rate 0) and evaluates M against the greedy liar before
and after on the run's eval split (questions the run never drew). A run whose
``trained_liar.json`` exists with the same liar options is not redone. Writes
``experiments/results/trained_liar.md`` and ``.json``.

Ms:
  quickstart_amplification  the quick start in amplification mode, 600 steps (two levels: a descent
                            reaches a leaf one step below the root, so only the root support matters)
  runlocal_hybrid_400       permutation runlocal (three levels) in hybrid mode stopped at 400 steps,
                            where M is still weak at level 2
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from absl import flags

from amp_debate import cli, train
from amp_debate.tools import trained_liar
from experiments.configs import default

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "trained_liar")

MS = (  # (name, config arg, num_steps)
    ("quickstart_amplification", "task=permutation,mode=amplification,quickstart", 600),
    ("runlocal_hybrid_400", "task=permutation,mode=hybrid,runlocal", 400),
)


def ensure_trained(name: str, arg: str, num_steps: int, workdir: str) -> str:
  run_dir = os.path.join(workdir, name)
  config = default.get_config(arg)
  config.num_steps = num_steps
  if not os.path.exists(os.path.join(run_dir, "results.md")):
    result = train.run(config, run_dir)
    if result.status != "done":
      raise SystemExit(f"{run_dir}: {result.status}; rerun to resume")
  return run_dir


def liar_record(run_dir: str, options: trained_liar.LiarTraining, seed: int) -> dict:
  path = os.path.join(run_dir, "trained_liar.json")
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
    if record.get("options") == dataclasses.asdict(options) and record.get("seed") == seed:
      return record
  run = trained_liar.load_run(run_dir)
  record = trained_liar.study(run, options, seed, log=lambda line: print(line, flush=True))
  with open(path, "w") as f:
    json.dump(record, f, indent=1)
  return record


def scripted_losses(run_dir: str) -> dict[str, float]:
  """Per level, M's worst-seat loss rate to the scripted consistent liar in the run's last
  evaluation (``evaluation.make_eval_fn``, own claims, same eval split)."""
  last = None
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if any(k.startswith("eval/honesty/own/consistent/") for k in row):
        last = row
  if last is None:
    return {}
  prefix = "eval/honesty/own/consistent/even/loss/d"
  levels = {k[len(prefix):] for k in last if k.startswith(prefix) and k[len(prefix):].isdigit()}
  return {level: max(last[f"eval/honesty/own/consistent/{seat}/loss/d{level}"]
                     for seat in ("even", "odd")) for level in levels}


def table(records: dict[str, dict]) -> str:
  worst = lambda v, what, pick: pick(v[f"even/{what}"], v[f"odd/{what}"])
  lines = ["| M | level | M wins: before / after | M loses: before / after | M concedes: before / "
           "after | liar's training win rate, first / last 10 steps: trained | control | M loses "
           "to the scripted consistent liar |",
           "|---|---|---|---|---|---|---|---|"]
  for name, r in records.items():
    hist = {arm: r[f"{arm}_win_history"] for arm in ("trained", "control")}
    span = {arm: f"{np.mean(h[:10]):.3f} / {np.mean(h[-10:]):.3f}" for arm, h in hist.items()}
    for level in sorted(r["before"], key=int):
      b, a = r["before"][level], r["after"][level]
      cells = [f"{worst(b, w, p):.3f} / {worst(a, w, p):.3f}"
               for w, p in (("win", min), ("loss", max), ("concede_false", max))]
      lines.append(f"| {name} (step {r['step']}) | {level} | " + " | ".join(cells)
                   + f" | {span['trained']} | {span['control']} | "
                   + f"{r.get('scripted_consistent_loss', {}).get(level, float('nan')):.3f} |")
  return "\n".join(lines)


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  cli.define_study_flags(values, workdir="workdir/trained_liar", results=RESULTS)
  flags.DEFINE_integer("steps", 100, "liar updates", **define)
  flags.DEFINE_integer("batch", trained_liar.LiarTraining.batch,
                       "debates per liar update (half in each seat)", **define)
  flags.DEFINE_float("learning_rate", trained_liar.LiarTraining.learning_rate,
                     "the liar's Adam learning rate", **define)
  flags.DEFINE_integer("seed", 0, "the liar's seed", **define)
  return values


def execute(args: flags.FlagValues) -> dict:
  """The study the parsed flags ``args`` ask for (the module docstring); returns the records."""
  options = trained_liar.LiarTraining(steps=args.steps, batch=args.batch,
                                      learning_rate=args.learning_rate)
  records = {}
  for name, arg, num_steps in MS:
    print(f"== {name}", flush=True)
    run_dir = ensure_trained(name, arg, num_steps, args.workdir)
    records[name] = liar_record(run_dir, options, args.seed)
    records[name]["scripted_consistent_loss"] = scripted_losses(run_dir)
  eval_sets = ", ".join(sorted({r["eval_set"] for r in records.values()}))
  notes = (f"Regenerate: `python -m experiments.trained_liar_study --steps={args.steps}` (M: "
           + "; ".join(f"{n}: `experiments/configs/default.py:{a}`, {s} steps, seed 0"
                       for n, a, s in MS)
           + f"). Liar: M's copy, Adam {args.learning_rate:g}, {args.steps} updates of "
           f"{args.batch} debates (half per seat), seed {args.seed}; control: the same games at "
           "learning rate 0. M greedy, its own claims (H never called in a claim), debates to H's "
           f"leaf verdict; worst seat; eval sets {eval_sets} (500 questions per level). "
           "'before' = M against its greedy copy as the liar; 'after' = against the trained liar. "
           "The training win rates pool the levels the trainer's sampler draws (the same on "
           "every row of an M).")
  text = (f"# Trained liar\n\n{table(records)}\n\n{notes}\n")
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  with open(args.results + ".md", "w") as f:
    f.write(text)
  with open(args.results + ".json", "w") as f:
    json.dump(records, f, indent=1)
  print(text)
  return records


def command_line(argv: list[str]) -> dict:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="trained_liar_study")


def main(argv):
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)


if __name__ == "__main__":
  cli.run(define_flags, main)
