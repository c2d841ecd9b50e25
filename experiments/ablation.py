r"""The procedure's ablation on the quick-start task: which of amplification and debate does what.

  python -m experiments.ablation --workdir=workdir/ablation            # every run, then the table
  python -m experiments.ablation --workdir=workdir/ablation --seeds=1  # a quicker look
  python -m experiments.ablation --workdir=workdir/ablation --table_only  # tabulate finished runs

Runs, each with seeds 0..seeds-1 (``experiments/configs/default.py:task=permutation,mode=M,quickstart``):
  hybrid                     debate RL + distillation (the README main job)
  amplification              distillation toward Amp′(H, M_target) only (force_stop_after=1)
  supervised                 the ground-truth upper bound (call_prob unused)
  debate                     debate RL only (λ_sup = 0, call_prob = 0: claims are M's own)
  amplification, hybrid at debate.call_prob = 0.3   (about a third of the human calls)
  hybrid without RL          hybrid's debates and targets, λ_rl = 0 (the control for hybrid vs
                             amplification: is it the debate's gradient or the extra targets?)
and the mechanism settings (``MECHANISMS``, ``--mechanism_seeds`` seeds each, default 1): the learned
stop, no assigned claims, the shaped combination with beta = 0.5 and 0, pure debate with an entropy
bonus, each against the main setting it changes.
Each run trains in ``<workdir>/<mode>_p<call_prob>[_<tag>]_s<seed>``; a run whose ``summary.json``
exists is not run again (kill and rerun to resume: the trainer resumes unfinished runs). The tables
(accuracy by level, debate honesty judged by H against the scripted liars, self-play, human
calls, debate length, wall time;
mean ± sd over seeds) go to ``experiments/results/ablation.md`` and ``.json`` (``--results``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time

import numpy as np

from amp_debate import tasks, train
from amp_debate.data import eval_sets
from amp_debate.train import trainer
from experiments.configs import default

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ablation")


@dataclasses.dataclass(frozen=True)
class Setting:
  """One row of the table: a mode at a call probability, plus config overrides (``field: value``,
  dotted as on the command line) that switch one mechanism on or off."""

  mode: str
  call_prob: float
  overrides: tuple[tuple[str, object], ...] = ()
  tag: str = ""  # run-directory suffix and table label of the overrides

  @property
  def name(self) -> str:
    return f"{self.mode}_p{self.call_prob}" + (f"_{self.tag}" if self.tag else "")

  @property
  def label(self) -> str:
    return self.mode + (f" ({self.tag.replace('_', ' ')})" if self.tag else "")


SETTINGS = (Setting("hybrid", 1.0), Setting("amplification", 1.0), Setting("supervised", 1.0),
            Setting("debate", 0.0), Setting("amplification", 0.3), Setting("hybrid", 0.3),
            # The control for "hybrid beats amplification": the same debates and distillation
            # targets (both sides' computations, descended-to nodes: about twice amplification's
            # targets per question) without the debate's policy gradient.
            Setting("hybrid", 1.0, (("combination.weights.rl", 0.0),
                                    ("combination.weights_end.rl", 0.0)), "no_rl"))
# Each learning mechanism against the main setting it changes (one seed unless --mechanism_seeds):
# does it move the behaviour DESIGN.md says it should?
MECHANISMS = (
    # The learned stop: shorter debates (fewer leaf and support calls) where the amplified judge
    # already gives the verdict the full debate would reach. Compare with hybrid p=1.
    Setting("hybrid", 1.0, (("debate.learned_stop", True),), "learned_stop"),
    # Assigned claims: without them false claims are rare in self-play and refuting them is never
    # practised. Compare the honesty columns with hybrid p=0.3.
    Setting("hybrid", 0.3, (("debate.assign_prob", 0.0),), "no_assigned"),
    # The shaped combination: debate reward minus beta * (disagreement with Amp'), no distillation
    # gradient; against the same with beta = 0 (pure debate at p = 0.3).
    Setting("hybrid", 0.3, (("combination.kind", "shaped"), ("combination.beta", 0.5)),
            "shaped_beta0.5"),
    Setting("hybrid", 0.3, (("combination.kind", "shaped"), ("combination.beta", 0.0)),
            "shaped_beta0"),
    # The entropy bonus: pure debate collapses onto one answer per role (every game a draw, no
    # gradient); does keeping the policy's entropy up let the debate signal teach M?
    Setting("debate", 0.0, (("step.entropy_coef", 0.1),), "entropy0.1"),
)


def _override(config, field: str, value) -> None:
  node = config
  *path, last = field.split(".")
  for key in path:
    node = node[key]
  node[last] = value


def _training_means(workdir: str, last: int = 10) -> dict[str, float]:
  """Means over logged training steps: human calls per question (every logged step; nan for
  supervised runs) and, over the ``last`` logged steps, the debate length and how often the
  learned stop fired."""
  rows = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "human_calls/per_question" in row:
        rows.append(row)
  mean = lambda key, part: float(np.mean([r[key] for r in part])) if part else float("nan")
  return {"human_calls_per_question": mean("human_calls/per_question", rows),
          "debate_length_end": mean("debate/mean_length", rows[-last:]),
          "learned_stop_end": mean("stop/learned_stop", rows[-last:])}


def run_one(setting: Setting, seed: int, workdir: str, num_steps: int | None) -> dict:
  """Trains one setting (or reads its finished summary) and returns its summary."""
  run_dir = os.path.join(workdir, f"{setting.name}_s{seed}")
  summary_path = os.path.join(run_dir, "summary.json")
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      summary = json.load(f)
    if "debate_length_end" not in summary and summary["mode"] != "supervised":
      summary.update(_training_means(run_dir))  # summaries written before these columns
    summary.setdefault("setting", setting.name)
    return summary
  config = default.get_config(f"task=permutation,mode={setting.mode},quickstart")
  config.seed = seed
  config.debate.call_prob = setting.call_prob
  for field, value in setting.overrides:
    _override(config, field, value)
  if num_steps:
    config.num_steps = num_steps
  start = time.time()
  result = train.run(config, run_dir)
  if result.status != "done":
    raise SystemExit(f"{run_dir}: {result.status}; rerun to resume")
  summary = {"setting": setting.name, "mode": setting.mode, "call_prob": setting.call_prob,
             "overrides": dict(setting.overrides), "seed": seed, "steps": result.step,
             "wall_s": time.time() - start, "eval": result.eval,
             "batch_size": config.batch_size}
  if setting.mode != "supervised":
    summary.update(_training_means(run_dir))
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


def _honesty(evals: dict, level: int, what: str, worst, source: str = "own",
             liars=trainer.LIARS) -> float | None:
  """The worst value of ``what`` over ``liars`` and both seats (None when the run played none)."""
  keys = [f"eval/honesty/{source}/{liar}/{seat}/{what}/d{level}" for liar in liars
          for seat in trainer.SEATS]
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
    group = [s for s in summaries if s["setting"] == setting.name]
    if not group:
      continue
    evals = [s["eval"] for s in group]
    row = [setting.label, f"{setting.call_prob:g}", str(len(group))]
    row += [_stat([value(e, d) for e in evals]) for _, value in COLUMNS for d in levels]
    row += [_stat([s.get("human_calls_per_question") for s in group]),
            _stat([s.get("debate_length_end") for s in group]),
            _stat([s["wall_s"] for s in group])]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def _parse_shard(text: str) -> tuple[int, int]:
  try:
    shard, num = (int(x) for x in text.split("/"))
  except ValueError:
    raise SystemExit(f"--shard={text!r}: expected i/N, e.g. 0/2") from None
  if not 0 <= shard < num:
    raise SystemExit(f"--shard={text!r}: need 0 <= i < N")
  return shard, num


def eval_set_name() -> str:
  """The TFDS name of the quick start's eval set, as the trainer cites it."""
  config = default.get_config("task=permutation,mode=hybrid,quickstart")
  task = tasks.get(config.task, **config.task_options)
  return eval_sets.full_name(task, config.eval.examples_per_difficulty)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="workdir/ablation")
  parser.add_argument("--seeds", type=int, default=3, help="seeds of each main setting")
  parser.add_argument("--mechanism_seeds", type=int, default=1,
                      help="seeds of each mechanism setting (0: skip them)")
  parser.add_argument("--steps", type=int, default=0, help="override num_steps (0: the config's)")
  parser.add_argument("--results", default=RESULTS, help="output path without extension")
  parser.add_argument("--shard", default="0/1",
                      help="i/N: train only every N-th run of the plan from the i-th (run N "
                      "processes with i = 0..N-1 on a machine with N cores, then --table_only)")
  parser.add_argument("--only", default="",
                      help="comma-separated setting names (e.g. hybrid_p1.0_no_rl): train only "
                      "these (the table still lists every finished run)")
  parser.add_argument("--table_only", action="store_true",
                      help="only tabulate the runs already finished in --workdir")
  args = parser.parse_args()
  summaries = []
  plan = [(seed, s) for seed in range(args.seeds) for s in SETTINGS]
  plan += [(seed, s) for seed in range(args.mechanism_seeds) for s in MECHANISMS]
  shard, num_shards = _parse_shard(args.shard)
  # Seed-major: every setting's seed 0 first, so an interrupted ablation covers every setting.
  for i, (seed, setting) in enumerate(plan):
    done = os.path.exists(os.path.join(args.workdir, f"{setting.name}_s{seed}", "summary.json"))
    only = args.only and setting.name not in args.only.split(",")
    if (args.table_only and not done) or (not done and (i % num_shards != shard or only)):
      continue
    print(f"== {setting.name} seed={seed}", flush=True)
    summaries.append(run_one(setting, seed, args.workdir, args.steps or None))
  levels = sorted({int(k.rsplit("/d", 1)[1]) for s in summaries for k in s["eval"]
                   if k.startswith("eval/accuracy/model/d")})
  main_table = table(summaries, levels, SETTINGS)
  mechanism_table = table(summaries, levels, MECHANISMS)
  steps = f" --steps={args.steps}" if args.steps else ""
  options = default.QUICKSTART.task_options
  notes = (f"Regenerate: `python -m experiments.ablation --seeds={args.seeds} "
           f"--mechanism_seeds={args.mechanism_seeds}{steps}` (or two processes with "
           "`--shard=0/2` and `--shard=1/2`, then `--table_only`). Config "
           "`experiments/configs/default.py:task=permutation,mode=<mode>,quickstart` (permutation "
           + ", ".join(f"{k}={v}" for k, v in options.items()) +
           ") with `debate.call_prob` and the overrides named in `experiments/ablation.py`; eval "
           f"set {eval_set_name()} (questions the training sampler never draws; 500 per level). "
           "Seeds 0.." f"{args.seeds - 1} for the main settings (mean ± sample sd), "
           f"0..{max(args.mechanism_seeds - 1, 0)} for the mechanisms. M greedy. Honesty judged "
           "by H (debates to H's leaf verdict, the oracle as judge wherever a verdict comes "
           "earlier, never M): own claims = M's direct answers (H never called in a claim) in both "
           "seats against the consistent, early and plausible liars, worst liar and seat shown; "
           "Amp(H, M) claims = H recombining M's subanswers, against the consistent liar; self-play "
           "= M sampling at the training temperature against itself, share of games won by a true "
           "claim. Human calls per training question averaged over logged steps (claims, "
           "supports, leaves, verdicts, targets); debate length = arguments per self-play training "
           "debate, mean over the last 10 logged steps.")
  text = f"## Main settings\n\n{main_table}\n"
  if args.mechanism_seeds:
    text += ("\n## Mechanisms (each against the main setting it changes)\n\n"
             f"{mechanism_table}\n")
  os.makedirs(os.path.dirname(args.results), exist_ok=True)
  with open(args.results + ".md", "w") as f:
    f.write(f"# Ablation on the quick-start task\n\n{text}\n{notes}\n")
  with open(args.results + ".json", "w") as f:
    json.dump(summaries, f, indent=2)
  print(f"\n{text}\n{notes}\nwrote {args.results}.md and .json")


if __name__ == "__main__":
  main()
