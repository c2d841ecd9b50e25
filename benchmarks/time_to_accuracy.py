"""Training time to >= 95% held-out accuracy at every level, by mode and reuse setting.

    python benchmarks/time_to_accuracy.py [--task permutation] [--runlocal] [--steps 600]
        [--eval-every 25] [--runs 'supervised;amplification;hybrid'] [--seeds 3] [--first-seed 0]
        [--threshold 0.95] [--workdir /tmp/tta] [--out FILE]

Each run is ``python -m amp_debate.main``'s training (``amp_debate.train.run``) of
``experiments/configs/default.py:task=<task>,mode=<mode>,runlocal`` (``quickstart`` for
permutation: ``default.cpu_arg``; ``--runlocal`` takes permutation's runlocal recipe instead, three
levels) with the given overrides
(``field.sub=value``, comma-separated after the colon), evaluated every ``--eval-every`` steps on
the task's held-out eval split (M's greedy answers; the debate statistics off, 200 questions per
level). Reported per run: the first evaluated step at which every level is >= the threshold, the
training seconds to it (``perf/train_seconds``: wall time after the first step's compile,
excluding evaluations and checkpoints) and their ratio to the supervised run's (issue 11, goal 3:
hybrid <= 3x), the optimiser updates it took, and the last evaluation. Runs that never get there
show their best min-over-levels accuracy. With ``--seeds N`` every run is repeated with seeds
F .. F+N-1 (``--first-seed F``, default 0: a study cut into sessions runs seed by seed) (``config.seed``: the init and every question drawn) and the table gives each figure's
median with its range over seeds; the ratios compare medians. Timings share the machine with
nothing else the script runs (one run at a time, all in this process).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys

import jax
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

from amp_debate import cli, train  # noqa: E402
from amp_debate.train import config_lib  # noqa: E402
from experiments.configs import default  # noqa: E402

DEFAULT_RUNS = "supervised;amplification;hybrid"


def parse_run(spec: str) -> tuple[str, dict[str, str]]:
  """'mode:a.b=1,c.d=x' -> ('mode', {'a.b': '1', 'c.d': 'x'})."""
  mode, _, rest = spec.partition(":")
  overrides = {}
  for item in filter(None, rest.split(",")):
    key, eq, value = item.partition("=")
    if not eq:
      raise ValueError(f"run {spec!r}: override {item!r} is not field=value")
    overrides[key.strip()] = value.strip()
  return mode.strip(), overrides


def _set(config, key: str, text: str) -> None:
  *parents, leaf = key.split(".")
  node = config
  try:
    for p in parents:
      node = node[p]
    old = node[leaf]
  except (KeyError, AttributeError, TypeError):
    raise ValueError(f"config.{key}: unknown field") from None
  if old is None:  # an unset optional field (a typed placeholder): the value as JSON reads it
    node[leaf] = json.loads(text)
    return
  node[leaf] = type(old)(json.loads(text.lower()) if isinstance(old, (bool, int, float))
                         else text)


def config_arg(task: str, mode: str, runlocal: bool = False) -> str:
  """The config file's argument of a run: ``default.cpu_arg``, or every task's runlocal recipe."""
  return f"task={task},mode={mode},runlocal" if runlocal else default.cpu_arg(task, mode)


def run_one(task: str, mode: str, overrides: dict[str, str], steps: int, eval_every: int,
            workdir: str, seed: int = 0, runlocal: bool = False) -> list[dict]:
  """Trains one run from scratch in ``workdir``; returns its metrics.jsonl records."""
  config = default.get_config(config_arg(task, mode, runlocal))
  config.seed = seed
  config.num_steps = steps
  config.log_every = eval_every
  config.eval.every = eval_every
  config.eval.debates = False
  config.eval.examples_per_difficulty = 200
  config.eval.batch_size = 200
  config.checkpoint.every = 0
  config.checkpoint.best_metric = ""
  for key, value in overrides.items():
    _set(config, key, value)
  config_lib.validate(config)
  shutil.rmtree(workdir, ignore_errors=True)
  train.run(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f], config


def summarise(records: list[dict], threshold: float) -> dict:
  """First evaluated step with every level >= threshold, its training seconds, the last eval."""
  seconds = {r["step"]: r["perf/train_seconds"] for r in records if "perf/train_seconds" in r}
  evals = [r for r in records if "eval/accuracy/model/min" in r]
  levels = sorted(int(k.rsplit("/d", 1)[1]) for k in evals[-1] if k.startswith(
      "eval/accuracy/model/d"))
  reached = next((r for r in evals if r["eval/accuracy/model/min"] >= threshold), None)
  return {"step": reached and reached["step"],
          "seconds": reached and seconds.get(reached["step"]),
          "best_min": max(r["eval/accuracy/model/min"] for r in evals),
          "final": [evals[-1][f"eval/accuracy/model/d{d}"] for d in levels],
          "levels": levels,
          "total_seconds": seconds.get(evals[-1]["step"])}


def aggregate(per_seed: list[dict]) -> dict:
  """Medians over the seeds that reached the threshold ("step", "seconds": None if none did),
  and every seed's figures for the spread."""
  reached = [r for r in per_seed if r["step"]]
  med = lambda xs: statistics.median(xs) if xs else None
  return {"reached": len(reached), "steps": [r["step"] for r in reached],
          "all_seconds": [r["seconds"] for r in reached],
          "step": med([r["step"] for r in reached]), "seconds": med([r["seconds"] for r in reached]),
          "best_mins": [r["best_min"] for r in per_seed],
          "totals": [r["total_seconds"] for r in per_seed]}


def _spread(values: list[float], fmt: str) -> str:
  """'median (min–max)' of ``values`` (just the value for one)."""
  if len(values) == 1:
    return fmt.format(values[0])
  return (f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–"
          f"{fmt.format(max(values))})")


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this script
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("task", "permutation", "the task", **define)
  flags.DEFINE_bool("runlocal", False, "the task's runlocal recipe even for permutation (default: "
                    "the quick start for permutation)", **define)
  flags.DEFINE_integer("steps", 600, "training steps of every run", **define)
  flags.DEFINE_integer("eval-every", 25, "steps between evaluations", **define)
  flags.DEFINE_string("runs", DEFAULT_RUNS, "';'-separated mode[:field=value,...] (the first "
                      "supervised run is the ratios' base)", **define)
  flags.DEFINE_integer("seeds", 3, "seeds 0..N-1 of every run", **define)
  flags.DEFINE_integer("first-seed", 0, "the first seed", **define)
  flags.DEFINE_float("threshold", 0.95, "the accuracy to reach at every level", **define)
  flags.DEFINE_string("workdir", "/tmp/amp_debate_tta", "directory of the runs", **define)
  flags.DEFINE_string("out", "", "also write the report (markdown) here", **define)
  return values


def execute(values: flags.FlagValues) -> dict:
  """The benchmark the parsed flags ``values`` ask for (the module docstring)."""
  args = cli.namespace(values)
  try:
    runs = [parse_run(s) for s in args.runs.split(";") if s.strip()]
    for mode, overrides in runs:  # every run's config is checked before any trains
      config = default.get_config(config_arg(args.task, mode, args.runlocal))
      for key, value in overrides.items():
        _set(config, key, value)
      config_lib.validate(config)
  except (ValueError, KeyError, AttributeError, config_lib.ConfigError) as e:
    cli.fail(f"--runs: {e}")
  rows = []
  for i, (mode, overrides) in enumerate(runs):
    name = mode + "".join(f" {k.split('.')[-1]}={v}" for k, v in overrides.items())
    per_seed = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
      print(f"[{i + 1}/{len(runs)}] {name}, seed {seed}", file=sys.stderr, flush=True)
      records, config = run_one(args.task, mode, overrides, args.steps, args.eval_every,
                                os.path.join(args.workdir, f"{i}_{seed}"), seed, args.runlocal)
      per_seed.append(summarise(records, args.threshold))
    updates = config.step.update_epochs * config.step.num_minibatches if mode != "supervised" \
        else 1
    rows.append({"name": name, "mode": mode, "updates": updates, "seeds": per_seed,
                 **aggregate(per_seed)})
  base = next((r for r in rows if r["mode"] == "supervised" and r["seconds"]), None)
  base_s = base and base["seconds"]
  lines = [f"| run | seeds reaching ≥{args.threshold:.0%} at every level | steps to it | "
           f"optimiser updates | training seconds to it | steps vs supervised | seconds vs "
           f"supervised | best min-over-levels | final by level (seed {args.first_seed}) | "
           f"seconds for {args.steps} steps |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if r["step"]:
      step_ratio = f"{r['step'] / base['step']:.1f}x" if base else "–"
      ratio = f"{r['seconds'] / base_s:.1f}x" if base_s else "–"
      cells = (_spread(r["steps"], "{:.0f}"), f"{r['step'] * r['updates']:.0f}",
               _spread(r["all_seconds"], "{:.1f}"), step_ratio, ratio)
    else:
      cells = ("not reached", "–", "–", "–", "–")
    final = " / ".join(f"{a:.0%}" for a in r["seeds"][0]["final"])
    lines.append(f"| {r['name']} | {r['reached']}/{len(r['seeds'])} | {' | '.join(cells)} | "
                 f"{_spread(r['best_mins'], '{:.1%}')} | {final} | "
                 f"{_spread(r['totals'], '{:.1f}')} |")
  device = jax.devices()[0]
  recipe = ("runlocal" if args.runlocal or args.task != "permutation" else "quickstart")
  report = (f"Time to held-out accuracy: {args.task} {recipe} config, {device.platform} "
            f"({os.cpu_count()} host cores), jax {jax.__version__}; levels "
            f"{rows[0]['seeds'][0]['levels']} of the task's eval split (200 questions each), "
            f"evaluated every {args.eval_every} steps; seeds {args.first_seed}.."
            f"{args.first_seed + args.seeds - 1} per run, each "
            f"figure the median (min–max) over the seeds that reached the threshold; ratios of "
            f"medians.\n\n" + "\n".join(lines) +
            f"\n\nCommand: python benchmarks/time_to_accuracy.py --task {args.task}"
            f"{' --runlocal' if args.runlocal else ''} --steps "
            f"{args.steps} --eval-every {args.eval_every} --runs '{args.runs}' --seeds "
            f"{args.seeds}{f' --first-seed {args.first_seed}' if args.first_seed else ''}\n")
  common.emit(report, args.out)
  return {"rows": rows, "base_s": base_s, "base_step": base and base["step"], "report": report}


def command_line(argv: list[str]) -> dict:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="time_to_accuracy.py")


def main(argv) -> None:
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)

if __name__ == "__main__":
  cli.run(define_flags, main)
