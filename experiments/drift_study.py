r"""Which concepts move in fine-tuning: an amplification run, fine-tuned by hybrid training,
compared layer by layer with ``amp_debate.safety.drift`` (DESIGN.md section 4, last bullet).

  python -m experiments.drift_study [--workdir=workdir/drift_study] [--steps=200] \
      [--finetune_steps=200] [--examples=512] [--seed=0]

The runs are the sweep ``experiments/sweeps/drift.py`` (``python -m amp_debate.sweep`` runs them
here, in two stages): three runs of
``experiments/configs/default.py:task=permutation,mode=<mode>,quickstart`` (the README quick
start's task and model: n=8, k <= 2, 4 layers of width 64), with evaluation only at the end (no
self-play debates in it) and a checkpoint at the last step:

  amplification             mode=amplification from scratch, ``--steps`` steps: checkpoint a;
  hybrid_finetune           a's checkpoints copied, resumed in mode=hybrid (resume_allow_unsafe)
                            for ``--finetune_steps`` more steps: checkpoint b;
  amplification_continued   a's checkpoints copied, resumed in mode=amplification for the same
                            steps (the control: identical to one uninterrupted amplification run,
                            as a resumed run replays the steps exactly).

Drift (relative parameter change per module, linear CKA per layer on plain task questions and on
protocol/review questions) of b against a, of the control against a, and of b against the
control. The fine-tune keeps a's optimiser state (Adam moments) and step RNG, as a resume does. A
finished run is not trained again (one trained to other steps is refused: use a new
``--workdir``). About 6 minutes on 2 CPU cores shared with two other jobs (the hybrid fine-tune
takes 4 of them). Writes ``experiments/results/drift.md``, ``.json`` and ``.png`` (``--results``;
``--from_results``: the .md again from the .json) and each comparison's own ``drift.*`` under
``<workdir>/drift_<b>_vs_<a>``.
"""

from __future__ import annotations

import json
import os
import shutil

from absl import flags

from amp_debate import cli, sweep
from amp_debate.tools import drift
from experiments.configs import default
from experiments.sweeps import drift as plan

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "drift")
SWEEP = "experiments/sweeps/drift.py"
ARG = "task=permutation,mode={mode},quickstart"
# (b, a) pairs: the fine-tune and the control against their start, then against each other.
COMPARISONS = (("hybrid_finetune", "amplification"), ("amplification_continued", "amplification"),
               ("hybrid_finetune", "amplification_continued"))


def _stage(spec: str, workdir: str, start_from: str | None = None) -> list[sweep.Run]:
  """Trains one stage of the sweep (finished runs skipped), first copying ``start_from``'s
  checkpoints into each run that has none; exits unless every run finished at its last step."""
  try:
    runs = sweep.build_runs(spec, None, workdir)
    for run in runs:
      if run.done and run.summary["steps"] != run.config.num_steps:
        raise SystemExit(f"{run.workdir} was trained to step {run.summary['steps']}, not "
                         f"{run.config.num_steps}: use a new --workdir")
      if start_from is not None and not run.done and not run.started:
        shutil.copytree(os.path.join(start_from, "checkpoints"),
                        os.path.join(run.workdir, "checkpoints"))
    runs = sweep.run_sweep(spec, None, workdir, table=start_from is not None)
  except ValueError as e:  # a bad size, or a run the trainer refused
    cli.fail(str(e))
  if not all(r.done for r in runs):
    raise SystemExit(f"{workdir}: {spec} did not finish; rerun to resume")
  return runs


def record(run: sweep.Run) -> dict:
  """What the report shows of a run: {"name", "mode", "steps", "wall_s", "eval", "eval_set"}."""
  s = run.summary
  return {"name": run.name, "mode": s["mode"], "steps": s["steps"], "wall_s": s["wall_s"],
          "eval": s["eval"], "eval_set": s["eval_set"]}


def accuracy_line(summary: dict) -> str:
  """``name (mode, N steps): M d0 0.91, d1 0.42, mean 0.66``: M's held-out greedy accuracy."""
  ev = summary["eval"]
  levels = sorted(int(k.rsplit("/d", 1)[1]) for k in ev if k.startswith("eval/accuracy/model/d"))
  cells = [f"d{d} {ev[f'eval/accuracy/model/d{d}']:.3f}" for d in levels]
  cells.append(f"mean {ev['eval/accuracy/model/mean']:.3f}")
  return (f"{summary['name']} ({summary['mode']}, {summary['steps']} steps, "
          f"{summary['wall_s']:.0f} s): M {', '.join(cells)}")


def markdown(result: dict, png: str | None) -> str:
  """``drift.md`` from the study's result (``drift.json``: its command, runs and reports)."""
  args = dict(a[2:].split("=", 1) for a in result["command"].split() if a.startswith("--"))
  steps, finetune_steps = int(args["steps"]), int(args["finetune_steps"])
  examples, seed = int(args["examples"]), int(args["seed"])
  runs, reports = result["runs"], result["reports"]
  overrides = ", ".join(f"{k}={v!r}" for k, v in plan.OVERRIDES.items())
  eval_set_names = sorted({s["eval_set"] for s in runs})
  reference = default.get_config(ARG.format(mode="amplification"))
  any_report = next(iter(reports.values()))
  sections = [
      "# Which concepts move in fine-tuning: amplification, then a hybrid fine-tune",
      f"Command: `{result['command']}`  \nConfig: "
      f"`experiments/configs/default.py:{ARG.format(mode='<mode>')}` with num_steps and "
      f"checkpoint.every = the run's last step, {overrides} "
      f"(the fine-tune: resume_allow_unsafe=True).  \nEval set: {', '.join(eval_set_names)}.  \n"
      f"Drift inputs: {examples} questions of `task.sample` (seed {seed}, every level), "
      "each asked as ANSWER(q) (task inputs) and as one of SUPPORT, STOP, VERDICT, REVIEW about q "
      "(protocol inputs).",
      f"Runs (M's held-out greedy accuracy at the end: {reference.eval.examples_per_difficulty} "
      "questions per level of the eval set above, from the evaluation part of the question space, "
      f"never drawn in training; training seed {reference.seed}, one seed):\n\n" + "\n".join(
          f"- {accuracy_line(s)}" for s in runs),
      f"The fine-tune and the control both start from amplification at step {steps} and "
      f"train {finetune_steps} more steps; the last comparison sets them side by side (a = "
      "the control).",
  ]
  for label, report in reports.items():
    sections.append(f"## {label}\n\n{report['table']}\n\nCKA by protocol header "
                    f"({examples // len(drift.KINDS['protocol'])} prompts each):\n\n"
                    f"{drift.header_table(report)}")
  sections.append(f"CKA: {any_report['cka_variant']}, of each module's output (the residual "
                  "stream after it), mean-pooled over each prompt's real tokens; 1 = the same "
                  "representation up to rotation and scale. Relative change: ‖θ_b − θ_a‖ / ‖θ_a‖ "
                  "over the module's parameters. One seed.")
  if png:
    sections.append(f"![relative change and CKA per layer]({os.path.basename(png)})")
  return "\n\n".join(sections) + "\n"


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  cli.define_study_flags(
      values, workdir="workdir/drift_study", results=RESULTS, from_results=True,
      help={"from_results": "train and measure nothing: the .md again from --results.json"})
  flags.DEFINE_integer("steps", 200, "amplification steps (checkpoint a)", **define)
  flags.DEFINE_integer("finetune_steps", 200,
                       "steps of the hybrid fine-tune and of the amplification control", **define)
  flags.DEFINE_integer("examples", 512, "drift prompts per input kind", **define)
  flags.DEFINE_integer("seed", 0, "seed of the drift prompts", **define)
  return values


def execute(args: flags.FlagValues) -> dict:
  """The study the parsed flags ``args`` ask for (the module docstring); returns its result."""
  if args.from_results:
    with open(args.results + ".json") as f:
      result = json.load(f)
    png = args.results + ".png" if os.path.exists(args.results + ".png") else None
    with open(args.results + ".md", "w") as f:
      f.write(markdown(result, png))
    return result
  if args.steps < 1 or args.finetune_steps < 1:
    cli.fail("--steps and --finetune_steps must be >= 1")
  spec = f"{SWEEP}:steps={args.steps},finetune_steps={args.finetune_steps}"
  base = _stage(f"{spec},stage=base", args.workdir)[0]
  runs = [base] + _stage(f"{spec},stage=finetune", args.workdir, start_from=base.workdir)
  checkpoints = {r.name: f"{r.workdir}:{r.config.num_steps}" for r in runs}
  reports = {}
  for b, a in COMPARISONS:
    reports[f"{b} vs {a}"] = drift.analyse(
        checkpoints[a], checkpoints[b], out=os.path.join(args.workdir, f"drift_{b}_vs_{a}"),
        examples=args.examples, seed=args.seed)
  png = drift.plot(reports, args.results + ".png")
  command = (f"python -m experiments.drift_study --steps={args.steps} "
             f"--finetune_steps={args.finetune_steps} --examples={args.examples} "
             f"--seed={args.seed}")
  result = {"command": command, "runs": [record(r) for r in runs], "reports": reports}
  text = markdown(result, png)
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  with open(args.results + ".md", "w") as f:
    f.write(text)
  with open(args.results + ".json", "w") as f:
    json.dump(result, f, indent=2)
  print(f"\n{text}\nwrote {args.results}.md and .json" + (f" and {png}" if png else ""))
  return result


def command_line(argv: list[str]) -> dict:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="drift_study")


def main(argv):
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)


if __name__ == "__main__":
  cli.run(define_flags, main)
