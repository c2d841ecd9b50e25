"""The debate rollout: scripted honest and lying debaters, relaxation knobs, scan == while_loop."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate import tasks
from amp_debate.procedure import debate, players, protocol
from amp_debate.procedure.debate import DebateConfig

BATCH = 128


@dataclasses.dataclass(frozen=True)
class CoinStopper(players.OracleDebater):
  """Oracle that answers STOP with YES with probability p (exercises the learned stop)."""

  p: float = 0.3

  def stop(self, nodes, claims_even, claims_odd, rng):
    yes = jax.random.bernoulli(rng, self.p, (nodes.shape[0], 1))
    return players.scripted(jnp.where(yes, protocol.YES, protocol.NO))


@functools.cache
def _questions(task):
  return jax.jit(task.sample, static_argnums=1)(jax.random.key(0), BATCH)


def _play(task, even, odd, config, **kwargs):
  run = jax.jit(lambda q, k: debate.rollout(task, even, odd, q, k, config, **kwargs))
  return run(_questions(task).questions, jax.random.key(1))


def _full_config(task, **kwargs):
  return DebateConfig(t_max=2 + 2 * task.max_difficulty, learned_stop=False, **kwargs)


@pytest.fixture(params=tasks.names(), scope="module")
def task(request):
  return tasks.get(request.param)


def test_honest_even_beats_a_lying_odd_on_every_debate(task):
  state, transcript = _play(task, players.OracleDebater(task), players.LiarDebater(task),
                            _full_config(task))
  assert (np.asarray(state.winner) == debate.EVEN_WINS).all()
  assert (np.asarray(state.reason) == debate.LEAF).all()  # every lie is chased down to a leaf
  # Debate length = 2 + 2 * (levels descended). Subquestions are at least one level easier, so the
  # descent is bounded by the difficulty; in shortest path a challenged neighbour can be farther
  # from b than a is, so there only the hop budget (max_difficulty) bounds it.
  bound = np.asarray(_questions(task).difficulty)
  if task.name == "shortest_path":
    bound = np.full_like(bound, task.max_difficulty)
  assert (np.asarray(state.num_args) <= 2 + 2 * bound).all()
  assert (np.asarray(transcript.active).sum(1) == np.asarray(state.num_args)).all()


def test_honest_odd_beats_a_lying_even_on_every_debate(task):
  config = _full_config(task, call_prob=0.0)  # the liar's claim is its own answer, not H's
  state, _ = _play(task, players.LiarDebater(task, consistent=False), players.OracleDebater(task),
                   config)
  assert (np.asarray(state.winner) == debate.ODD_WINS).all()
  leaf_root = np.asarray(task.batch_is_leaf(_questions(task).questions))
  reasons = np.asarray(state.reason)
  assert (reasons[~leaf_root] == debate.INCONSISTENT).all()  # caught at the support check
  assert (reasons[leaf_root] == debate.LEAF).all()


@pytest.mark.parametrize("name", ["permutation", "union_find"])
def test_a_consistent_liar_is_caught_at_a_leaf(name):
  task = tasks.get(name)
  state, _ = _play(task, players.LiarDebater(task, consistent=True), players.OracleDebater(task),
                   _full_config(task, call_prob=0.0))
  assert (np.asarray(state.winner) == debate.ODD_WINS).all()
  assert (np.asarray(state.reason) == debate.LEAF).all()


def test_honest_self_play_concedes_at_once(task):
  oracle = players.OracleDebater(task)
  state, transcript = _play(task, oracle, oracle, _full_config(task))
  assert (np.asarray(state.reason) == debate.CONCEDE).all()
  assert (np.asarray(state.winner) == debate.DRAW).all() and (np.asarray(state.num_args) == 2).all()
  np.testing.assert_array_equal(state.claim_even, _questions(task).answers)


def test_force_stop_after_one_is_pure_amplification(task):
  config = DebateConfig(t_max=8, force_stop_after=1)
  state, transcript = _play(task, players.OracleDebater(task), players.LiarDebater(task), config)
  assert (np.asarray(state.num_args) == 1).all()
  assert (np.asarray(state.winner) == debate.DRAW).all()  # no contest: zero reward everywhere
  active = np.asarray(transcript.active)
  assert active[:, 0].all() and not active[:, 1:].any()
  np.testing.assert_array_equal(transcript.tokens[:, 0, : task.answer_len], state.claim_even)


def test_t_max_stop_uses_the_amplified_judge():
  task = tasks.get("permutation", max_exponent=16)
  oracle, liar = players.OracleDebater(task), players.LiarDebater(task)
  config = DebateConfig(t_max=3, learned_stop=False)
  state, _ = _play(task, oracle, liar, config, judge=oracle)
  leaf_root = np.asarray(task.batch_is_leaf(_questions(task).questions))
  reasons, winners = np.asarray(state.reason), np.asarray(state.winner)
  assert (reasons[~leaf_root] == debate.T_MAX).all()
  assert (winners == debate.EVEN_WINS).all()  # Amp′(H, oracle) sides with the honest claim


def test_finished_games_are_frozen_and_masked():
  task = tasks.get("permutation", max_exponent=16)
  stopper = CoinStopper(task)
  config = DebateConfig(t_max=10, learned_stop=True)
  state, transcript = _play(task, players.OracleDebater(task), players.LiarDebater(task), config,
                            stopper=stopper)
  active = np.asarray(transcript.active)
  num_args = np.asarray(state.num_args)
  turn = np.arange(config.t_max)[None]
  np.testing.assert_array_equal(active, turn < num_args[:, None])
  assert not np.asarray(transcript.token_mask)[~active].any()
  assert (np.asarray(transcript.tokens)[~active] == tasks.PAD).all()
  assert (np.asarray(state.reason) == debate.LEARNED_STOP).any()
  stops = np.asarray(transcript.stop)
  assert not stops[~active].any()
  assert (stops.any(1) == (np.asarray(state.reason) == debate.LEARNED_STOP)).all()


@pytest.mark.parametrize("name", ["permutation", "shortest_path"])
def test_scan_and_while_loop_give_identical_transcripts(name):
  task = tasks.get(name)
  even, odd, stopper = players.OracleDebater(task), players.LiarDebater(task), CoinStopper(task, p=0.2)
  base = DebateConfig(t_max=12, learned_stop=True)
  scanned = _play(task, even, odd, base, stopper=stopper)
  looped = _play(task, even, odd, dataclasses.replace(base, early_exit=True), stopper=stopper)
  jax.tree.map(np.testing.assert_array_equal, scanned, looped)
  assert len(set(np.asarray(scanned[0].num_args).tolist())) > 1  # debates of several lengths


def test_metrics_summarise_the_games():
  task = tasks.get("permutation")
  config = _full_config(task)
  state, transcript = _play(task, players.OracleDebater(task), players.LiarDebater(task), config)
  m = jax.jit(debate.metrics, static_argnums=2)(state, transcript, config.t_max)
  assert float(m["win/even"]) == 1.0 and float(m["win/odd"]) == 0.0
  assert int(m["debate/length_hist"].sum()) == BATCH
  assert float(m["stop/leaf"]) == 1.0
  assert int(m["human_calls"]) >= BATCH  # at least the claim's Amp′ call per debate


def test_confidence_rule_calls_h_only_on_unconfident_answers():
  """Scripted debaters are certain (log-prob 0, confidence 1): with call_prob 0 and any threshold
  < 1, H is never called for the claim, so the claim is the debater's own (false) answer."""
  task = tasks.get("permutation")
  liar, oracle = players.LiarDebater(task, consistent=False), players.OracleDebater(task)
  config = _full_config(task, call_prob=0.0, confidence_threshold=0.5)
  state, transcript = _play(task, liar, oracle, config)
  truth = np.asarray(_questions(task).answers)
  claims = np.asarray(transcript.tokens)[:, 0, : task.answer_len]
  assert (claims != truth).all()
  # With call_prob 1 H recombines the liar's (false) subanswers instead: claims change.
  state_called, transcript_called = _play(task, liar, oracle, _full_config(task, call_prob=1.0))
  assert (np.asarray(transcript_called.tokens)[:, 0, : task.answer_len] != claims).any()
  assert int(state_called.human_calls) > int(state.human_calls)


@pytest.mark.parametrize("kwargs,field", [(dict(t_max=0), "t_max"), (dict(call_prob=1.5), "call_prob"),
                                          (dict(confidence_threshold=2.0), "confidence_threshold"),
                                          (dict(force_stop_after=0), "force_stop_after")])
def test_bad_config_raises(kwargs, field):
  with pytest.raises(ValueError, match=field):
    DebateConfig(**kwargs)
