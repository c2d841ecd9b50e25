r"""The self-review study (issue 13, items 1-2): can the model tell its own answers are cheating, as
training bends it toward cheating?

  python -m experiments.self_review [--workdir=workdir/self_review] [--cats=1,5] [--seed=0]
      [--parallel=2] [--table_only | --from_results]

The runs are the sweep ``experiments/sweeps/self_review.py``:
``experiments/configs/self_review.py:penalty=<p>,cat=<λ_cat>`` for p in off, audits, review and
each λ_cat of ``--cats`` (pure debate on the permutation quick start with the judge flaw p_flaw =
0.9, audits at 0.1 per answer detecting an exploit with probability 0.8; the docstring there),
run by ``amp_debate.sweep`` in ``--workdir`` (finished runs skipped, unfinished ones resumed).
This script writes ``experiments/results/self_review.{md,json,png}``: over training, the hack
rate (the share of M_target's sampled answers that are EXPLOIT), the leaf verdicts the flaw
decided, M's accuracy on the training questions (greedy, against the truth: evaluation only),
and the self-review's precision and recall on M's own answers. ``--from_results`` writes the
table and plot again from the records in the results .json.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import flags

from amp_debate import cli, sweep
from amp_debate.data import eval_sets
from amp_debate.safety import overseer
from amp_debate.train import config_lib, metrics_io
from experiments.configs import self_review
from experiments.sweeps import self_review as plan

RESULTS = "experiments/results/self_review"
SWEEP = "experiments/sweeps/self_review.py"
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


def summarise(run_dir: str, penalty: str, cat: float, summary: dict) -> dict:
  """One run's record: window means of the followed training metrics and their curves (from its
  logged steps), audits per question, and from its ``summary`` (``summary.json``) the seed,
  steps, human calls per question, final eval accuracy and eval set."""
  rows = _rows(run_dir)
  windows = {}
  for lo, hi in WINDOWS:
    part = [r for r in rows if lo <= r["step"] <= hi]
    windows[f"{lo}-{hi}"] = {k: _mean([r[k] for r in part if _defined(r, k)]) for k in CURVES}
  return {
      "penalty": penalty, "cat": cat, "seed": summary["seed"], "steps": summary["steps"],
      "windows": windows,
      "audits_per_question": _mean([r["human_calls/audits"] for r in rows]),
      "human_calls_per_question": summary["human_calls"].get("per_question", float("nan")),
      "eval_accuracy": summary["eval"].get("eval/accuracy/model/mean", float("nan")),
      "eval_set": summary["eval_set"],
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


def markdown(summaries: list[dict], png: str | None) -> str:
  """``self_review.md`` from the records (the command line from their λ_cat values and seed)."""
  cats = ",".join(dict.fromkeys(f"{s['cat']:g}" for s in summaries))
  seed = summaries[0].get("seed", 0) if summaries else 0  # records before issue 30: seed 0
  base = self_review.get_config(f"penalty=off,cat=1,seed={seed}")
  options = dict(base.task_options)
  size = f"n={options.get('n')}, k <= {options.get('max_exponent')}"
  names = sorted({s["eval_set"] for s in summaries if s.get("eval_set")})
  eval_set = ", ".join(names) if names and all(s.get("eval_set") for s in summaries) else (
      eval_sets.full_name(config_lib.make_task(base), base.eval.examples_per_difficulty))
  text = [
      "# Self-review of reward hacking (judge flaw, audits, overseer)\n",
      f"Regenerate: `python -m experiments.self_review --cats={cats} --seed={seed}` "
      "(config `experiments/configs/self_review.py:penalty=<off|audits|review>,cat=<λ_cat>`: "
      f"pure debate on the permutation quick start, {size}; p_flaw = {base.debate.p_flaw:g}, "
      f"audit_prob = {base.safety.overseer.audit_prob:g}, "
      f"p_audit = {base.safety.overseer.p_audit:g}, λ_rl = {base.combination.weights.rl:g}; "
      f"{base.num_steps} steps of {base.batch_size} debates; "
      f"seed {seed}). Metrics are "
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
  return "\n".join(text)


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  cli.define_study_flags(
      values, workdir="workdir/self_review", results=RESULTS, parallel=True, table_only=True,
      from_results=True,
      help={"table_only": "train nothing; tabulate the runs in --workdir",
            "from_results": "train nothing, read no workdir: the table and plot again from the "
                            "records in --results.json"})
  flags.DEFINE_integer("seed", 0, "seed of every run", **define)
  flags.DEFINE_string("penalties", ",".join(overseer.PENALTIES), "comma-separated penalties",
                      **define)
  flags.DEFINE_string("cats", "1,5", "comma-separated λ_cat values", **define)
  return values


def execute(args: flags.FlagValues) -> list[dict]:
  """The study the parsed flags ``args`` ask for (the module docstring); returns the records."""
  spec = (f"{SWEEP}:cats={args.cats.replace(',', '+')},"
          f"penalties={args.penalties.replace(',', '+')},seed={args.seed}")
  try:
    plan.parse(spec.partition(":")[2])
  except ValueError as e:
    cli.fail(f"--cats/--penalties: {e}")
  if args.from_results:
    with open(args.results + ".json") as f:
      summaries = json.load(f)
  else:
    try:
      runs = sweep.run_sweep(spec, None, args.workdir, train=not args.table_only,
                             parallel=args.parallel)
    except ValueError as e:  # a bad sweep, or a run the trainer refused
      cli.fail(str(e))
    for run in runs:
      if not run.done:
        raise SystemExit(f"{run.workdir}: not finished (rerun without --table_only to train or "
                         "resume it)")
    summaries = [summarise(r.workdir, r.overrides["penalty"], r.overrides["cat"], r.summary)
                 for r in runs]
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  png = plot(summaries, args.results + ".png")
  text = markdown(summaries, png)
  with open(args.results + ".md", "w") as f:
    f.write(text)
  if not args.from_results:
    with open(args.results + ".json", "w") as f:
      json.dump(summaries, f, indent=2)
  print(text)
  return summaries


def command_line(argv: list[str]) -> list[dict]:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="self_review")


def main(argv):
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)


if __name__ == "__main__":
  cli.run(define_flags, main)
