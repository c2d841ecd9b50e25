"""The jitted train step: one update from debates, amplified targets and the three losses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from amp_debate import models, tasks
from amp_debate.procedure import combine, curriculum, debate, model_player
from amp_debate.train import step as step_lib

TASK = tasks.get("permutation", n=4, max_exponent=4)
MODEL = models.LanguageModel(models.preset("tiny", TASK.vocab_size,
                                           model_player.required_max_len(TASK)))
OFF = curriculum.CurriculumConfig(kind="off")


def _tx(weights):
  combination = (combine.make("shaped") if weights == "shaped" else
                 combine.make("weighted", weights=dict(weights)))
  return combine.chain(combination, clip_norm=1.0, optimizer=optax.sgd(0.1))


def _starts_with_a_number(question, argument):
  """A catastrophe predicate that fires on arguments starting with a number token (every claim
  that H recombined, so at least one per debate)."""
  return TASK.tokenizer.is_number(argument[0])


@functools.cache
def _run(weights, force_stop_after=None, steps=2, catastrophe=None):
  """Params, metrics after ``steps`` steps from a fixed init.

  weights: a tuple of (objective, λ) pairs for the weighted combination, or "shaped" (g_rl + g_cat,
  the supervised loss entering only through the reward, here with β = 0).
  """
  tx = _tx(weights)
  extra = {} if catastrophe is None else dict(catastrophe=catastrophe)
  config = step_lib.StepConfig(
      batch_size=8, curriculum=OFF, **extra,
      debate=debate.DebateConfig(t_max=4, learned_stop=True, force_stop_after=force_stop_after))
  state = step_lib.init_state(TASK, MODEL, tx, config, jax.random.key(0))
  combination = "shaped" if weights == "shaped" else "weighted"
  train_step = step_lib.make_train_step(TASK, MODEL, tx, config, combination=combination)
  history = []
  for i in range(steps):
    state, metrics = train_step(state, jax.random.key(i + 1))
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


ALL = (("rl", 1.0), ("sup", 1.0), ("cat", 1.0))


def _same_params(a, b):
  """Equal up to float32 rounding: the two programs compile to differently fused (but
  mathematically identical) sums, which moves results by about one ulp (seen: 3e-8)."""
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)


def test_step_updates_params_and_reports_finite_metrics():
  state, history = _run(ALL)
  init = jax.device_get(MODEL.init(jax.random.key(0)))
  assert int(state.step) == 2
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), state.params, init))
  assert max(moved) > 0
  for metrics in history:
    for name in ("loss/rl", "loss/sup", "loss/cat", "accuracy/model", "win/even"):
      assert np.isfinite(metrics[name]), name
    assert metrics["loss/sup"] > 0 and metrics["loss/cat"] == 0.0  # the never-firing predicate
    assert int(metrics["debate/length_hist"].sum()) == 8
    assert 0 <= float(metrics["accuracy/h_alone"]) <= 1
  # The target network moved towards M (Polyak averaging) but is not M.
  gap = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), state.params,
                                     state.target_params))
  assert max(gap) > 0


def test_force_stop_after_one_is_pure_imitative_amplification():
  state, history = _run(ALL, force_stop_after=1)
  for metrics in history:
    assert float(metrics["debate/mean_length"]) == 1.0
    assert float(metrics["grad_norm/rl"]) == 0.0  # no contest: zero reward, zero RL gradient
  pure_amplification, _ = _run((("rl", 0.0), ("sup", 1.0), ("cat", 0.0)), force_stop_after=1)
  _same_params(state.params, pure_amplification.params)


def test_zero_supervised_weight_is_pure_debate():
  state, history = _run((("rl", 1.0), ("sup", 0.0), ("cat", 1.0)))
  without_sup, _ = _run("shaped")  # a different code path that never reads the sup gradient
  _same_params(state.params, without_sup.params)
  assert all(float(m["weight/sup"]) == 0.0 for m in history)


def test_a_firing_catastrophe_predicate_is_penalised():
  _, history = _run(ALL, catastrophe=_starts_with_a_number)
  assert all(float(m["loss/cat"]) > 0 for m in history)
  assert all(float(m["grad_norm/cat"]) > 0 for m in history)


def test_bad_step_config_names_the_field():
  with pytest.raises(ValueError, match="StepConfig.batch_size must be >= 1"):
    step_lib.StepConfig(batch_size=0)
  with pytest.raises(ValueError, match="StepConfig.advantage must be one of"):
    step_lib.StepConfig(advantage="gae")
  with pytest.raises(ValueError, match="StepConfig.temperature must be > 0"):
    step_lib.StepConfig(temperature=0.0)
  with pytest.raises(ValueError, match="StepConfig.target_period and target_ema: give exactly one"):
    step_lib.StepConfig(target_period=None, target_ema=None)
  with pytest.raises(ValueError, match="StepConfig.curriculum must be a CurriculumConfig"):
    step_lib.StepConfig(curriculum="off")


@functools.cache
def _compiled(combination, advantage):
  """(tx, config, jitted train step), built once per combination and advantage kind: the β of
  the shaped combination is data in the state, so every β shares this step."""
  tx = combine.chain(combination, clip_norm=None, optimizer=optax.sgd(0.05))
  config = step_lib.StepConfig(
      batch_size=16, curriculum=OFF, advantage=advantage, target_period=1000, target_ema=None,
      debate=debate.DebateConfig(t_max=4, call_prob=0.5, learned_stop=False, assign_prob=0.5))
  kind = "shaped" if combination is _SHAPED else "constrained"
  return tx, config, step_lib.make_train_step(TASK, MODEL, tx, config, combination=kind)


@functools.cache
def _two_steps(combination, beta=None, advantage="none"):
  """Step 1 updates M from a fixed init; step 2 (same rollout: M_target is frozen by a long target
  period, same key) reports the distillation loss of the updated M on the same targets.
  ``beta``: the shaped β set in the initial state (None: the combination's own)."""
  tx, config, train_step = _compiled(combination, advantage)
  hparams = None if beta is None else {"beta": beta}
  state = step_lib.init_state(TASK, MODEL, tx, config, jax.random.key(0), hparams=hparams)
  state, first = train_step(state, jax.random.key(1))
  probe = jax.tree.map(jnp.copy, state)
  _, second = train_step(probe, jax.random.key(2))
  return jax.device_get(state), jax.device_get(first), jax.device_get(second)


_SHAPED = combine.make("shaped")


def test_shaped_penalty_reaches_the_update():
  """With β > 0 the argument-dependent penalty changes the policy-gradient update (the shaped
  combination reads no g_sup); tests/test_credit.py shows its direction on a tabular policy. The
  penalty enters the reward before the advantage baseline: the shaped advantages stay centred
  (a negative offset on every penalised row sharpened the policy onto its mode in a full run)."""
  plain, first, _ = _two_steps(_SHAPED, beta=0.0, advantage="baseline")
  shaped, shaped_first, _ = _two_steps(_SHAPED, beta=2.0, advantage="baseline")
  assert float(first["shaped/mismatch"]) > 0.1  # an untrained M often disagrees with Amp′
  assert abs(float(shaped_first["pg/advantage_mean"])) < 1e-5
  gap = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), plain.params,
                                     shaped.params))
  assert max(gap) > 1e-4


def test_constrained_runs_through_the_real_train_step():
  init = jax.device_get(MODEL.init(jax.random.key(0)))
  state, first, second = _two_steps(combine.make("constrained", limit=0.5, multiplier_lr=0.5))
  assert float(first["loss/sup"]) > 0.5  # violated: the multiplier rises from 0
  assert float(first["weight/sup"]) == 0.0 and float(second["weight/sup"]) > 0.0
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), state.params, init))
  assert max(moved) > 0 and all(np.isfinite(m) for m in moved)


def test_human_calls_are_split_by_where_they_were_spent():
  _, history = _run(ALL)
  for metrics in history:
    parts = [float(metrics[f"human_calls/{k}"]) for k in debate.CALL_KINDS + ("targets",)]
    np.testing.assert_allclose(sum(parts), float(metrics["human_calls/per_question"]), rtol=1e-6)
    assert float(metrics["human_calls/claims"]) >= 1.0  # call_prob 1: every root claim


def test_a_beta_sweep_reuses_one_compiled_step():
  """Three β values of the shaped reward run through one compiled step (β is data in the
  combination's state) and give three different updates."""
  runs = [_two_steps(_SHAPED, beta=beta, advantage="baseline") for beta in (0.0, 0.5, 2.0)]
  assert _compiled(_SHAPED, "baseline")[2]._cache_size() == 1
  for (a, _, _), (b, _, _) in [(runs[0], runs[1]), (runs[1], runs[2])]:
    gap = jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), a.params, b.params))
    assert max(gap) > 1e-5
  assert [float(combine.beta(state.opt_state)) for state, _, _ in runs] == [0.0, 0.5, 2.0]


def test_a_lambda_sweep_compiles_the_step_once_and_matches_constant_weights():
  """λ_sup ∈ {1, 0, 0.5}: one tx and one jitted step serve the sweep (states initialised with
  ``hparams``); each result equals the step built for that λ alone, and λ_sup = 0.5 equals the
  former path with λ a Python constant compiled into the program."""
  tx = _tx(ALL)
  config = step_lib.StepConfig(batch_size=8, curriculum=OFF,
                               debate=debate.DebateConfig(t_max=4, learned_stop=True))
  traces = []
  pure = step_lib.build_train_step(TASK, MODEL, tx, config)

  def counted(state, rng):
    traces.append(1)  # runs once per trace, i.e. per compilation
    return pure(state, rng)

  train_step = jax.jit(counted, donate_argnums=0)
  results = {}
  for lam in (1.0, 0.0, 0.5):
    state = step_lib.init_state(TASK, MODEL, tx, config, jax.random.key(0),
                                hparams={"weights": {"sup": lam}})
    for i in range(2):
      state, metrics = train_step(state, jax.random.key(i + 1))
      assert float(metrics["weight/sup"]) == lam
    results[lam] = jax.device_get(state.params)
  assert len(traces) == 1 and train_step._cache_size() == 1
  same = lambda a, b: jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)
  same(results[1.0], _run(ALL)[0].params)
  same(results[0.0], _run((("rl", 1.0), ("sup", 0.0), ("cat", 1.0)))[0].params)
  constant = lambda value: lambda count: value  # an optax schedule: compiled in
  compiled_in = combine.chain(
      combine.weighted({"rl": constant(1.0), "sup": constant(0.5), "cat": constant(1.0)}),
      clip_norm=1.0, optimizer=optax.sgd(0.1))
  state = step_lib.init_state(TASK, MODEL, compiled_in, config, jax.random.key(0))
  old_step = step_lib.make_train_step(TASK, MODEL, compiled_in, config)
  for i in range(2):
    state, _ = old_step(state, jax.random.key(i + 1))
  same(results[0.5], jax.device_get(state.params))
  gap = lambda a, b: max(jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), a, b)))
  assert gap(results[1.0], results[0.5]) > 0 and gap(results[0.5], results[0.0]) > 0
