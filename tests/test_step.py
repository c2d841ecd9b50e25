"""The jitted train step: one update from debates, amplified targets and the three losses."""

import functools

import jax
import numpy as np
import optax
import pytest

from amp_debate import models, tasks
from amp_debate.procedure import combine, debate, model_player, players
from amp_debate.train import step as step_lib

TASK = tasks.get("permutation", n=4, max_exponent=4)
MODEL = models.LanguageModel(models.preset("tiny", TASK.vocab_size,
                                           model_player.required_max_len(TASK)))


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
      batch_size=8, curriculum="off", **extra,
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
  with pytest.raises(ValueError, match="batch_size"):
    step_lib.StepConfig(batch_size=0)
  with pytest.raises(ValueError, match="advantage"):
    step_lib.StepConfig(advantage="gae")
  with pytest.raises(ValueError, match="period|ema"):
    step_lib.StepConfig(target_period=None, target_ema=None)


def test_target_turns_cover_every_node_argued_about():
  """Every active turn argues about the node recorded at its target turn (so targets computed
  for those columns only cover the whole debate)."""
  task = tasks.get("permutation", n=6, max_exponent=8)
  t_max = 9
  questions = task.sample(jax.random.key(0), 16, difficulty=3).questions
  config = debate.DebateConfig(t_max=t_max, learned_stop=False)
  for even, odd in ((players.LiarDebater(task, consistent=True), players.OracleDebater(task)),
                    (players.OracleDebater(task), players.LiarDebater(task, consistent=True))):
    _, transcript = debate.rollout(task, even, odd, questions, jax.random.key(1), config)
    turns, owner = step_lib.target_turns(t_max), step_lib.node_of_turn(t_max)
    assert turns == [0, 4, 6, 8] and owner == [0, 0, 0, 0, 1, 1, 2, 2, 3]
    nodes, active = np.asarray(transcript.nodes), np.asarray(transcript.active)
    assert active[:, 6].any()  # the debates reach the second descent
    for t in range(t_max):
      same = (nodes[:, t] == nodes[:, turns[owner[t]]]).all(-1)
      assert same[active[:, t]].all(), t
