"""The difficulty curriculum: off, fixed schedule, adaptive on agreement with Amp′(H, M_target)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate.procedure import curriculum

MAX = 4


def _run(kind, agreements, **options):
  """Applies update once per agreement value (jitted); returns the states after each step."""
  config = curriculum.CurriculumConfig(kind=kind, **options)
  update = jax.jit(functools.partial(curriculum.update, config=config, max_level=MAX))
  state, states = curriculum.init(config, MAX), []
  for step, agreement in enumerate(agreements):
    state = update(state, jnp.int32(step), jnp.float32(agreement))
    states.append(jax.device_get(state))
  return states


def test_init():
  assert int(curriculum.init(curriculum.CurriculumConfig(kind="off"), MAX).level) == MAX
  for kind in ("fixed", "adaptive"):
    state = curriculum.init(curriculum.CurriculumConfig(kind=kind), MAX)
    assert int(state.level) == 0 and int(state.steps_at_level) == 0 and float(state.agreement) == 0
    assert state.level.dtype == jnp.int32 and state.agreement.dtype == jnp.float32


def test_off_is_max_level_always():
  states = _run("off", [0.0, 1.0, 0.0])
  assert [int(s.level) for s in states] == [MAX] * 3
  assert int(curriculum.max_difficulty(states[-1])) == MAX


def test_fixed_schedule():
  states = _run("fixed", [0.0] * 14, steps_per_level=3)
  assert [int(s.level) for s in states] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4]
  assert [int(s.steps_at_level) for s in states[:5]] == [1, 2, 3, 0, 1]


def test_adaptive_raises_when_agreement_is_high():
  states = _run("adaptive", [1.0] * 3, threshold=0.9, ema=0.0, min_steps=1)
  assert [int(s.level) for s in states] == [1, 2, 3]
  # EMA and step counter reset on each raise.
  assert all(float(s.agreement) == 0 and int(s.steps_at_level) == 0 for s in states)


def test_adaptive_holds_when_agreement_is_low():
  states = _run("adaptive", [0.85] * 50, threshold=0.9, ema=0.5, min_steps=1)
  assert all(int(s.level) == 0 for s in states)
  np.testing.assert_allclose(float(states[-1].agreement), 0.85, rtol=1e-5)
  assert int(states[-1].steps_at_level) == 50


def test_adaptive_ema_and_min_steps():
  # EMA 0.5 from 0 with agreement 1: 0.5, 0.75, 0.875, 0.9375 -> passes 0.9 at the 4th step.
  states = _run("adaptive", [1.0] * 4, threshold=0.9, ema=0.5, min_steps=1)
  np.testing.assert_allclose([float(s.agreement) for s in states[:3]], [0.5, 0.75, 0.875])
  assert [int(s.level) for s in states] == [0, 0, 0, 1]
  # min_steps holds the level even when the EMA is already over the threshold.
  states = _run("adaptive", [1.0] * 6, threshold=0.9, ema=0.0, min_steps=3)
  assert [int(s.level) for s in states] == [0, 0, 1, 1, 1, 2]


def test_adaptive_never_exceeds_max_level():
  states = _run("adaptive", [1.0] * 20, threshold=0.5, ema=0.0, min_steps=1)
  assert max(int(s.level) for s in states) == MAX
  assert int(states[-1].level) == MAX
  assert float(states[-1].agreement) == 1.0  # still tracked at the top, no reset


def test_simulated_loop_rises_then_stops():
  """M masters levels below 3 but never level 3: the level climbs to 3 and stays (inside jit)."""
  config = curriculum.CurriculumConfig(kind="adaptive", threshold=0.9, ema=0.8, min_steps=5)
  update = functools.partial(curriculum.update, config=config, max_level=MAX)

  def step(state, t):
    agreement = jnp.where(curriculum.max_difficulty(state) < 3, 0.97, 0.6)
    state = update(state, t, agreement)
    return state, state.level

  _, levels = jax.jit(lambda s: jax.lax.scan(step, s, jnp.arange(200)))(
      curriculum.init(config, MAX))
  levels = np.asarray(levels)
  assert levels[-1] == 3 and levels.max() == 3
  assert np.all(np.diff(levels) >= 0)
  first = [int(np.argmax(levels == k)) for k in (1, 2, 3)]
  assert first[0] >= 5 and np.all(np.diff(first) >= 5)  # min_steps dwell at each level


def test_amplified_agreement():
  model = jnp.asarray([[1, 2], [3, 4], [5, 6], [7, 8]], jnp.int32)
  amplified = jnp.asarray([[1, 2], [3, 0], [5, 6], [0, 8]], jnp.int32)
  np.testing.assert_allclose(curriculum.amplified_agreement(model, amplified), 0.5)
  valid = jnp.asarray([1, 1, 1, 0], bool)
  np.testing.assert_allclose(curriculum.amplified_agreement(model, amplified, valid), 2 / 3)
  assert curriculum.amplified_agreement(model, amplified, jnp.zeros(4, bool)) == 0


@pytest.mark.parametrize("options, name", [({"kind": "linear"}, "kind"),
                                           ({"threshold": 0.0}, "threshold"),
                                           ({"threshold": 1.5}, "threshold"),
                                           ({"ema": 1.0}, "ema"),
                                           ({"ema": -0.5}, "ema"),
                                           ({"min_steps": 0}, "min_steps"),
                                           ({"steps_per_level": 0}, "steps_per_level"),
                                           ({"steps_per_level": 2.0}, "steps_per_level")])
def test_bad_options(options, name):
  with pytest.raises(ValueError, match=f"CurriculumConfig.{name} must be"):
    curriculum.CurriculumConfig(**options)


def test_bad_max_level():
  config = curriculum.CurriculumConfig(kind="fixed")
  with pytest.raises(ValueError, match="max_level"):
    curriculum.init(config, -1)
  with pytest.raises(ValueError, match="max_level"):
    curriculum.update(curriculum.init(config, MAX), 0, jnp.float32(1.0), config, max_level=-1)


def test_debiased_agreement_opens_a_level_after_min_steps():
  """Full agreement from a raise: the plain EMA (from 0) needs 22 updates to reach 0.9; the
  bias-corrected one is 1 from the first update, so ``min_steps`` (5) alone sets the dwell."""
  def steps_to_raise(debias):
    config = curriculum.CurriculumConfig(kind="adaptive", threshold=0.9, ema=0.9, min_steps=5,
                                         debias=debias)
    state = curriculum.init(config, 2)
    for n in range(1, 100):
      state = curriculum.update(state, n, jnp.float32(1.0), config, 2)
      if int(state.level) == 1:
        return n
  assert steps_to_raise(False) == 22
  assert steps_to_raise(True) == 5
  # Half agreement never passes either way (the correction does not inflate a steady signal).
  config = curriculum.CurriculumConfig(kind="adaptive", threshold=0.9, ema=0.9, min_steps=1,
                                       debias=True)
  state = curriculum.init(config, 2)
  for n in range(50):
    state = curriculum.update(state, n, jnp.float32(0.5), config, 2)
  assert int(state.level) == 0
