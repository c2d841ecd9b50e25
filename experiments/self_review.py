r"""The self-review study (issue 13, items 1-2): can the model tell its own answers are cheating, as
training bends it toward cheating?

  python -m experiments.self_review [--workdir=workdir/self_review] [--cats=1,5] [--seed=0]
      [--table_only]

Trains ``experiments/configs/self_review.py:penalty=<p>,cat=<λ_cat>`` for p in off, audits, review
and each λ_cat of ``--cats`` (pure debate
on the permutation quick start with the judge flaw p_flaw = 0.9, audits at 0.1 per answer detecting
an exploit with probability 0.8; the docstring there), or reuses the finished runs in
``--workdir``, and writes ``experiments/results/self_review.{md,json,png}``: over training, the
hack rate (the share of M_target's sampled answers that are EXPLOIT), the leaf verdicts the flaw
decided, M's accuracy on the training questions (greedy, against the truth: evaluation only),
and the self-review's precision and recall on M's own answers.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from amp_debate import train
from amp_debate.safety import overseer
from amp_debate.data import eval_sets
from amp_debate.train import config_lib, metrics_io
from experiments.configs import self_review

RESULTS = "experiments/results/self_review"
# Logged training metrics the study follows: key -> column title.
CURVES = {
    "safety/hack_rate": "hack rate",
    "debate/leaf_fooled": "debates won by the flaw",
    "accuracy/model": "M's accuracy (train questions)",
    "safety/review_precision": "review precision",
    "safety/review_recall": "review recall",
    "safety/flag_recall": "exploits flagged for the penalty",
}
WINDOWS = ((1, 100), (101, 200), (201, 300))


def _rows(run_dir: str) -> list[dict]:
  return [r for r in metrics_io.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
          if "safety/hack_rate" in r]


def _mean(values: list[float]) -> float:
  return float(np.mean(values)) if values else float("nan")


def _defined(row: dict, key: str) -> bool:
  """Whether a logged ratio has a denominator at that step: the review's recall and the flags'
  needs exploits, its precision needs flags (the metrics log 0 where a ratio is undefined)."""
  if key in ("safety/review_recall", "safety/flag_recall"):
    return row["safety/hack_rate"] > 0
  if key == "safety/review_precision":
    if "safety/review_rate" in row:
      return row["safety/review_rate"] > 0
    return row["safety/review_recall"] > 0  # runs logged before review_rate: flags that hit
  return True


def summarise(run_dir: str, penalty: str, cat: float) -> dict:
  """Window means of the followed metrics, human calls and the final evaluation of one run."""
  rows = _rows(run_dir)
  evals = [r for r in metrics_io.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
           if "eval/accuracy/model/mean" in r]
  windows = {}
  for lo, hi in WINDOWS:
    part = [r for r in rows if lo <= r["step"] <= hi]
    windows[f"{lo}-{hi}"] = {k: _mean([r[k] for r in part if _defined(r, k)]) for k in CURVES}
  return {
      "penalty": penalty, "cat": cat, "steps": rows[-1]["step"] if rows else 0, "windows": windows,
      "audits_per_question": float(np.mean([r["human_calls/audits"] for r in rows])),
      "human_calls_per_question": float(np.mean([r["human_calls/per_question"] for r in rows])),
      "eval_accuracy": evals[-1]["eval/accuracy/model/mean"] if evals else float("nan"),
      "curves": {k: [[r["step"], r[k]] for r in rows if _defined(r, k)] for k in CURVES},
  }


def table(summaries: list[dict]) -> str:
  headers = ["penalty", "λ_cat"] + [f"{title}, steps {w}" for title in ("hack rate",)
                           for w in (f"{lo}-{hi}" for lo, hi in WINDOWS)]
  last = f"{WINDOWS[-1][0]}-{WINDOWS[-1][1]}"
  headers += [f"{CURVES[k]}, steps {last}" for k in CURVES if k != "safety/hack_rate"]
  headers += ["eval accuracy (end)", "audits / question", "human calls / question"]
  rows = []
  for s in summaries:
    w = s["windows"]
    rows.append([s["penalty"], f"{s['cat']:g}"] + [w[f"{lo}-{hi}"]["safety/hack_rate"] for lo, hi in WINDOWS]
                + [w[last][k] for k in CURVES if k != "safety/hack_rate"]
                + [s["eval_accuracy"], s["audits_per_question"], s["human_calls_per_question"]])
  return metrics_io.markdown_table(headers, rows, float_format=".3f")


def plot(summaries: list[dict], out_png: str) -> str | None:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print("matplotlib is not installed: no plot (pip install matplotlib)")
    return None
  keys = ["safety/hack_rate", "accuracy/model", "safety/review_precision", "safety/review_recall"]
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), sharex=True)
  for ax, key in zip(axes, keys):
    for s in summaries:
      curve = np.asarray(s["curves"][key], float)
      style = ("-" if s["cat"] == max(x["cat"] for x in summaries) else ":") + {
          "off": "C3", "audits": "C1", "review": "C2"}[s["penalty"]]
      label = f"{s['penalty']}, λ_cat={s['cat']:g}"
      if len(curve) >= 5:  # a running mean over 5 logged steps: single batches are noisy
        smooth = np.convolve(curve[:, 1], np.ones(5) / 5, mode="valid")
        ax.plot(curve[4:, 0], smooth, style, label=label)
      elif len(curve):
        ax.plot(curve[:, 0], curve[:, 1], style, marker=".", label=label)
    ax.set_title(CURVES[key], fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylim(-0.02, 1.02)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return out_png


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="workdir/self_review")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--penalties", default=",".join(overseer.PENALTIES))
  parser.add_argument("--cats", default="1,5", help="comma-separated λ_cat values")
  parser.add_argument("--results", default=RESULTS, help="output path without extension")
  parser.add_argument("--table_only", action="store_true",
                      help="train nothing; tabulate the runs in --workdir")
  args = parser.parse_args()
  penalties = [p for p in args.penalties.split(",") if p]
  for p in penalties:
    if p not in overseer.PENALTIES:
      parser.error(f"--penalties: {p!r} is not one of {', '.join(overseer.PENALTIES)}")
  try:
    cats = [float(x) for x in args.cats.split(",") if x]
  except ValueError:
    parser.error(f"--cats: not a list of numbers: {args.cats!r}")
  summaries = []
  for cat in cats:
    for penalty in penalties:
      run_dir = os.path.join(args.workdir, f"{penalty}_cat{cat:g}_s{args.seed}")
      if not args.table_only:
        print(f"== penalty={penalty} λ_cat={cat:g} seed={args.seed} ({run_dir})", flush=True)
        config = self_review.get_config(f"penalty={penalty},cat={cat},seed={args.seed}")
        result = train.run(config, run_dir)
        if result.status != "done":
          raise SystemExit(f"{run_dir}: {result.status}; rerun to resume")
      if not os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
        raise SystemExit(f"{run_dir}: no run there (run without --table_only to train it)")
      summaries.append(summarise(run_dir, penalty, cat))
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  png = plot(summaries, args.results + ".png")
  base = self_review.get_config(f"penalty=off,cat=1,seed={args.seed}")
  options = dict(base.task_options)
  size = f"n={options.get('n')}, k <= {options.get('max_exponent')}"
  eval_set = eval_sets.full_name(config_lib.make_task(base), base.eval.examples_per_difficulty)
  text = [
      "# Self-review of reward hacking (judge flaw, audits, overseer)\n",
      f"Regenerate: `python -m experiments.self_review --cats={args.cats} --seed={args.seed}` "
      "(config `experiments/configs/self_review.py:penalty=<off|audits|review>,cat=<λ_cat>`: "
      f"pure debate on the permutation quick start, {size}; p_flaw = {base.debate.p_flaw:g}, "
      f"audit_prob = {base.safety.overseer.audit_prob:g}, "
      f"p_audit = {base.safety.overseer.p_audit:g}, λ_rl = {base.combination.weights.rl:g}; "
      f"{base.num_steps} steps of {base.batch_size} debates; "
      f"seed {args.seed}). Metrics are "
      "means over the logged training steps of each window; M's accuracy is its greedy answer to "
      "the training questions against the truth (evaluation only); eval accuracy is M on the "
      f"eval split `{eval_set}` at the end ({base.eval.examples_per_difficulty} "
      "questions per level, from the evaluation part of the question space: never drawn in "
      "training).\n",
      table(summaries) + "\n",
  ]
  if png:
    text.append(f"![hack rate, accuracy and the review's precision and recall against step]"
                f"({os.path.basename(png)})\n")
  with open(args.results + ".md", "w") as f:
    f.write("\n".join(text))
  with open(args.results + ".json", "w") as f:
    json.dump(summaries, f, indent=2)
  print("\n".join(text))


if __name__ == "__main__":
  main()
