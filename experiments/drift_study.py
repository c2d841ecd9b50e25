r"""Which concepts move in fine-tuning: an amplification run, fine-tuned by hybrid training,
compared layer by layer with ``amp_debate.safety.drift`` (DESIGN.md section 4, last bullet).

  python -m experiments.drift_study [--workdir=workdir/drift_study] [--steps=200] \
      [--finetune_steps=200] [--examples=512] [--seed=0]

Three runs of ``experiments/configs/default.py:task=permutation,mode=<mode>,quickstart`` (the
README quick start's task and model: n=8, k <= 2, 4 layers of width 64), with evaluation only
at the end (no self-play debates in it) and a checkpoint at the last step:

  amplification             mode=amplification from scratch, ``--steps`` steps: checkpoint a;
  hybrid_finetune           a's checkpoints copied, resumed in mode=hybrid (resume_allow_unsafe)
                            for ``--finetune_steps`` more steps: checkpoint b;
  amplification_continued   a's checkpoints copied, resumed in mode=amplification for the same
                            steps (the control: identical to one uninterrupted amplification run,
                            as a resumed run replays the steps exactly).

Drift (relative parameter change per module, linear CKA per layer on plain task questions and on
protocol/review questions) of b against a, of the control against a, and of b against the
control. The fine-tune keeps a's optimiser state (Adam moments) and step RNG, as a resume does. A
run whose checkpoint already holds its last step is not trained again. About 6 minutes on 2 CPU
cores shared with two other jobs (the hybrid fine-tune takes 4 of them). Writes
``experiments/results/drift.md``, ``.json`` and ``.png`` (``--results``) and each comparison's own
``drift.*`` under ``<workdir>/drift_<b>_vs_<a>``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from amp_debate import train
from amp_debate.tools import drift
from amp_debate.train import checkpoint as checkpoint_lib
from experiments.configs import default

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "drift")
ARG = "task=permutation,mode={mode},quickstart"
# (b, a) pairs: the fine-tune and the control against their start, then against each other.
COMPARISONS = (("hybrid_finetune", "amplification"), ("amplification_continued", "amplification"),
               ("hybrid_finetune", "amplification_continued"))
OVERRIDES = {"eval.every": 0, "eval.debates": False, "checkpoint.best_metric": ""}


def run_config(mode: str, steps: int, workdir: str, *, resumed: bool = False):
  """The study's config of one run: the quick start in ``mode`` for ``steps`` steps (counted from
  0), evaluated at the end on the eval set built under ``workdir``; ``resumed`` allows the run to
  continue a checkpoint of another mode."""
  config = default.get_config(ARG.format(mode=mode))
  config.num_steps = steps
  config.checkpoint.every = steps
  config.eval.every = OVERRIDES["eval.every"]
  config.eval.debates = OVERRIDES["eval.debates"]
  config.checkpoint.best_metric = OVERRIDES["checkpoint.best_metric"]
  config.eval.data_dir = os.path.join(workdir, "eval_data")
  config.resume_allow_unsafe = resumed
  return config


def _latest_step(run_dir: str) -> int | None:
  directory = os.path.join(run_dir, "checkpoints")
  if not os.path.isdir(directory):
    return None
  with checkpoint_lib.Checkpointer(directory) as checkpointer:
    return checkpointer.latest_step()


def train_run(name: str, config, workdir: str, start_from: str | None = None) -> dict:
  """Trains ``<workdir>/<name>`` to ``config.num_steps`` (first copying ``start_from``'s
  checkpoints when the run has none), or reuses it when its summary records that step. Returns
  its summary: {"name", "mode", "steps", "wall_s", "eval", "eval_set"}."""
  run_dir = os.path.join(workdir, name)
  summary_path = os.path.join(run_dir, "summary.json")
  if os.path.exists(summary_path) and _latest_step(run_dir) == config.num_steps:
    print(f"== {name}: step {config.num_steps} is in {run_dir}, not rerun", flush=True)
    with open(summary_path) as f:
      return json.load(f)
  if start_from is not None and _latest_step(run_dir) is None:
    shutil.copytree(os.path.join(start_from, "checkpoints"), os.path.join(run_dir, "checkpoints"))
  print(f"== {name}: {config.mode} to step {config.num_steps}", flush=True)
  start = time.time()
  result = train.run(config, run_dir)
  if result.status != "done":
    raise SystemExit(f"{run_dir}: {result.status}; rerun to resume")
  header = open(os.path.join(run_dir, "results.md")).readline()
  summary = {"name": name, "mode": config.mode, "steps": result.step,
             "wall_s": time.time() - start, "eval": result.eval,
             "eval_set": header.rsplit(" on ", 1)[1].strip()}
  with open(summary_path, "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def accuracy_line(summary: dict) -> str:
  """``name (mode, N steps): M d0 0.91, d1 0.42, mean 0.66``: M's held-out greedy accuracy."""
  ev = summary["eval"]
  levels = sorted(int(k.rsplit("/d", 1)[1]) for k in ev if k.startswith("eval/accuracy/model/d"))
  cells = [f"d{d} {ev[f'eval/accuracy/model/d{d}']:.3f}" for d in levels]
  cells.append(f"mean {ev['eval/accuracy/model/mean']:.3f}")
  return (f"{summary['name']} ({summary['mode']}, {summary['steps']} steps, "
          f"{summary['wall_s']:.0f} s): M {', '.join(cells)}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="workdir/drift_study")
  parser.add_argument("--steps", type=int, default=200, help="amplification steps (checkpoint a)")
  parser.add_argument("--finetune_steps", type=int, default=200,
                      help="steps of the hybrid fine-tune and of the amplification control")
  parser.add_argument("--examples", type=int, default=512, help="drift prompts per input kind")
  parser.add_argument("--seed", type=int, default=0, help="seed of the drift prompts")
  parser.add_argument("--results", default=RESULTS, help="output path without extension")
  args = parser.parse_args()
  if args.steps < 1 or args.finetune_steps < 1:
    parser.error("--steps and --finetune_steps must be >= 1")
  total = args.steps + args.finetune_steps
  base = os.path.join(args.workdir, "amplification")
  runs = [
      train_run("amplification", run_config("amplification", args.steps, args.workdir),
                args.workdir),
      train_run("hybrid_finetune", run_config("hybrid", total, args.workdir, resumed=True),
                args.workdir, start_from=base),
      train_run("amplification_continued", run_config("amplification", total, args.workdir),
                args.workdir, start_from=base),
  ]
  checkpoints = {"amplification": f"{base}:{args.steps}"} | {
      name: f"{os.path.join(args.workdir, name)}:{total}"
      for name in ("hybrid_finetune", "amplification_continued")}
  reports = {}
  for b, a in COMPARISONS:
    reports[f"{b} vs {a}"] = drift.analyse(
        checkpoints[a], checkpoints[b], out=os.path.join(args.workdir, f"drift_{b}_vs_{a}"),
        examples=args.examples, seed=args.seed)
  png = drift.plot(reports, args.results + ".png")

  command = (f"python -m experiments.drift_study --steps={args.steps} "
             f"--finetune_steps={args.finetune_steps} --examples={args.examples} "
             f"--seed={args.seed}")
  overrides = ", ".join(f"{k}={v!r}" for k, v in OVERRIDES.items())
  eval_sets = sorted({s["eval_set"] for s in runs})
  reference = run_config("amplification", args.steps, args.workdir)
  any_report = next(iter(reports.values()))
  sections = [
      "# Which concepts move in fine-tuning: amplification, then a hybrid fine-tune",
      f"Command: `{command}`  \nConfig: "
      f"`experiments/configs/default.py:{ARG.format(mode='<mode>')}` with num_steps and "
      f"checkpoint.every = the run's last step, {overrides} "
      f"(the fine-tune: resume_allow_unsafe=True).  \nEval set: {', '.join(eval_sets)}.  \n"
      f"Drift inputs: {args.examples} questions of `task.sample` (seed {args.seed}, every level), "
      "each asked as ANSWER(q) (task inputs) and as one of SUPPORT, STOP, VERDICT, REVIEW about q "
      "(protocol inputs).",
      f"Runs (M's held-out greedy accuracy at the end: {reference.eval.examples_per_difficulty} "
      "questions per level of the eval set above, from the evaluation part of the question space, "
      f"never drawn in training; training seed {reference.seed}, one seed):\n\n" + "\n".join(
          f"- {accuracy_line(s)}" for s in runs),
      f"The fine-tune and the control both start from amplification at step {args.steps} and "
      f"train {args.finetune_steps} more steps; the last comparison sets them side by side (a = "
      "the control).",
  ]
  for label, report in reports.items():
    sections.append(f"## {label}\n\n{report['table']}\n\nCKA by protocol header "
                    f"({args.examples // len(drift.KINDS['protocol'])} prompts each):\n\n"
                    f"{drift.header_table(report)}")
  sections.append(f"CKA: {any_report['cka_variant']}, of each module's output (the residual "
                  "stream after it), mean-pooled over each prompt's real tokens; 1 = the same "
                  "representation up to rotation and scale. Relative change: ‖θ_b − θ_a‖ / ‖θ_a‖ "
                  "over the module's parameters. One seed.")
  if png:
    sections.append(f"![relative change and CKA per layer]({os.path.basename(png)})")
  text = "\n\n".join(sections) + "\n"
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  with open(args.results + ".md", "w") as f:
    f.write(text)
  with open(args.results + ".json", "w") as f:
    json.dump({"command": command, "runs": runs, "reports": reports}, f, indent=2)
  print(f"\n{text}\nwrote {args.results}.md and .json" + (f" and {png}" if png else ""))


if __name__ == "__main__":
  main()
