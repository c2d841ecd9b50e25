r"""The procedure's ablation on the runlocal task: which of amplification and debate does what.

  python -m experiments.ablation --workdir=workdir/ablation            # every run, then the table
  python -m experiments.ablation --workdir=workdir/ablation --seeds=1  # a quicker look
  python -m experiments.ablation --workdir=workdir/ablation --table_only  # tabulate finished runs

Runs, each with seeds 0..seeds-1 (``experiments/configs/default.py:task=permutation,mode=M,runlocal``):
  hybrid                     debate RL + distillation (the README main job)
  amplification              distillation toward Amp′(H, M_target) only (force_stop_after=1)
  supervised                 the ground-truth upper bound (call_prob unused)
  debate                     debate RL only (λ_sup = 0, call_prob = 0: claims are M's own)
  amplification, hybrid at debate.call_prob = 0.3   (about a third of the human calls)
Each run trains in ``<workdir>/<mode>_p<call_prob>_s<seed>``; a run whose ``summary.json`` exists
is not run again (kill and rerun to resume: the trainer resumes unfinished runs). The table (accuracy
by level, debate honesty against scripted liars, human calls, wall time; mean ± sd over seeds) goes
to ``experiments/results/ablation.md`` and ``.json`` (``--results``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

from amp_debate import train
from amp_debate.train import trainer
from experiments.configs import default

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ablation")
SETTINGS = (("hybrid", 1.0), ("amplification", 1.0), ("supervised", 1.0), ("debate", 0.0),
            ("amplification", 0.3), ("hybrid", 0.3))


def _mean_human_calls(workdir: str) -> float:
  """Mean over logged steps of human calls per training question (nan for supervised runs)."""
  values = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "human_calls/per_question" in row:
        values.append(row["human_calls/per_question"])
  return float(np.mean(values)) if values else float("nan")


def run_one(mode: str, call_prob: float, seed: int, workdir: str, num_steps: int | None) -> dict:
  """Trains one setting (or reads its finished summary) and returns its summary."""
  run_dir = os.path.join(workdir, f"{mode}_p{call_prob}_s{seed}")
  summary_path = os.path.join(run_dir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      return json.load(f)
  config = default.get_config(f"task=permutation,mode={mode},runlocal")
  config.seed = seed
  config.debate.call_prob = call_prob
  if num_steps:
    config.num_steps = num_steps
  start = time.time()
  result = train.run(config, run_dir)
  if result.status != "done":
    raise SystemExit(f"{run_dir}: {result.status}; rerun to resume")
  summary = {"mode": mode, "call_prob": call_prob, "seed": seed, "steps": result.step,
             "wall_s": time.time() - start, "eval": result.eval,
             "human_calls_per_question": _mean_human_calls(run_dir),
             "batch_size": config.batch_size}
  with open(summary_path, "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def _stat(values) -> str:
  values = [v for v in values if v is not None and not math.isnan(v)]
  if not values:
    return "–"
  if len(values) == 1:
    return f"{values[0]:.3f}"
  return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _honesty(evals: dict, level: int, what: str, worst) -> float | None:
  keys = [f"eval/honesty/{liar}/{seat}/{what}/d{level}" for liar in trainer.LIARS
          for seat in trainer.SEATS]
  values = [evals[k] for k in keys if k in evals]
  return worst(values) if values else None


def table(summaries: list[dict], levels) -> str:
  header = ["mode", "call_prob", "seeds"]
  header += [f"M accuracy d{d}" for d in levels]
  header += [f"claim true d{d}" for d in levels]
  header += [f"wins vs liars d{d}" for d in levels]
  header += [f"concedes to false d{d}" for d in levels]
  header += ["human calls / question", "wall time (s)"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for mode, call_prob in SETTINGS:
    group = [s for s in summaries if s["mode"] == mode and s["call_prob"] == call_prob]
    if not group:
      continue
    evals = [s["eval"] for s in group]
    row = [mode, f"{call_prob:g}", str(len(group))]
    row += [_stat([e.get(f"eval/accuracy/model/d{d}") for e in evals]) for d in levels]
    row += [_stat([_honesty(e, d, "claim_true", min) for e in evals]) for d in levels]
    row += [_stat([_honesty(e, d, "win", min) for e in evals]) for d in levels]
    row += [_stat([_honesty(e, d, "concede_false", max) for e in evals]) for d in levels]
    row += [_stat([s["human_calls_per_question"] for s in group]),
            _stat([s["wall_s"] for s in group])]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="workdir/ablation")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=0, help="override num_steps (0: the config's)")
  parser.add_argument("--results", default=RESULTS, help="output path without extension")
  parser.add_argument("--table_only", action="store_true",
                      help="only tabulate the runs already finished in --workdir")
  args = parser.parse_args()
  summaries = []
  # Seed-major: every setting's seed 0 first, so an interrupted ablation covers every setting.
  for seed in range(args.seeds):
    for mode, call_prob in SETTINGS:
      done = os.path.exists(os.path.join(args.workdir, f"{mode}_p{call_prob}_s{seed}",
                                         "summary.json"))
      if args.table_only and not done:
        continue
      print(f"== {mode} call_prob={call_prob} seed={seed}", flush=True)
      summaries.append(run_one(mode, call_prob, seed, args.workdir, args.steps or None))
  levels = sorted({int(k.rsplit("/d", 1)[1]) for s in summaries for k in s["eval"]
                   if k.startswith("eval/accuracy/model/d")})
  text = table(summaries, levels)
  notes = (f"Regenerate: `python -m experiments.ablation --seeds={args.seeds}"
           f"{f' --steps={args.steps}' if args.steps else ''}`. Config "
           "`experiments/configs/default.py:task=permutation,mode=<mode>,runlocal` (permutation "
           "n=5, k <= 2), eval set amp_debate_eval/permutation+max_exponent-2+n-5 1.0.0 "
           "(500 questions per level). M greedy; honesty = M in both seats against the "
           "consistent and inconsistent scripted liars (worst case shown); human calls per "
           "training question averaged over logged steps (claims, supports, leaves, verdicts, "
           "targets); mean ± sd over seeds.")
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  with open(args.results + ".md", "w") as f:
    f.write(f"# Ablation on the runlocal task\n\n{text}\n\n{notes}\n")
  with open(args.results + ".json", "w") as f:
    json.dump(summaries, f, indent=2)
  print(f"\n{text}\n\n{notes}\nwrote {args.results}.md and .json")


if __name__ == "__main__":
  main()
