"""Seeds (and hyperparameter settings) vmapped in one program: cost of S runs' steps against one.

    python benchmarks/seeds.py [--task permutation] [--mode hybrid] [--seeds 1,2,4,8]
        [--learning-rates ''] [--steps 5] [--repeats 3] [--out FILE]

The step is built as the trainer builds it (``experiments/configs/default.py:task=<task>,
mode=<mode>,runlocal``, ``quickstart`` for permutation: ``default.cpu_arg``). S independent runs
are S states initialised from S seeds (with ``--learning-rates``, S learning rates cycled over
them: hyperparameters are data in the state, ``step.init_state(..., hparams=...)``), stepped together by ``jax.jit(jax.vmap(train_step))``
with S step keys; one seed runs the plain jitted step. Reported: the median time per step of S
runs over ``--repeats`` blocks of ``--steps`` steps, and its ratio to one run's (issue 11, goal 4:
4 seeds <= 2x one seed). Each run's result is its own: the test suite checks that a vmapped run
equals the same run stepped alone (tests/test_step.py).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

from amp_debate import cli  # noqa: E402
from amp_debate.train import step as step_lib  # noqa: E402
from experiments.configs import default  # noqa: E402


def build(task_name: str, mode: str):
  config = default.get_config(default.cpu_arg(task_name, mode))
  config.curriculum.kind = "off"  # every level from the first step: the full cost
  task, model, tx, step_config, pure = common.build_step(config)

  def init(seed, learning_rate):
    hparams = None if learning_rate is None else {"learning_rate": learning_rate}
    return step_lib.init_state(task, model, tx, step_config, jax.random.key(seed),
                               hparams=hparams)

  return pure, init


def time_steps(step_fn, state, keys, steps: int, repeats: int) -> float:
  """Median seconds per step over ``repeats`` blocks of ``steps`` steps (after two warm-up
  steps)."""
  for i in range(2):
    state, _ = step_fn(state, keys(i))
  jax.block_until_ready(state)
  blocks = []
  for r in range(repeats):
    start = time.perf_counter()
    for i in range(steps):
      state, metrics = step_fn(state, keys(2 + r * steps + i))
    jax.block_until_ready((state, metrics))
    blocks.append((time.perf_counter() - start) / steps)
  return statistics.median(blocks)


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this script
  runs as the program, so importing it defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("task", "permutation", "the task", **define)
  flags.DEFINE_string("mode", "hybrid", "the training mode", **define)
  flags.DEFINE_string("seeds", "1,2,4,8", "comma-separated numbers of runs", **define)
  flags.DEFINE_string("learning-rates", "",
                      "comma-separated learning rates cycled over the runs ('' : the config's)",
                      **define)
  flags.DEFINE_integer("steps", 5, "steps per timed block", **define)
  flags.DEFINE_integer("repeats", 3, "timed blocks", **define)
  flags.DEFINE_string("out", "", "also write the report (markdown) here", **define)
  return values


def execute(values: flags.FlagValues) -> dict:
  """The benchmark the parsed flags ``values`` ask for (the module docstring)."""
  args = cli.namespace(values)
  counts = sorted({int(s) for s in args.seeds.split(",") if s})
  rates = [float(x) for x in args.learning_rates.split(",") if x]
  pure, init = build(args.task, args.mode)
  single = jax.jit(pure, donate_argnums=0)
  batched = jax.jit(jax.vmap(pure), donate_argnums=0)

  rows, base, times = [], None, {}
  for s in counts:
    if s == 1:
      state = jax.jit(lambda: init(0, rates[0] if rates else None))()
      t = time_steps(single, state, lambda i: jax.random.key(i), args.steps, args.repeats)
    else:
      lrs = jnp.asarray([rates[i % len(rates)] for i in range(s)], jnp.float32) if rates \
          else None
      state = jax.jit(jax.vmap(init))(jnp.arange(s), lrs) if rates else \
          jax.jit(jax.vmap(lambda seed: init(seed, None)))(jnp.arange(s))
      t = time_steps(batched, state,
                     lambda i, s=s: jax.vmap(lambda j: jax.random.fold_in(
                         jax.random.key(i), j))(jnp.arange(s)), args.steps, args.repeats)
    base = base or t
    times[s] = t
    rows.append(f"| {s} | {t * 1e3:.1f} ms | {t / base:.2f}x | {t / s * 1e3:.1f} ms |")
    print(rows[-1], file=sys.stderr, flush=True)
  device = jax.devices()[0]
  lr_note = f", learning rates {rates} cycled over the runs" if rates else ""
  report = (f"Vmapped runs: {args.mode} step, {args.task} runlocal config (every level), "
            f"{device.platform} ({os.cpu_count()} host cores), jax {jax.__version__}{lr_note}; "
            f"median of {args.repeats} blocks of {args.steps} steps.\n\n"
            "| runs (seeds) | time per step of all runs | vs one run | per run |\n"
            "|---|---|---|---|\n" + "\n".join(rows) +
            f"\n\nCommand: python benchmarks/seeds.py --task {args.task} --mode {args.mode} "
            f"--seeds {args.seeds} --learning-rates '{args.learning_rates}' --steps {args.steps} "
            f"--repeats {args.repeats}\n")
  common.emit(report, args.out)
  return {"times": times, "report": report}


def command_line(argv: list[str]) -> dict:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="seeds.py")


def main(argv) -> None:
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)

if __name__ == "__main__":
  cli.run(define_flags, main)
