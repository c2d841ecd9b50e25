"""Debate rollout cost against t_max and batch: the scan over every round, the early-exit while
loop, and a host loop over rounds.

    python benchmarks/rollout.py [--task permutation] [--task-options max_exponent=16]
        [--t_max 4,8,12,32] [--batch 64]
        [--host-batches 64,256,1024] [--host-t-max 12] [--repeats 5]
        [--out FILE]

Self-play of an untrained M (the CPU-sized model of ``experiments/configs/default.py``,
``default.cpu_arg``: the quick start for permutation) on questions at the task's top level, as
the train step plays it (M_target in both seats, the config's call rule, stop rule and assigned
claims), jitted once per (t_max, variant). Both variants give identical
games (tests/test_debate.py); the scan runs all t_max rounds with finished games masked, the while
loop stops when every game in the batch is done. Median of ``--repeats`` calls after one untimed
call; the ratio to the smallest t_max shows whether cost follows t_max or the actual debate length.
``--task-options`` overrides the task's options (e.g. ``max_exponent=16``: four levels below the
root, so debates run past 4 arguments, which the quick-start task's never do).
``--players oracle-liar`` plays scripted games instead: the consistent liar
(``players.LiarDebater``, style "consistent") in the assigned even seat against the honest oracle
(``players.OracleDebater``), H called in every claim, no learned stop. The liar moves its lie down
the tree, so games run to a leaf (2 + 2 arguments per level below the question). No model pass is
made: the cost is the protocol's (H's checks and recombinations, the liar's search), and the
table shows whether it follows the games' length or t_max. The host-loop comparison is skipped.

The second table compares, at ``--host-t-max`` and each of ``--host-batches``, the two on-device
loops with the way research code typically plays multi-turn games: a Python loop calling a
jitted per-round function (``debate.rollout_round``), reading back whether every game is done
before each round (one device-to-host sync per round), then a jitted finish.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys

import common
import jax
import jax.numpy as jnp
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from amp_debate import cli  # noqa: E402
from amp_debate.procedure import debate, players  # noqa: E402
from amp_debate.procedure.model_player import ModelDebater  # noqa: E402
from amp_debate.train import config_lib  # noqa: E402
from experiments.configs import default  # noqa: E402


def host_comparison(task, model, params, played, batch: int, t_max: int, repeats: int) -> str:
  """One markdown row: the scan, the while loop and the host loop at ``batch`` and ``t_max``."""
  import numpy as np  # noqa: PLC0415

  questions = task.sample(jax.random.key(1), batch, difficulty=task.max_difficulty).questions
  options = dataclasses.replace(played, t_max=t_max)
  m_of = lambda p: ModelDebater(model=model, params=p, task=task, temperature=1.0)

  def assignments(rng, n):
    return (debate.sample_assignments(rng, n, options.assign_prob)
            if options.assign_prob > 0 else None)

  def on_device(early_exit):
    chosen = dataclasses.replace(options, early_exit=early_exit)
    return jax.jit(lambda p, q, rng: debate.rollout(task, m_of(p), m_of(p), q, rng, chosen,
                                                    assigned=assignments(rng, q.shape[0])))

  start = jax.jit(lambda p, q, rng: debate.rollout_start(
      task, m_of(p), m_of(p), q, rng, options, assigned=assignments(rng, q.shape[0])))
  one_round = jax.jit(lambda p, carry, r, rng: debate.rollout_round(
      task, m_of(p), m_of(p), carry, r, rng, options))
  finish = jax.jit(lambda p, carry, rng: debate.rollout_finish(task, m_of(p), m_of(p), carry,
                                                               rng, options))

  def host_loop(p, q, rng):
    carry = start(p, q, rng)
    for r in range(1, options.num_rounds):
      if bool(carry[0].done.all()):  # the host reads the games' state back each round
        break
      carry = one_round(p, carry, jnp.int32(r), rng)
    return finish(p, carry, rng)

  rng = jax.random.key(2)
  results, times = [], []
  for fn in (on_device(False), on_device(True), host_loop):
    results.append(fn(params, questions, rng))
    times.append(statistics.median(common.call_times(fn, params, questions, rng,
                                                     repeats=repeats)))
  for other in results[1:]:  # the three drivers play the same games
    np.testing.assert_array_equal(np.asarray(other[0].winner), np.asarray(results[0][0].winner))
  game = results[0][0]
  cells = [f"{t * 1e3:.1f} ms ({t / times[2]:.2f}x)" for t in times]
  return (f"| {batch} | " + " | ".join(cells) +
          f" | {float(game.num_args.mean()):.2f} (max {int(game.num_args.max())}) |"), times


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this script
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("task", "permutation", "the task", **define)
  flags.DEFINE_string("t_max", "4,8,12,32", "comma-separated debate lengths", **define)
  flags.DEFINE_string("task-options", "", "comma-separated key=value task options (JSON values)",
                      **define)
  flags.DEFINE_integer("batch", 64, "games per rollout", **define)
  flags.DEFINE_string("host-batches", "64,256,1024",
                      "comma-separated batches of the host-loop comparison ('' for none)", **define)
  flags.DEFINE_integer("host-t-max", 12, "t_max of the host-loop comparison", **define)
  flags.DEFINE_integer("repeats", 5, "timed calls (the median is reported)", **define)
  flags.DEFINE_enum("players", "m", ["m", "oracle-liar"],
                    "m: self-play of an untrained M; oracle-liar: scripted games to a leaf",
                    **define)
  flags.DEFINE_string("out", "", "also write the report (markdown) here", **define)
  return values


def execute(values: flags.FlagValues) -> dict:
  """The benchmark the parsed flags ``values`` ask for (the module docstring)."""
  args = cli.namespace(values)
  scripted = args.players == "oracle-liar"
  try:
    lengths = sorted({int(t) for t in args.t_max.split(",") if t})
  except ValueError:
    cli.fail(f"--t_max must be comma-separated integers, got {args.t_max!r}")
  if not lengths or lengths[0] < 1 or args.batch < 1 or args.repeats < 1:
    cli.fail("--t_max values, --batch and --repeats must be >= 1")

  config = default.get_config(default.cpu_arg(args.task, "hybrid"))
  for item in filter(None, args.task_options.split(",")):
    key, eq, value = item.partition("=")
    if not eq or key not in config.task_options:
      cli.fail(f"--task-options: {item!r} is not key=value of {sorted(config.task_options)}")
    config.task_options[key] = json.loads(value)
  task = config_lib.make_task(config)
  model = config_lib.make_model(config, task)
  played = config_lib.make_step_config(config).debate
  params = jax.jit(model.init)(jax.random.key(0))
  questions = task.sample(jax.random.key(1), args.batch, difficulty=task.max_difficulty).questions

  rows, base, medians = [], {}, {}
  for t_max in lengths:
    cells = [str(t_max)]
    for early_exit in (False, True):
      options = dataclasses.replace(played, t_max=t_max, early_exit=early_exit)
      if scripted:
        options = debate.DebateConfig(t_max=t_max, call_prob=1.0, learned_stop=False,
                                      early_exit=early_exit, assign_prob=0.0)

      def play(params, questions, rng, options=options):
        if scripted:  # the liar in the even seat, assigned; the oracle computes honestly
          assigned = jnp.zeros((questions.shape[0],), jnp.int32)
          return debate.rollout(task, players.LiarDebater(task, style="consistent"),
                                players.OracleDebater(task), questions, rng, options,
                                assigned=assigned, force_contest=False)[0]
        m = ModelDebater(model=model, params=params, task=task, temperature=1.0)
        assigned = (debate.sample_assignments(rng, questions.shape[0], options.assign_prob)
                    if options.assign_prob > 0 else None)
        return debate.rollout(task, m, m, questions, rng, options, assigned=assigned)[0]

      play = jax.jit(play)
      game = play(params, questions, jax.random.key(2))
      median = statistics.median(common.call_times(play, params, questions, jax.random.key(2),
                                                   repeats=args.repeats))
      base.setdefault(early_exit, median)
      medians[t_max, early_exit] = median
      cells.append(f"{median * 1e3:.1f} ms ({median / base[early_exit]:.2f}x)")
    cells.append(f"{float(game.num_args.mean()):.2f} (max {int(game.num_args.max())})")
    rows.append("| " + " | ".join(cells) + " |")
    print(rows[-1], file=sys.stderr, flush=True)

  host_rows, host_times = [], {}
  if args.host_batches and not scripted:
    for batch in sorted({int(b) for b in args.host_batches.split(",") if b}):
      row, host_times[batch] = host_comparison(task, model, params, played, batch,
                                               args.host_t_max, args.repeats)
      host_rows.append(row)
      print(row, file=sys.stderr, flush=True)

  device = jax.devices()[0]
  options = f" ({args.task_options})" if args.task_options else ""
  report = (f"Debate rollout by t_max: {args.task}{options} (top level, {task.max_difficulty + 1} "
            f"levels), "
            f"{'scripted: the consistent liar against the oracle' if scripted else 'untrained runlocal M'}"
            f", batch "
            f"{args.batch}, {device.platform} ({os.cpu_count()} host cores), jax {jax.__version__}; "
            f"median of {args.repeats}; in brackets the ratio to t_max = {lengths[0]}.\n\n"
            "| t_max | scan (all rounds) | early-exit while loop | arguments per debate |\n"
            "|---|---|---|---|\n" + "\n".join(rows) +
            (f"\n\nAt t_max = {args.host_t_max}, by batch (same games in each column; in "
             "brackets the ratio to the host loop):\n\n| batch | scan (all rounds) | early-exit "
             "while loop | host loop over rounds | arguments per debate |\n|---|---|---|---|---|\n"
             + "\n".join(host_rows) if host_rows else "") +
            f"\n\nCommand: python benchmarks/rollout.py --task {args.task}"
            f"{' --task-options ' + args.task_options if args.task_options else ''} --t_max {args.t_max} "
            f"--batch {args.batch} --host-batches '{args.host_batches}' --host-t-max "
            f"{args.host_t_max} --repeats {args.repeats}"
            f"{' --players ' + args.players if scripted else ''}\n")
  common.emit(report, args.out)
  return {"medians": medians, "lengths": lengths, "host": host_times, "report": report}


def command_line(argv: list[str]) -> dict:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="rollout.py")


def main(argv) -> None:
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)

if __name__ == "__main__":
  cli.run(define_flags, main)
