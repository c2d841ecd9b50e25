r"""Does the KL budget hold? An amplification-only π_safe, then a fine-tune from it with and without
the budget, KL(π_M ‖ π_safe) at the end of every phase.

  python -m experiments.kl_budget_study --workdir=workdir/kl_budget_study   # about 15 CPU minutes

The runs are the sweep ``experiments/sweeps/kl_budget.py`` (its docstring), run by
``amp_debate.sweep`` in ``--workdir`` in two stages (π_safe, then the fine-tunes from it; finished
runs are not rerun, unfinished ones resume):
  safe    mode=amplification, ``--safe_steps`` steps: π_safe (the end of an amplification-only
          phase; also the reference of ``python -m amp_debate.tools.kl_attack``).
  free    mode=``--mode`` (default debate: pure self-play RL, which moves M most) from π_safe
          (``init_from``), ``--phases`` x ``--phase_steps`` steps, no budget.
  budget  the same with ``safety.kl_budget.reference`` = π_safe and the schedule
          ε_k = ``--epsilon0`` x ``--growth``^k.
Both fine-tunes checkpoint at every phase end; this script measures the KL of each checkpoint to
π_safe on the budget's reference set (``kl_budget.kl_divergence``) and writes the table
(``--results``.md, with the command), the numbers (.json) and the plot (.png: KL against updates,
the budget's staircase, the budget run's per-update KL from its metrics and both runs' phase-end
KLs).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import flags

from amp_debate import cli, sweep, train
from amp_debate.safety import kl_budget
from amp_debate.train import config_lib, metrics_io

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "kl_budget")
SWEEP = "experiments/sweeps/kl_budget.py"
PROGRAM = "python -m experiments.kl_budget_study"


def _stage(spec: str, stage: str, workdir: str, parallel: int = 1) -> list[sweep.Run]:
  """Runs one stage of the sweep (finished runs skipped; one trained to other steps refused);
  exits unless every run finished."""
  try:
    for run in sweep.build_runs(f"{spec},stage={stage}", None, workdir):
      if run.done and run.summary["steps"] != run.config.num_steps:
        raise SystemExit(f"{run.workdir} was trained to step {run.summary['steps']}, not "
                         f"{run.config.num_steps}: use a new --workdir")
    runs = sweep.run_sweep(f"{spec},stage={stage}", None, workdir, parallel=parallel,
                           table=stage == "finetune")
  except ValueError as e:  # a bad size, or a run the trainer refused
    cli.fail(str(e))
  if not all(r.done for r in runs):
    raise SystemExit(f"{workdir}: the {stage} stage did not finish; rerun to resume")
  return runs


def run_record(run: sweep.Run) -> dict:
  """What the table shows of a run: {"name", "mode", "steps", "eval", "seconds"} (the sweep's
  wall time), from its summary."""
  s = run.summary
  return {"name": run.name, "mode": s["mode"], "steps": s["steps"], "eval": s["eval"],
          "seconds": s["wall_s"]}


def phase_end_kls(run_dir: str, steps: list[int], safe_params, model, prompts, answer_len: int,
                  temperature: float) -> list[float]:
  """KL(π at each checkpoint step ‖ π_safe) on the reference prompts."""
  kl = jax.jit(lambda p, a: kl_budget.kl_divergence(model, p, a, prompts, answer_len,
                                                    temperature=temperature))
  out = []
  for step in steps:
    state, _, _ = train.load_state(run_dir, step)
    out.append(float(kl(state.params, safe_params)))
  return out


def _per_update_kl(run_dir: str) -> tuple[list[int], list[float]]:
  """(updates done, KL) from the budget run's metrics: ``kl/value`` at step s is the KL of the
  parameters after s - 1 updates."""
  rows = [r for r in metrics_io.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
          if "kl/value" in r]
  return [r["step"] - 1 for r in rows], [r["kl/value"] for r in rows]


def plot(result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  s = result["settings"]
  n, budgets = s["phase_steps"], result["budgets"]
  fig, ax = plt.subplots(figsize=(6.4, 4))
  stairs_x = [x for k in range(len(budgets)) for x in (k * n, (k + 1) * n)]
  stairs_y = [b for b in budgets for _ in range(2)]
  ax.plot(stairs_x, stairs_y, "k-", lw=1.5, label="budget ε_k")
  ax.plot(result["budget"]["updates"], result["budget"]["per_update_kl"], color="tab:blue",
          lw=0.8, alpha=0.6, label="with budget, every update")
  ends = result["phase_ends"]
  ax.plot(ends, result["budget"]["phase_end_kl"], "o", color="tab:blue",
          label="with budget, phase ends")
  ax.plot(ends, result["free"]["phase_end_kl"], "s--", color="tab:red",
          label="without budget, phase ends")
  ax.set_yscale("log")
  ax.set_xlabel(f"optimiser updates of the {s['mode']} fine-tune from π_safe")
  ax.set_ylabel("KL(π_M ‖ π_safe) on the reference set")
  ax.set_title("KL budget to a known-safe policy")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(result: dict, command: str) -> str:
  s = result["settings"]
  lines = [
      "# KL budget to a known-safe policy", "",
      f"Command: `{command}`", "",
      f"π_safe: the quick start (permutation {s['task_options']}) trained {s['safe_steps']} "
      f"steps with mode=amplification. Fine-tunes from π_safe (`init_from`): mode={s['mode']}, "
      f"{s['phases']} phases of {s['phase_steps']} updates, without and with the budget "
      f"(`safety.kl_budget`: ε_k = {s['epsilon0']:g}·{s['growth']:g}^k, margin {s['margin']:g}). "
      f"KL(π_M ‖ π_safe) measured on the checkpoint at each phase end, on the budget's reference "
      f"set ({s['num_prompts']} ANSWER prompts of seed {s['seed']}, teacher-forced on π_safe's "
      f"greedy answers, exact over the vocabulary).", "",
      "| phase | updates | budget ε_k | KL without budget | KL with budget | within budget |",
      "|---|---|---|---|---|---|"]
  for k, (end, eps) in enumerate(zip(result["phase_ends"], result["budgets"])):
    free, held = result["free"]["phase_end_kl"][k], result["budget"]["phase_end_kl"][k]
    lines.append(f"| {k} | {end} | {eps:.4g} | {free:.4g} | {held:.4g} | "
                 f"{'yes' if held <= eps * (1 + s['tolerance']) else 'NO'} |")
  held_out = (f"eval set `{s['eval_set']}`, {s['eval_examples']} questions per level from the "
              "evaluation part of the question space, never drawn in training; "
              f"run seed {s['run_seed']}, one seed" if "eval_set" in s else "one seed")
  lines += ["", f"Held-out greedy accuracy of M at the end (mean over levels; {held_out}) and "
            "wall time:", "",
            "| run | accuracy | wall time (s) |", "|---|---|---|"]
  for name in ("safe", "free", "budget"):
    run = result["runs"][name]
    lines.append(f"| {name} | {run['eval'].get('eval/accuracy/model/mean', float('nan')):.3f} | "
                 f"{run['seconds']:.0f} |")
  b = result["budget"]
  lines += ["", f"With the budget the projection was active in {b['projected']:.0%} of the "
            f"updates and the line search shortened {b['shortened']:.0%} of them; the KL the "
            f"updates started from never exceeded its phase's budget "
            f"(max KL / ε_k = {b['max_ratio']:.3f}).", ""]
  return "\n".join(lines)


# The flags, in the order the result's "settings" record them.
FLAG_NAMES = ("workdir", "results", "safe_steps", "mode", "phases", "phase_steps", "epsilon0",
              "growth", "margin", "parallel", "tolerance", "from_results")


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  cli.define_study_flags(
      values, workdir="workdir/kl_budget_study", results=RESULTS, parallel=True,
      from_results=True,
      help={"results": "output path prefix (.md/.json/.png)",
            "parallel": "fine-tunes at a time (2: both at once, one process each)",
            "from_results": "train and measure nothing: the table and plot again from "
                            "--results.json"})
  flags.DEFINE_integer("safe_steps", 600, "π_safe's amplification steps", **define)
  flags.DEFINE_enum("mode", "debate", ["hybrid", "debate"], "the fine-tunes' mode", **define)
  flags.DEFINE_integer("phases", 4, "phases of the fine-tunes", **define)
  flags.DEFINE_integer("phase_steps", 50, "updates per phase", **define)
  flags.DEFINE_float("epsilon0", 0.01, "the budget of phase 0", **define)
  flags.DEFINE_float("growth", 2.0, "the budget's growth per phase", **define)
  flags.DEFINE_float("margin", 0.1, "the budget's margin", **define)
  flags.DEFINE_float("tolerance", 1e-3, "relative tolerance of the 'within budget' column",
                     **define)
  return values


def execute(args: flags.FlagValues, command: str) -> dict:
  """The study the parsed flags ``args`` ask for (the module docstring); returns its result.
  ``command`` is the command line the table records."""
  if args.from_results:
    with open(args.results + ".json") as f:
      result = json.load(f)
    write(result, result["settings"]["command"], args.results)
    return result
  spec = (f"{SWEEP}:safe_steps={args.safe_steps},mode={args.mode},phases={args.phases},"
          f"phase_steps={args.phase_steps},epsilon0={args.epsilon0},growth={args.growth},"
          f"margin={args.margin}")
  built = _stage(spec, "safe", args.workdir) + _stage(spec, "finetune", args.workdir,
                                                        args.parallel)
  by_name = {r.name: r for r in built}
  runs = {name: run_record(by_name[name]) for name in ("safe", "free", "budget")}
  safe_dir, config = by_name["safe"].workdir, by_name["budget"].config
  task = config_lib.make_task(config)
  model = config_lib.make_model(config, task)
  k = config.safety.kl_budget
  prompts = kl_budget.reference_prompts(task, k.num_prompts, k.seed)
  safe_state, _, _ = train.load_state(safe_dir)
  ends = [(p + 1) * args.phase_steps for p in range(args.phases)]
  budgets = kl_budget.schedule(args.epsilon0, args.growth, args.phases)
  kls = {name: phase_end_kls(os.path.join(args.workdir, name), ends, safe_state.params, model,
                             prompts, task.answer_len, config.step.temperature)
         for name in ("free", "budget")}
  budget_dir = os.path.join(args.workdir, "budget")
  updates, per_update = _per_update_kl(budget_dir)
  rows = [r for r in metrics_io.read_jsonl(os.path.join(budget_dir, "metrics.jsonl"))
          if "kl/value" in r]
  result = {
      "settings": {**{name: args[name].value for name in FLAG_NAMES},
                   "task_options": dict(config.task_options), "num_prompts": k.num_prompts, "seed": k.seed, "command": command,
                   "eval_set": by_name["budget"].summary["eval_set"],
                   "eval_examples": config.eval.examples_per_difficulty,
                   "run_seed": config.seed},
      "phase_ends": ends, "budgets": budgets,
      "free": {"phase_end_kl": kls["free"]},
      "budget": {"phase_end_kl": kls["budget"], "updates": updates, "per_update_kl": per_update,
                 "projected": float(np.mean([r["kl/multiplier"] > 0 for r in rows])),
                 "shortened": float(np.mean([r["kl/step_scale"] < 1 for r in rows])),
                 "max_ratio": float(max(r["kl/value"] / r["kl/budget"] for r in rows))},
      "runs": runs,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
  with open(args.results + ".json", "w") as f:
    json.dump(result, f, indent=2)
  write(result, command, args.results)
  return result


# command_line(argv) in this process, and absl's main.
command_line, main = cli.recorded(define_flags, execute, PROGRAM)


def write(result: dict, command: str, results: str) -> None:
  """The table (``results``.md, printed) and the plot (.png) of a result."""
  text = markdown(result, command)
  with open(results + ".md", "w") as f:
    f.write(text)
  plot(result, results + ".png")
  print(text)


if __name__ == "__main__":
  cli.run(define_flags, main)
