"""The difficulty curriculum over D: which levels the training questions are sampled from.

Amplification bootstraps from the leaves. Measured: imitative amplification from an untrained M on
permutation powering with k uniform in 1..16 collapsed to a constant answer that agreed with its own
composed targets; an adaptive curriculum fixed it. Questions are sampled with difficulty up to the
current level (``task.sample(..., max_difficulty=max_difficulty(state))``), and the level rises when
M agrees with Amp′(H, M_target) on the current levels often enough (a threshold of 0.9 worked).

The signal is agreement with the *amplified target*, never ground truth (DESIGN.md section 2):
``task.solve`` must not drive the curriculum. ``amplified_agreement`` computes the signal.

Options travel as one frozen ``CurriculumConfig`` (checked on construction). Kinds:
  "off": level = max_level always (D over all levels).
  "fixed": level = min(max_level, step // steps_per_level): one level every steps_per_level steps.
  "adaptive": raise the level by one when the EMA of agreement is >= threshold and at least
    min_steps updates were made at this level; the EMA and the step counter restart at 0 on a raise.
    Starting from 0, the EMA needs about log(1 - threshold) / log(ema) steps of perfect agreement
    to pass the threshold (22 for threshold = ema = 0.9), a built-in dwell at each level; with
    ``debias`` the EMA is divided by the weight it has accumulated, 1 - ema^n after n updates
    at the level (as Adam corrects its moments), so it is the weighted mean of the agreement
    seen so far and ``min_steps`` alone sets the dwell.
The state lives in the train state (it checkpoints with it); ``update`` is pure and jittable.
"""

from __future__ import annotations

import dataclasses

import chex
import flax.struct
import jax
import jax.numpy as jnp

from amp_debate import checks

KINDS = ("off", "fixed", "adaptive")


@dataclasses.dataclass(frozen=True)
class CurriculumConfig:
  """Static curriculum options (checked on construction: ``checks.FieldError`` names the field).

  Attributes:
    kind: "off", "fixed" or "adaptive" (module docstring).
    threshold: "adaptive": raise when the agreement EMA is >= threshold, in (0, 1].
    ema: "adaptive": EMA decay in [0, 1) (0: this step's agreement alone).
    min_steps: "adaptive": least number of updates at a level before raising it (>= 1).
    steps_per_level: "fixed": steps per level (>= 1).
    debias: "adaptive": compare the bias-corrected EMA with the threshold (module docstring).

  The defaults are the default config's (``experiments/configs/default.py``; tests/test_config.py
  checks they agree).
  """

  kind: str = "adaptive"
  threshold: float = 0.9
  ema: float = 0.9
  min_steps: int = 20
  steps_per_level: int = 200
  debias: bool = False

  def __post_init__(self):
    checks.check_fields(
        self, kind=checks.choice(*KINDS), threshold=checks.number(0.0, 1.0, lo_open=True),
        ema=checks.number(0.0, 1.0, hi_open=True), min_steps=checks.integer(1),
        steps_per_level=checks.integer(1), debias=checks.boolean)


@flax.struct.dataclass
class CurriculumState:
  """Attributes:
    level: int32[] current maximum difficulty.
    agreement: float32[] EMA of M's agreement with Amp′(H, M_target) at this level (0 after a raise).
    steps_at_level: int32[] updates made since the level last changed.
  """

  level: jax.Array
  agreement: jax.Array
  steps_at_level: jax.Array


def _check_max_level(max_level: int) -> None:
  checks.check("curriculum", "max_level", max_level, checks.integer(0))


def init(config: CurriculumConfig, max_level: int) -> CurriculumState:
  """Initial state: level max_level for "off", else 0."""
  _check_max_level(max_level)
  return CurriculumState(level=jnp.asarray(max_level if config.kind == "off" else 0, jnp.int32),
                         agreement=jnp.zeros((), jnp.float32),
                         steps_at_level=jnp.zeros((), jnp.int32))


def update(state: CurriculumState, step: int | jax.Array, agreement: jax.Array,
           config: CurriculumConfig, max_level: int) -> CurriculumState:
  """The state after one training step.

  Args:
    state: current state.
    step: int or int32[]: the training step (used by "fixed").
    agreement: float32[]: fraction of this step's questions (sampled at the current levels) on which
      M's answer equals Amp′(H, M_target)'s answer, from ``amplified_agreement``. Must NOT be
      computed from ground truth.
    config: the options (static).
    max_level: the task's maximum difficulty.
  Returns:
    The new CurriculumState; the level never exceeds max_level.
  """
  _check_max_level(max_level)
  agreement = jnp.asarray(agreement, jnp.float32)
  chex.assert_shape(agreement, ())
  average = config.ema * state.agreement + (1.0 - config.ema) * agreement
  if config.kind == "off":
    level = jnp.asarray(max_level, jnp.int32)
  elif config.kind == "fixed":
    level = jnp.minimum(jnp.asarray(step, jnp.int32) // config.steps_per_level, max_level)
  else:
    seen = average
    if config.debias:  # the EMA's weight after n = steps_at_level + 1 updates from 0
      weight = 1.0 - jnp.power(jnp.float32(config.ema), (state.steps_at_level + 1).astype(
          jnp.float32))
      seen = average / jnp.maximum(weight, 1e-6)
    ready = (seen >= config.threshold) & (state.steps_at_level + 1 >= config.min_steps)
    level = jnp.where(ready & (state.level < max_level), state.level + 1, state.level)
  level = level.astype(jnp.int32)
  raised = level != state.level
  return CurriculumState(
      level=level,
      agreement=jnp.where(raised, 0.0, average).astype(jnp.float32),
      steps_at_level=jnp.where(raised, 0, state.steps_at_level + 1).astype(jnp.int32))


def max_difficulty(state: CurriculumState) -> jax.Array:
  """int32[]: the level to pass as ``task.sample(..., max_difficulty=...)``."""
  return state.level


def amplified_agreement(model_answers: jax.Array, amplified_answers: jax.Array,
                        valid: jax.Array | None = None) -> jax.Array:
  """float32[]: fraction of questions where M's answer equals the amplified answer (all tokens).

  The curriculum signal. ``amplified_answers`` must come from Amp′(H, M_target) (preferably
  ``AmpOutput.amplified``, or restrict ``valid`` to ``AmpOutput.called``: where H was not called,
  Amp′ is M_target's own answer and agreement with it says little), NEVER from ``task.solve``.

  Args:
    model_answers: int32[B, La] M's answers.
    amplified_answers: int32[B, La].
    valid: optional bool[B], questions that count; 0 when none does.
  """
  chex.assert_rank(model_answers, 2)
  chex.assert_equal_shape([model_answers, amplified_answers])
  same = jnp.all(model_answers == amplified_answers, axis=-1)
  valid = jnp.ones(same.shape, jnp.bool_) if valid is None else valid
  chex.assert_shape(valid, same.shape)
  return (jnp.sum(same & valid) / jnp.maximum(jnp.sum(valid), 1)).astype(jnp.float32)
