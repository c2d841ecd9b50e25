"""Experiment configs: validation before anything compiles, and the objects a config describes.

A config is an ``ml_collections.ConfigDict`` (``experiments/configs/*.py``). ``validate`` checks
every field against ``FIELDS`` (dotted name -> check) and raises ``ConfigError`` naming the first
bad or unknown field, so a typo or a negative weight stops the run in milliseconds instead of
minutes into an XLA compile. The ``make_*`` functions build the task, model, optimiser and step
options from a validated config; ``SAFE_TO_CHANGE`` lists the fields a resumed run may change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import optax

from amp_debate import models, tasks
from amp_debate.procedure import combine, curriculum, debate, losses
from amp_debate.procedure.model_player import required_max_len
from amp_debate.train import step as step_lib

MODES = ("hybrid", "amplification", "debate", "supervised")


class ConfigError(ValueError):
  """A config field is unknown, missing or invalid (the message names it)."""


# ---- field checks ------------------------------------------------------------------------------
def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _int(lo: int | None = None) -> Callable[[Any], str | None]:
  def check(v):
    if not _is_int(v):
      return f"must be an integer, got {v!r}"
    if lo is not None and v < lo:
      return f"must be >= {lo}, got {v!r}"
    return None
  return check


def _number(lo: float | None = None, hi: float | None = None, *, lo_open=False, hi_open=False):
  def check(v):
    if not _is_number(v):
      return f"must be a finite number, got {v!r}"
    if lo is not None and (v < lo or (lo_open and v == lo)):
      return f"must be {'>' if lo_open else '>='} {lo}, got {v!r}"
    if hi is not None and (v > hi or (hi_open and v == hi)):
      return f"must be {'<' if hi_open else '<='} {hi}, got {v!r}"
    return None
  return check


def _choice(*choices):
  def check(v):
    return None if v in choices else f"must be one of {', '.join(map(repr, choices))}, got {v!r}"
  return check


def _bool(v):
  return None if isinstance(v, bool) else f"must be True or False, got {v!r}"


def _str(v):
  return None if isinstance(v, str) else f"must be a string, got {v!r}"


def _any(v):
  del v
  return None


def _mesh_axis(v):
  if not _is_int(v) or (v < 1 and v != -1):
    return f"must be a positive integer or -1 (all remaining devices), got {v!r}"
  return None


_WEIGHT = _number(0.0)
FIELDS: dict[str, Callable[[Any], str | None]] = {
    "task": _str,
    "task_options": _any,  # checked by the task itself (tasks.get raises naming the option)
    "mode": _choice(*MODES),
    "runlocal": _bool,
    "seed": _int(0),
    "num_steps": _int(1),
    "batch_size": _int(1),
    "log_every": _int(1),
    "model.preset": _choice(*models.PRESETS),
    "model.num_layers": _int(0),
    "model.d_model": _int(0),
    "model.num_heads": _int(0),
    "model.d_ff": _int(0),
    "model.mask": _choice(*models.config.MASKS),
    "model.positions": _choice(*models.config.POSITIONS),
    "model.dtype": _choice(*models.config.DTYPES),
    "optimizer.learning_rate": _number(0.0, lo_open=True),
    "optimizer.warmup_steps": _int(0),
    "optimizer.clip_norm": _number(0.0),
    "optimizer.b2": _number(0.0, 1.0, hi_open=True),
    "combination.kind": _choice("weighted", "constrained", "shaped"),
    "combination.weights.rl": _WEIGHT,
    "combination.weights.sup": _WEIGHT,
    "combination.weights.cat": _WEIGHT,
    "combination.weights_end.rl": _WEIGHT,
    "combination.weights_end.sup": _WEIGHT,
    "combination.weights_end.cat": _WEIGHT,
    "combination.anneal_steps": _int(0),
    "combination.limit": _number(0.0),
    "combination.multiplier_lr": _number(0.0, lo_open=True),
    "combination.beta": _number(0.0),
    "debate.t_max": _int(1),
    "debate.call_prob": _number(0.0, 1.0),
    "debate.confidence_threshold": _number(None, 1.0),
    "debate.learned_stop": _bool,
    "debate.force_stop_after": _int(0),
    "debate.assign_prob": _number(0.0, 1.0),
    "step.temperature": _number(0.0, lo_open=True),
    "step.clip_eps": _number(0.0, lo_open=True),
    "step.advantage": _choice(*losses.ADVANTAGE_KINDS),
    "step.target_period": _int(0),
    "step.target_ema": _number(0.0, 1.0, hi_open=True),
    "step.distill_subquestions": _bool,
    "curriculum.kind": _choice(*curriculum.KINDS),
    "curriculum.threshold": _number(0.0, 1.0, lo_open=True),
    "curriculum.ema": _number(0.0, 1.0, hi_open=True),
    "curriculum.min_steps": _int(1),
    "curriculum.steps_per_level": _int(1),
    "mesh.data": _mesh_axis,
    "mesh.fsdp": _mesh_axis,
    "distributed": _bool,
    "eval.every": _int(0),
    "eval.data_dir": _str,
    "eval.examples_per_difficulty": _int(1),
    "eval.batch_size": _int(1),
    "eval.debates": _bool,
    "checkpoint.every": _int(0),
    "checkpoint.keep": _int(1),
    "checkpoint.best_metric": lambda v: None if isinstance(v, str) and (
        v == "" or v.startswith("eval/")) else (
            f"must be '' or an eval metric such as 'eval/accuracy/model/mean', got {v!r}"),
    "checkpoint.async_save": _bool,
    "resume_allow_unsafe": _bool,
}

# Fields a resumed run may change without resume_allow_unsafe (they do not change what is learned).
SAFE_TO_CHANGE = ("num_steps", "log_every", "eval", "checkpoint", "resume_allow_unsafe", "mesh",
                  "distributed")


def flatten(config: Mapping | ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  """{"a.b": value} for every leaf; ``task_options`` is kept as one dict-valued leaf."""
  out = {}
  items = config.items() if isinstance(config, Mapping) else config.items()
  for key, value in items:
    name = f"{prefix}{key}"
    if name != "task_options" and isinstance(value, (Mapping, ml_collections.ConfigDict)):
      out.update(flatten(value, name + "."))
    else:
      out[name] = dict(value) if name == "task_options" else value
  return out


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the first unknown, missing or invalid field.

  Cross-field checks: the task and its options (``tasks.get``), the model shape (heads divide
  d_model), the mesh against ``num_devices`` (default: all devices) and the batch size against the
  number of data-parallel shards.
  """
  flat = flatten(config)
  unknown = sorted(set(flat) - set(FIELDS))
  if unknown:
    raise ConfigError(f"config.{unknown[0]}: unknown field (known top-level fields: "
                      f"{', '.join(sorted({k.split('.')[0] for k in FIELDS}))})")
  missing = sorted(set(FIELDS) - set(flat))
  if missing:
    raise ConfigError(f"config.{missing[0]}: missing field")
  for name, check in FIELDS.items():
    problem = check(flat[name])
    if problem:
      raise ConfigError(f"config.{name} {problem}")
  try:
    task = make_task(config)
  except ValueError as e:
    raise ConfigError(f"config.task_options: {e}") from None
  try:
    make_model(config, task)
  except ValueError as e:
    raise ConfigError(f"config.model: {e}") from None
  if config.mode != "supervised" and config.debate.force_stop_after > config.debate.t_max:
    raise ConfigError(f"config.debate.force_stop_after={config.debate.force_stop_after} exceeds "
                      f"config.debate.t_max={config.debate.t_max}")
  data, fsdp = mesh_shape(config, num_devices)
  if config.batch_size % (data * fsdp):
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                      f"{data * fsdp} data-parallel shards (mesh data={data} x fsdp={fsdp})")


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int | None = None) -> tuple[int, int]:
  """(data, fsdp) sizes with -1 resolved; ConfigError if they do not multiply to the devices."""
  n = jax.device_count() if num_devices is None else num_devices
  data, fsdp = config.mesh.data, config.mesh.fsdp
  if data == -1 and fsdp == -1:
    raise ConfigError("config.mesh: at most one of data, fsdp may be -1")
  if data == -1:
    data = n // fsdp if n % fsdp == 0 else 0
  if fsdp == -1:
    fsdp = n // data if n % data == 0 else 0
  if data * fsdp != n:
    raise ConfigError(f"config.mesh: data={config.mesh.data} x fsdp={config.mesh.fsdp} does not "
                      f"match the {n} devices")
  return data, fsdp


# ---- builders ----------------------------------------------------------------------------------
def make_task(config: ml_collections.ConfigDict) -> tasks.Task:
  return tasks.get(config.task, **dict(config.task_options))


def make_model(config: ml_collections.ConfigDict, task: tasks.Task) -> models.LanguageModel:
  overrides = {k: config.model[k] for k in ("num_layers", "d_model", "num_heads", "d_ff")
               if config.model[k]}
  model_config = models.preset(
      config.model.preset, task.vocab_size, required_max_len(task), mask=config.model.mask,
      positions=config.model.positions, dtype=config.model.dtype, pad_id=tasks.PAD, **overrides)
  return models.LanguageModel(model_config)


def _weight(config: ml_collections.ConfigDict, name: str):
  start, end = config.combination.weights[name], config.combination.weights_end[name]
  steps = config.combination.anneal_steps
  if steps == 0 or start == end:
    return float(start)
  return optax.linear_schedule(float(start), float(end), steps)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """combination -> clip -> adam (with optional linear warm-up)."""
  kind = config.combination.kind
  if kind == "weighted":
    combination = combine.make("weighted", weights={k: _weight(config, k) for k in combine.OBJECTIVES})
  elif kind == "constrained":
    combination = combine.make("constrained", limit=config.combination.limit,
                               multiplier_lr=config.combination.multiplier_lr,
                               rl_weight=_weight(config, "rl"), cat_weight=_weight(config, "cat"))
  else:
    combination = combine.make("shaped", rl_weight=_weight(config, "rl"),
                               cat_weight=_weight(config, "cat"))
  lr = config.optimizer.learning_rate
  if config.optimizer.warmup_steps:
    lr = optax.linear_schedule(0.0, lr, config.optimizer.warmup_steps)
  return combine.chain(combination, clip_norm=config.optimizer.clip_norm or None,
                       optimizer=optax.adam(lr, b2=config.optimizer.b2))


def make_step_config(config: ml_collections.ConfigDict) -> step_lib.StepConfig:
  d, s, cur = config.debate, config.step, config.curriculum
  return step_lib.StepConfig(
      batch_size=config.batch_size,
      debate=debate.DebateConfig(
          t_max=d.t_max, call_prob=d.call_prob,
          confidence_threshold=None if d.confidence_threshold < 0 else d.confidence_threshold,
          learned_stop=d.learned_stop, force_stop_after=d.force_stop_after or None,
          assign_prob=d.assign_prob),
      temperature=s.temperature, clip_eps=s.clip_eps, advantage=s.advantage,
      target_period=s.target_period or None, target_ema=None if s.target_period else s.target_ema,
      curriculum=cur.kind, curriculum_threshold=cur.threshold, curriculum_ema=cur.ema,
      curriculum_min_steps=cur.min_steps, steps_per_level=cur.steps_per_level,
      shaped_beta=config.combination.beta if config.combination.kind == "shaped" else 0.0,
      distill_subquestions=s.distill_subquestions)
