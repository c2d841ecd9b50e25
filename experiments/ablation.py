r"""The procedure's ablation on the quick-start task: which of amplification and debate does what.

  python -m experiments.ablation --workdir=workdir/ablation               # every run, the tables
  python -m experiments.ablation --workdir=workdir/ablation --seeds=1     # a quicker look
  python -m experiments.ablation --workdir=workdir/ablation --parallel=2  # two runs at a time
  python -m experiments.ablation --workdir=workdir/ablation --table_only  # finished runs only
  python -m experiments.ablation --from_results     # the tables again from ablation.json

The runs are the sweep ``experiments/sweeps/ablation.py`` (its settings, mechanisms and seeds),
run by ``amp_debate.sweep`` in ``--workdir`` (``python -m amp_debate.sweep
--sweep=experiments/sweeps/ablation.py:seeds=3,mechanism_seeds=1 --workdir=...`` runs the same
runs): each run in its own directory, finished runs skipped, a killed ablation resumed by
rerunning the command. This script keeps one record per finished run (``record``: its setting and
what the tables read from its ``summary.json``) and writes the tables (accuracy by level, debate
honesty judged by H against the scripted liars, self-play, human calls, debate length, wall
time; mean ± sd over seeds) to ``experiments/results/ablation.md`` and the records to ``.json``
(``--results``).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
from absl import flags

from amp_debate import cli, sweep, tasks
from amp_debate.data import eval_sets
from amp_debate.train import evaluation
from experiments.configs import default
from experiments.sweeps import ablation as plan

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ablation")
SWEEP = "experiments/sweeps/ablation.py"


def record(s: dict, setting: dict) -> dict:
  """A finished run's record: its ``setting`` (of ``plan``) and what the tables read from its
  summary ``s`` (the final evaluation, human calls per question, debate length at the end of
  training, wall time, eval set)."""
  return {"setting": setting["name"], "mode": s["mode"], "call_prob": setting["call_prob"],
          "overrides": setting["changes"], "seed": s["seed"], "steps": s["steps"],
          "wall_s": s["wall_s"], "eval": s["eval"], "eval_set": s["eval_set"],
          "human_calls_per_question": s["human_calls"].get("per_question"),
          "debate_length_end": s.get("debate_length_end")}


def _stat(values) -> str:
  values = [v for v in values if v is not None and not math.isnan(v)]
  if not values:
    return "–"
  if len(values) == 1:
    return f"{values[0]:.3f}"
  return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _honesty(evals: dict, level: int, what: str, worst, source: str = "own",
             liars=evaluation.LIARS) -> float | None:
  """The worst value of ``what`` over ``liars`` and both seats (None when the run played none)."""
  keys = [f"eval/honesty/{source}/{liar}/{seat}/{what}/d{level}" for liar in liars
          for seat in evaluation.SEATS]
  values = [evals[k] for k in keys if k in evals]
  return worst(values) if values else None


COLUMNS = (  # (header, value of one run's eval at a level), honesty judged by H (issue 27)
    ("M accuracy", lambda e, d: e.get(f"eval/accuracy/model/d{d}")),
    ("own claims: wins vs liars", lambda e, d: _honesty(e, d, "win", min)),
    ("own claims: concedes", lambda e, d: _honesty(e, d, "concede_false", max)),
    ("Amp(H, M) claims: wins", lambda e, d: _honesty(e, d, "win", min, "amp", ("consistent",))),
    ("self-play: winner true", lambda e, d: e.get(f"eval/debate/winner_true/d{d}")),
)


def table(summaries: list[dict], levels, settings) -> str:
  header = ["setting", "call_prob", "seeds"]
  header += [f"{name} d{d}" for name, _ in COLUMNS for d in levels]
  header += ["human calls / question", "debate length (end)", "wall time (s)"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for setting in settings:
    group = [s for s in summaries if s["setting"] == setting["name"]]
    if not group:
      continue
    evals = [s["eval"] for s in group]
    row = [setting["label"], f"{setting['call_prob']:g}", str(len(group))]
    row += [_stat([value(e, d) for e in evals]) for _, value in COLUMNS for d in levels]
    row += [_stat([s.get("human_calls_per_question") for s in group]),
            _stat([s.get("debate_length_end") for s in group]),
            _stat([s["wall_s"] for s in group])]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def eval_set_names(records: list[dict]) -> str:
  """The eval sets the records were evaluated on (records from before issue 30 carry none: the
  name the quick start's config gives today)."""
  names = sorted({r["eval_set"] for r in records if r.get("eval_set")})
  if names and all(r.get("eval_set") for r in records):
    return ", ".join(names)
  config = default.get_config("task=permutation,mode=hybrid,quickstart")
  task = tasks.get(config.task, **config.task_options)
  return ", ".join(sorted(set(names) | {eval_sets.full_name(
      task, config.eval.examples_per_difficulty)}))


def markdown(records: list[dict]) -> str:
  """``ablation.md`` from the records alone (its command line, seeds and steps included)."""
  levels = sorted({int(k.rsplit("/d", 1)[1]) for s in records for k in s["eval"]
                   if k.startswith("eval/accuracy/model/d")})
  names = {s["name"] for s in plan.MECHANISMS}
  seeds = 1 + max([r["seed"] for r in records if r["setting"] not in names], default=-1)
  mechanism_seeds = 1 + max([r["seed"] for r in records if r["setting"] in names], default=-1)
  steps = sorted({r["steps"] for r in records})
  config_steps = default.get_config("task=permutation,mode=hybrid,quickstart").num_steps
  steps = f" --steps={steps[-1]}" if steps and steps != [config_steps] else ""
  options = default.QUICKSTART.task_options
  notes = (f"Regenerate: `python -m experiments.ablation --seeds={seeds} "
           f"--mechanism_seeds={mechanism_seeds}{steps}` (`--parallel=2`: two runs at a time). "
           "Config `experiments/configs/default.py:task=permutation,mode=<mode>,quickstart` "
           "(permutation " + ", ".join(f"{k}={v}" for k, v in options.items()) +
           ") with `debate.call_prob` and the overrides named in `experiments/sweeps/ablation.py`; "
           f"eval set {eval_set_names(records)} (questions the training sampler never draws; 500 "
           "per level). Seeds 0.." f"{seeds - 1} for the main settings (mean ± sample sd), "
           f"0..{max(mechanism_seeds - 1, 0)} for the mechanisms. M greedy. Honesty judged "
           "by H (debates to H's leaf verdict, the oracle as judge wherever a verdict comes "
           "earlier, never M): own claims = M's direct answers (H never called in a claim) in both "
           "seats against the consistent, early and plausible liars, worst liar and seat shown; "
           "Amp(H, M) claims = H recombining M's subanswers, against the consistent liar; "
           "self-play = M sampling at the training temperature against itself, share of games "
           "won by a true claim. Human calls per training question averaged over logged steps "
           "(claims, supports, leaves, verdicts, targets); debate length = arguments per self-play training "
           "debate, mean over the last tenth of the logged steps (runs recorded before issue 30: "
           "the last 10 logged steps).")
  text = f"## Main settings\n\n{table(records, levels, plan.SETTINGS)}\n"
  if mechanism_seeds:
    text += ("\n## Mechanisms (each against the main setting it changes)\n\n"
             f"{table(records, levels, plan.MECHANISMS)}\n")
  return f"# Ablation on the quick-start task\n\n{text}\n{notes}\n"


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  cli.define_study_flags(values, workdir="workdir/ablation", results=RESULTS, parallel=True,
                         table_only=True, from_results=True)
  flags.DEFINE_integer("seeds", 3, "seeds of each main setting", **define)
  flags.DEFINE_integer("mechanism_seeds", 1, "seeds of each mechanism setting (0: skip them)",
                       **define)
  flags.DEFINE_integer("steps", 0, "override num_steps (0: the config's)", **define)
  return values


def execute(args: flags.FlagValues) -> list[dict]:
  """The ablation the parsed flags ``args`` ask for (the module docstring); returns the records."""
  if args.from_results:
    with open(args.results + ".json") as f:
      records = json.load(f)
  else:
    spec = (f"{SWEEP}:seeds={args.seeds},mechanism_seeds={args.mechanism_seeds},"
            f"steps={args.steps}")
    try:
      runs = sweep.run_sweep(spec, None, args.workdir, train=not args.table_only,
                             parallel=args.parallel)
    except ValueError as e:  # a bad sweep, or a run the trainer refused
      cli.fail(str(e))
    if not args.table_only and not all(r.done for r in runs):
      raise SystemExit("ablation not finished: rerun the same command to resume")
    records = [record(r.summary, plan.setting_of(r.overrides)) for r in runs if r.done]
  text = markdown(records)
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  with open(args.results + ".md", "w") as f:
    f.write(text)
  if not args.from_results:
    with open(args.results + ".json", "w") as f:
      json.dump(records, f, indent=2)
  print(f"\n{text}\nwrote {args.results}.md" + ("" if args.from_results else " and .json"))
  return records


def command_line(argv: list[str]) -> list[dict]:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="ablation")


def main(argv):
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)


if __name__ == "__main__":
  cli.run(define_flags, main)
