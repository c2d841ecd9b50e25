"""What the benchmark scripts share: timing a jitted call, reading compiled FLOPs, writing a report.

Imported by the scripts in this folder (run as ``python benchmarks/<name>.py``, which puts this
folder on ``sys.path``).
"""

from __future__ import annotations

import os
import time

import jax


def call_times(fn, *args, repeats: int) -> list[float]:
  """Seconds of each of ``repeats`` calls of ``fn(*args)`` (results blocked on), after one untimed
  call that compiles and warms up."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def compiled_flops(compiled) -> float:
  """FLOPs of a compiled program by XLA's cost analysis (loop bodies counted once)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def emit(report: str, out: str) -> None:
  """Prints the report and, when ``out`` is not empty, writes it there too."""
  print(report)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
      f.write(report)


def build_step(config):
  """The pure train step of a trainer config, built as the trainer builds it (one device):
  (task, model, tx, step_config, step) with ``step(state, rng) -> (state, metrics)``."""
  from amp_debate.train import config_lib  # noqa: PLC0415  (the repo root is on sys.path by now)
  from amp_debate.train import step as step_lib  # noqa: PLC0415

  config_lib.validate(config, num_devices=1)
  task = config_lib.make_task(config)
  model = config_lib.make_model(config, task)
  tx = config_lib.make_optimizer(config)
  step_config = config_lib.make_step_config(config)
  if config.mode == "supervised":
    pure = step_lib.build_supervised_step(task, model, tx, step_config)
  else:
    pure = step_lib.build_train_step(task, model, tx, step_config,
                                     combination=config.combination.kind)
  return task, model, tx, step_config, pure
