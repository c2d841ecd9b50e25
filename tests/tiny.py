"""The one tiny training setup of the step-level and trainer tests, defined once.

A seconds-sized hybrid run: permutation n=4, k <= 4; a 1-layer d=32 model (d divisible by the
fsdp axis of 4 in the sharding tests); batch 8; 4-turn debates with the learned stop and assigned
claims. ``config`` is it as a trainer config (``experiments/configs/default.py``'s schema);
``TASK``, ``MODEL`` and ``step_config`` are the objects the trainer builds from it, which
``test_step``, ``test_sharding`` (through ``multihost_worker``) and ``test_trainer`` share, so
the step programs they compile differ only where a test needs them to (the optimiser, one option)
and a process's in-memory compilation cache serves repeats.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from amp_debate import sweep
from amp_debate.procedure import curriculum
from amp_debate.train import config_lib
from amp_debate.train import step as step_lib
from experiments.configs import default

BATCH = 8
T_MAX = 4


def config(mode: str = "hybrid", steps: int = 4, **overrides) -> ml_collections.ConfigDict:
  """The tiny run as a trainer config; ``overrides``: ``section__field=value`` (set as the sweep
  runner sets a dotted field: an unknown field or a value of the wrong type is refused)."""
  c = default.get_config(f"task=permutation,mode={mode},quickstart")
  c.task_options.n, c.task_options.max_exponent = 4, 4
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 1, 32, 2, 64
  c.num_steps, c.batch_size, c.log_every = steps, BATCH, 1
  if mode != "amplification":
    c.debate.t_max = T_MAX
  if mode in ("hybrid", "debate"):
    c.debate.learned_stop = True
  c.step.distill_subquestions = True  # the full-size default (runlocal turns it off)
  return sweep.override(c, {k.replace("__", "."): v for k, v in overrides.items()}, "tiny.config")


def cli_args(c: ml_collections.ConfigDict) -> list[str]:
  """``amp_debate.main`` arguments that give the config ``c`` (of the permutation quickstart
  config's schema and mode): the default config file and a flag for every field that differs."""
  arg = f"task=permutation,mode={c.mode},quickstart"
  base = config_lib.flatten(default.get_config(arg))
  return [f"--config=experiments/configs/default.py:{arg}"] + [
      f"--config.{name}={value}" for name, value in config_lib.flatten(c).items()
      if base.get(name) != value]


CONFIG = config()
TASK = config_lib.make_task(CONFIG)
MODEL = config_lib.make_model(CONFIG, TASK)


def step_config(debate_options: dict | None = None, **options) -> step_lib.StepConfig:
  """The tiny run's step options with the curriculum off (a step-level test samples every level
  from the first step); ``debate_options`` and ``options`` replace DebateConfig / StepConfig
  fields."""
  base = config_lib.make_step_config(CONFIG)
  played = dataclasses.replace(base.debate, **(debate_options or {}))
  return dataclasses.replace(base, debate=played,
                             curriculum=curriculum.CurriculumConfig(kind="off"), **options)
