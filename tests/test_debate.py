"""The debate rollout over H's decomposition tree: scripted honest and lying debaters, human-call
accounting, assigned claims, the learned stop, relaxation knobs, scan == while_loop, several players
in one batch (``players.Blocks``) and openings computed once per question."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate import tasks
from amp_debate.procedure import credit, debate, players, protocol
from amp_debate.procedure.debate import DebateConfig

import test_liars  # the deterministic claim model of its liars

BATCH = 128
# Tasks whose recombination passes one subanswer through: there a consistent liar keeps its lie
# consistent all the way down, and only H's leaf check exposes it.
PASS_THROUGH = ("permutation", "union_find")


@dataclasses.dataclass(frozen=True)
class CoinStopper(players.OracleDebater):
  """Oracle that answers STOP with YES with probability p (exercises the learned stop)."""

  p: float = 0.3

  def stop(self, nodes, claims_even, claims_odd, rng):
    yes = jax.random.bernoulli(rng, self.p, (nodes.shape[0], 1))
    return players.scripted(jnp.where(yes, protocol.YES, protocol.NO))


def _confident(questions):
  """bool[B]: a fixed, question-dependent part of the questions on which HandConfident is sure."""
  return questions.sum(-1) % 2 == 0


UNSURE_LOG_PROB = -3.0  # per answer token: confidence exp(-3 La) < 0.5


@dataclasses.dataclass(frozen=True)
class HandConfident(players.OracleDebater):
  """The oracle as M, reporting log-prob 0 on ``_confident`` questions and UNSURE_LOG_PROB
  elsewhere (drives the confidence call rule)."""

  def answer_fn(self):
    def answer(questions, rng):
      log_probs = jnp.where(_confident(questions)[:, None], 0.0, UNSURE_LOG_PROB)
      return self.task.batch_solve(questions), jnp.broadcast_to(
          log_probs, (questions.shape[0], self.task.answer_len))
    return answer


@pytest.fixture(params=tasks.names(), scope="module")
def task(request):
  return tasks.get(request.param)


@functools.cache
def _questions(task):
  return jax.tree.map(np.asarray, jax.jit(task.sample, static_argnums=1)(jax.random.key(0), BATCH))


@functools.cache
def _runner(task, even, odd, config, stopper=None, judge=None, force_contest=True):
  """One compiled rollout per (players, config, ...); questions, key and assignments are traced."""
  return jax.jit(lambda q, k, a: debate.rollout(task, even, odd, q, k, config, stopper=stopper,
                                                judge=judge, assigned=a,
                                                force_contest=force_contest))


def _seats(batch, seat):
  return jnp.full((batch,), seat, jnp.int32)


def _play(task, even, odd, config, *, questions=None, assigned=None, seed=1, **kwargs):
  """(GameState, Transcript) as numpy arrays."""
  questions = _questions(task).questions if questions is None else questions
  if assigned is None:
    assigned = _seats(questions.shape[0], debate.NO_ASSIGNMENT)
  out = _runner(task, even, odd, config, **kwargs)(jnp.asarray(questions), jax.random.key(seed),
                                                   jnp.asarray(assigned, jnp.int32))
  return jax.tree.map(np.asarray, out)


def _full_config(task, **kwargs):
  """t_max = 2 + 2 * max_difficulty: room to descend from any root to a leaf."""
  kwargs = {"learned_stop": False, "early_exit": False, "assign_prob": 0.0, **kwargs}
  return DebateConfig(t_max=2 + 2 * task.max_difficulty, **kwargs)


def _judged(answer, claims):
  """The amplified judge's rule on numpy arrays: answer [..., La], claims [..., 2, La]."""
  even_ok = (answer == claims[..., 0, :]).all(-1)
  odd_ok = (answer == claims[..., 1, :]).all(-1)
  return np.where(even_ok, debate.EVEN_WINS, np.where(odd_ok, debate.ODD_WINS, debate.DRAW))


@functools.cache
def _leaf_root(task):
  return np.asarray(jax.jit(task.batch_is_leaf)(_questions(task).questions))


# ---- an exact answerer against scripted liars, concession and assigned claims ---------------------
@dataclasses.dataclass(frozen=True)
class ConsistentLiarWhenAssigned(players.OracleDebater):
  """Self-play stand-in for "OracleDebater in one seat, LiarDebater(consistent=True) in the other",
  the seats chosen per game by ``assigned`` (so one compile plays both): its ANSWER role is the
  oracle's, and it supports a false claim (an assigned seat's claim, forced to differ by
  force_contest) as LiarDebater(consistent=True) does, a true one as the oracle does."""

  def support(self, nodes, claims, rng):
    honest = super().support(nodes, claims, rng).tokens
    lying = players.LiarDebater(self.task, consistent=True).support(nodes, claims, rng).tokens
    true = (claims == self.task.batch_solve(nodes)).all(-1)
    return players.scripted(jnp.where(true[:, None], honest, lying))


CALL_PROBS = (0.0, 0.5, 1.0)
LIARS = ("inconsistent", "consistent")


@functools.cache
def _self_play(name, liar):
  """Self-play at full t_max of an M whose ANSWER role is exact, without assignments and with
  assign_prob = 1 (each game's assigned seat from ``sample_assignments``, its claim forced to
  differ from the other's, hence false). liar="inconsistent": M is the OracleDebater, which
  supports its assigned false claim with true supports, exactly as LiarDebater(consistent=False)
  does; "consistent": ConsistentLiarWhenAssigned. call_prob cycles over CALL_PROBS so that each
  kind of liar meets 0, 0.5 and 1 over the tasks (one compile per task and liar).

  Returns (call_prob, seats int32[B], (state, transcript) unassigned, (state, transcript) assigned).
  """
  task = tasks.get(name)
  call_prob = CALL_PROBS[(tasks.names().index(name) + LIARS.index(liar)) % len(CALL_PROBS)]
  m = players.OracleDebater(task) if liar == "inconsistent" else ConsistentLiarWhenAssigned(task)
  config = _full_config(task, call_prob=call_prob, assign_prob=1.0)
  none = debate.sample_assignments(jax.random.key(2), BATCH, 0.0)
  seats = debate.sample_assignments(jax.random.key(3), BATCH, config.assign_prob)
  assert (np.asarray(none) == debate.NO_ASSIGNMENT).all()
  return (call_prob, np.asarray(seats), _play(task, m, m, config, assigned=none),
          _play(task, m, m, config, assigned=seats))


def test_inconsistent_liar_is_the_oracle_defending_a_false_claim(task):
  """The equivalence _self_play relies on: LiarDebater(consistent=False) supports any claim with
  the oracle's true supports."""
  @jax.jit
  def supports(nodes, claims, key):
    wrong = players.wrong_answer(task, claims, key)
    liar = players.LiarDebater(task, consistent=False).support(nodes, wrong, key)
    return liar.tokens, players.OracleDebater(task).support(nodes, claims, key).tokens

  liar, oracle = supports(_questions(task).questions, _questions(task).answers, jax.random.key(5))
  np.testing.assert_array_equal(liar, oracle)


@pytest.mark.parametrize("liar", LIARS)
def test_an_exact_answerer_never_loses_to_a_liar(task, liar):
  call_prob, seats, _, (state, transcript) = _self_play(task.name, liar)
  batch, leaf_root, rows = _questions(task), _leaf_root(task), np.arange(BATCH)
  assert leaf_root.any() and not leaf_root.all()
  m_seat = 1 - seats
  for seat in (0, 1):  # the liar plays both seats
    assert (seats == seat).sum() >= BATCH // 4, seat
  claims = transcript.claims[:, 0]
  np.testing.assert_array_equal(claims[rows, m_seat], batch.answers)  # Amp′(H, oracle) is exact
  assert (claims[rows, seats] != batch.answers).any(-1).all()

  assert state.done.all()
  assert (state.winner == m_seat).all()  # never loses, never draws
  reason, num_args = state.reason, state.num_args
  assert (reason[leaf_root] == debate.LEAF).all() and (num_args[leaf_root] == 2).all()
  if liar == "inconsistent":  # true supports of a false claim: caught at the first support check
    assert (reason[~leaf_root] == debate.INCONSISTENT).all()
    # Both supports are made (arguments 3 and 4) before either is checked.
    assert (num_args[~leaf_root] == 4).all()
  elif task.name in PASS_THROUGH:  # the lie moves down the tree and is caught at a leaf
    assert (reason[~leaf_root] == debate.LEAF).all()
    assert transcript.leaf_reached[~leaf_root].all()
    assert (num_args <= 2 + 2 * batch.difficulty).all()
    assert (num_args[~leaf_root] > 2).all()
  # The assigned liar never computes; its supports are its own direct answers.
  assert not transcript.comps.active[rows, :, seats].any()
  np.testing.assert_array_equal(transcript.support_sampled[rows, :, seats],
                                transcript.support_made[rows, :, seats])
  # Human calls on claims: exactly H's calls in the honest side's Amp′ computations.
  assert int(state.calls["claims"]) == int(transcript.comps.called.sum())
  if call_prob == 0.0:
    assert int(state.calls["claims"]) == 0
  if call_prob == 1.0:
    assert transcript.comps.called[rows, 0, m_seat].all()
    # Where H was called the honest support is its computation's trace, never sampled.
    assert not transcript.support_sampled[rows, :, m_seat].any()
  if call_prob == 0.5:
    assert 0 < int(state.calls["claims"]) < int(transcript.comps.active.sum())
  assert int(state.calls["leaves"]) == int((reason == debate.LEAF).sum())
  assert int(state.calls["verdicts"]) == 0  # no learned stop, no T_MAX, no forced stop


def test_honest_self_play_concedes(task):
  call_prob, _, (state, transcript), _ = _self_play(task.name, "inconsistent")
  batch = _questions(task)
  assert (state.reason == debate.CONCEDE).all() and (state.winner == debate.DRAW).all()
  assert (state.num_args == 2).all()
  np.testing.assert_array_equal(transcript.claims[:, 0, 0], batch.answers)
  np.testing.assert_array_equal(transcript.claims[:, 0, 1], batch.answers)
  assert not transcript.assigned.any() and transcript.comps.active[:, 0].all()
  called = int(transcript.comps.called.sum())
  assert {k: int(v) for k, v in state.calls.items()} == dict(claims=called, supports=0,
                                                             leaves=0, verdicts=0)
  if call_prob == 1.0:
    assert called == 2 * BATCH
  if call_prob == 0.0:
    assert called == 0
  assert not transcript.support_made.any() and not transcript.reached[:, 1:].any()


def test_assigned_claims_in_oracle_self_play(task):
  """assign_prob = 1: one seat per game defends an assigned claim, forced to differ from the other
  side's; the honest (computing) side wins every non-draw game."""
  _, seats, _, (state, transcript) = _self_play(task.name, "inconsistent")
  rows, honest = np.arange(BATCH), 1 - seats
  assert set(seats.tolist()) == {0, 1}
  assert (transcript.assigned.sum(-1) == 1).all() and transcript.assigned[rows, seats].all()
  claims = transcript.claims[:, 0]
  assert (claims[rows, seats] != claims[rows, honest]).any(-1).all()  # force_contest
  non_draw = state.winner != debate.DRAW
  assert non_draw.all()  # the honest side refutes every assigned claim ...
  assert (state.winner[non_draw] == honest[non_draw]).all()  # ... and wins
  m = debate.metrics(state, transcript, 2 + 2 * task.max_difficulty)
  assert float(m["debate/assigned"]) == 1.0
  np.testing.assert_allclose(m["win/even"], (honest == 0).mean())


def test_metrics_summarise_the_games():
  task = tasks.get("permutation")
  _, seats, _, (state, transcript) = _self_play("permutation", "consistent")
  t_max = 2 + 2 * task.max_difficulty
  m = jax.tree.map(np.asarray, debate.metrics(state, transcript, t_max))
  np.testing.assert_allclose(m["win/even"], (seats == 1).mean())
  np.testing.assert_allclose(m["win/odd"], (seats == 0).mean())
  assert float(m["win/draw"]) == 0
  np.testing.assert_array_equal(m["debate/length_hist"],
                                np.bincount(state.num_args, minlength=t_max + 1))
  assert int(m["debate/length_hist"].sum()) == BATCH
  np.testing.assert_allclose(m["debate/mean_length"], state.num_args.mean())
  assert float(m["stop/leaf"]) == 1.0 and float(m["stop/inconsistent"]) == 0.0
  assert float(m["debate/assigned"]) == 1.0
  assert int(m["human_calls"]) == sum(int(v) for v in state.calls.values())
  for kind in debate.CALL_KINDS:
    np.testing.assert_allclose(m[f"human_calls/{kind}"], int(state.calls[kind]) / BATCH)
  np.testing.assert_allclose(m["human_calls/per_debate"], int(m["human_calls"]) / BATCH)
  assert float(m["stop/asked_fired"]) == 0.0


def test_sample_assignments_follow_the_probability():
  n = 4096
  seats = np.asarray(debate.sample_assignments(jax.random.key(4), n, 0.25))
  assert set(np.unique(seats).tolist()) == {debate.NO_ASSIGNMENT, 0, 1}
  assigned = seats != debate.NO_ASSIGNMENT
  assert abs(assigned.mean() - 0.25) <= 4 * np.sqrt(0.25 * 0.75 / n)
  assert abs((seats[assigned] == 1).mean() - 0.5) <= 4 * np.sqrt(0.25 / assigned.sum())
  assert (np.asarray(debate.sample_assignments(jax.random.key(4), n, 1.0)) >= 0).all()


def test_a_computation_that_disagrees_with_the_committed_claim_loses():
  """Self-play of an M that answers every question falsely (LiarDebater as M), H always called: the
  claims and supports are consistent by construction, but on the disputed node each side's fresh
  Amp′ rarely agrees with the subanswer it committed to there; such a side loses as inconsistent
  (both: a draw)."""
  task = tasks.get("permutation")
  m = players.LiarDebater(task)
  state, tr = _play(task, m, m, _full_config(task, call_prob=1.0))
  arrived = tr.reached[:, 1]
  bad = tr.comps.active[:, 1] & (tr.comps.answer[:, 1] != tr.claims[:, 1]).any(-1)  # [B, 2]
  caught = arrived & bad.any(-1)
  assert (state.reason[caught] == debate.INCONSISTENT).all()
  assert (state.num_args[caught] == 4).all()  # caught on arrival, before any support there
  expected = np.where(bad[:, 0] & bad[:, 1], debate.DRAW,
                      np.where(bad[:, 0], debate.ODD_WINS, debate.EVEN_WINS))
  np.testing.assert_array_equal(state.winner[caught], expected[caught])
  assert not tr.support_made[caught, 1].any() and not tr.stop_asked[caught, 1].any()
  # Otherwise the debate goes on: the root supports (traces) are never inconsistent, so any other
  # inconsistency is caught on a later arrival.
  later = (state.reason == debate.INCONSISTENT) & ~caught
  assert tr.reached[later, 2].all()
  assert (arrived & ~bad.any(-1)).any()
  # Not vacuous: one side caught, and both caught.
  assert (caught & (bad[:, 0] != bad[:, 1])).any() and (caught & bad.all(-1)).any()


# ---- human calls, by hand -----------------------------------------------------------------------
def _hand_questions(task):
  """σ = (0 1 2 3) as [1, 2, 3, 0], x = 0 and k = 1, 2, 4: σ^k(0) = 1, 2, 0."""
  number = task.tokenizer.number
  sigma = [1, 2, 3, 0]
  return jnp.stack([number(jnp.asarray(sigma + [0, k], jnp.int32)) for k in (1, 2, 4)])


def test_the_support_check_is_symmetric():
  """Exactly one inconsistent support loses, whichever seat it is in; both inconsistent is a draw."""
  task = tasks.get("permutation", n=5, max_exponent=4)
  config = _full_config(task, call_prob=0.0)  # no H in any claim: every support is direct
  batch = _questions(task)
  inner = ~_leaf_root(task)
  oracle, liar = players.OracleDebater(task), players.LiarDebater(task, consistent=False)
  for liar_seat in (0, 1):
    even, odd = (oracle, liar) if liar_seat == 1 else (liar, oracle)
    state, transcript = _play(task, even, odd, config, assigned=_seats(BATCH, liar_seat),
                              force_contest=False)
    np.testing.assert_array_equal(state.reason[inner], debate.INCONSISTENT)
    np.testing.assert_array_equal(state.winner[inner], 1 - liar_seat)
    assert transcript.support_made[inner, 0].all()  # both supports made, whichever failed
  # Both sides inconsistent (two independent false claims, each with true supports).
  state, _ = _play(task, liar, liar, config)
  claims_differ = inner & (state.reason != debate.CONCEDE)
  assert claims_differ.sum() > BATCH // 3
  np.testing.assert_array_equal(state.reason[claims_differ], debate.INCONSISTENT)
  np.testing.assert_array_equal(state.winner[claims_differ], debate.DRAW)
  np.testing.assert_array_equal(state.num_args[claims_differ], 4)
  np.testing.assert_array_equal(batch.difficulty[~inner], 0)


def test_completed_supports_send_the_lie_to_a_leaf():
  """``complete_supports``: the liar that supports its false claim with true rows is no longer
  caught by the check (its last row is set from its claim), so the dispute descends to that row and
  H's leaf check decides, for the honest side; the set tokens are recorded as fixed and get no
  policy gradient; the honest side's supports are unchanged."""
  task = tasks.get("permutation", n=5, max_exponent=4)
  inner = ~_leaf_root(task)
  oracle, liar = players.OracleDebater(task), players.LiarDebater(task, consistent=False)
  for liar_seat in (0, 1):
    even, odd = (oracle, liar) if liar_seat == 1 else (liar, oracle)
    plays = {on: _play(task, even, odd, _full_config(task, call_prob=0.0, complete_supports=on),
                       assigned=_seats(BATCH, liar_seat), force_contest=False)
             for on in (False, True)}
    (state, transcript), (before, before_t) = plays[True], plays[False]
    np.testing.assert_array_equal(before.reason[inner], debate.INCONSISTENT)
    np.testing.assert_array_equal(state.reason[inner], debate.LEAF)
    np.testing.assert_array_equal(state.winner[inner], 1 - liar_seat)
    fixed = transcript.support_fixed[:, 0]  # [B, 2, S*La], the root's supports
    assert fixed[inner, liar_seat, task.answer_len:].all()  # the last row (row 1), both seats
    assert fixed[inner, 1 - liar_seat, task.answer_len:].all()
    assert not fixed[..., :task.answer_len].any() and not fixed[~inner].any()
    np.testing.assert_array_equal(transcript.support_tokens[inner, 0, 1 - liar_seat],
                                  before_t.support_tokens[inner, 0, 1 - liar_seat])
    rows = jax.tree.map(np.asarray, credit.policy_rows(task, jax.tree.map(jnp.asarray, transcript),
                                                       drop_eval_part=False))
    support_mask = rows.mask[:, 0, :, -1, :task.num_subquestions * task.answer_len]
    assert support_mask[inner][..., :task.answer_len].all()  # the chosen row is trained
    assert not support_mask[inner][..., task.answer_len:].any()  # the fixed row is not
    assert not rows.log_probs[:, 0, :, -1][fixed].any()


@pytest.mark.parametrize("t_max,call_prob,liar_seat,calls,reasons,num_args,stops_asked", [
    # Oracle vs consistent liar (assigned: it never computes), oracle judge and stopper (the
    # learned stop is asked, never fires, but the judge's Amp′ runs wherever it is asked).
    # call_prob = 1, t_max = 6, liar odd:
    #   A (k=1, leaf root): even's Amp′ calls H [claims 1]; the claims differ and H decides the
    #     leaf [leaves 1]. 2 arguments.
    #   B (k=2): even's Amp′ [claims 1]; stop asked on the root, the judge's Amp′ [verdicts 1];
    #     even's support is its computation's trace (no check), odd's is direct and H checks it
    #     [supports 1]: consistent; H compares the supports [supports 1]: row 1 differs, and
    #     σ^1(σ(0)) is a leaf [leaves 1]. 4 arguments.
    #   C (k=4): as B on the root [claims 1, verdicts 1, supports 2] -> node σ^2(2) (k=2, not a
    #     leaf): even's Amp′ of it [claims 1] agrees with its claim; stop asked [verdicts 1];
    #     supports as before [supports 2] -> σ^1(3), a leaf [leaves 1]. 6 arguments.
    #   Total: claims 1+1+2, supports 0+2+4, leaves 1+1+1, verdicts 0+1+2.
    (6, 1.0, 1, dict(claims=4, supports=6, leaves=3, verdicts=3), [debate.LEAF] * 3, [2, 4, 6],
     [0, 1, 2]),
    # call_prob = 1, t_max = 4, liar odd: A and B as above; C reaches T_MAX on σ^2(2) right after
    #   the dispute (4 arguments), before any computation there, and the final judge's Amp′ of
    #   σ^2(2) decides [verdicts 1]: C = claims 1, supports 2, leaves 0, verdicts 1+1.
    (4, 1.0, 1, dict(claims=3, supports=4, leaves=2, verdicts=3),
     [debate.LEAF, debate.LEAF, debate.T_MAX], [2, 4, 4], [0, 1, 1]),
    # call_prob = 0, t_max = 6, liar even: H is never called in any Amp′ (claims 0, verdicts 0),
    #   so the oracle's supports are direct and checked too: 3 support calls on every node with
    #   supports (even's check, odd's check, the comparison): B 3, C 3+3; leaves as before.
    (6, 0.0, 0, dict(claims=0, supports=9, leaves=3, verdicts=0), [debate.LEAF] * 3, [2, 4, 6],
     [0, 1, 2]),
])
def test_human_calls_match_a_count_by_hand(t_max, call_prob, liar_seat, calls, reasons, num_args,
                                           stops_asked):
  task = tasks.get("permutation", n=4, max_exponent=4)
  questions = _hand_questions(task)
  np.testing.assert_array_equal(task.batch_solve(questions)[:, 0],
                                task.tokenizer.number(jnp.asarray([1, 2, 0])))
  oracle, liar = players.OracleDebater(task), players.LiarDebater(task, consistent=True)
  even, odd = (oracle, liar) if liar_seat == 1 else (liar, oracle)
  config = DebateConfig(t_max=t_max, call_prob=call_prob, learned_stop=True, early_exit=False,
                        assign_prob=0.0)
  state, transcript = _play(task, even, odd, config, questions=questions,
                            assigned=_seats(3, liar_seat), judge=oracle, stopper=oracle,
                            force_contest=False)
  assert {k: int(v) for k, v in state.calls.items()} == calls
  assert int(state.human_calls) == sum(calls.values())
  np.testing.assert_array_equal(state.reason, reasons)
  np.testing.assert_array_equal(state.num_args, num_args)
  assert (state.winner == 1 - liar_seat).all()
  np.testing.assert_array_equal(transcript.stop_asked.sum(1), stops_asked)
  assert not transcript.stop_fired.any()


# ---- relaxation knobs ---------------------------------------------------------------------------
def test_force_stop_after_one_is_pure_amplification():
  task = tasks.get("wildcard")
  config = DebateConfig(t_max=8, force_stop_after=1, learned_stop=True, early_exit=False,
                        assign_prob=0.0)
  assert not config.contested
  oracle = players.OracleDebater(task)
  state, transcript = _play(task, oracle, oracle, config)
  assert (state.num_args == 1).all()
  assert (state.reason == debate.FORCED).all()
  assert (state.winner == debate.DRAW).all()  # no contest: zero reward everywhere
  # One Amp′ computation (even's); odd's is not part of the debate and no verdict is computed.
  active = transcript.comps.active
  assert active[:, 0, 0].all() and not active[:, 0, 1].any() and not active[:, 1:].any()
  assert not transcript.comps.called[:, :, 1].any()
  np.testing.assert_array_equal(transcript.claims[:, 0, 0], _questions(task).answers)
  assert {k: int(v) for k, v in state.calls.items()} == dict(claims=BATCH, supports=0, leaves=0,
                                                             verdicts=0)
  assert not transcript.stop_asked.any() and not transcript.judges.active.any()
  assert not transcript.final_judge.active.any() and not transcript.final_judge.called.any()
  assert not transcript.support_made.any()


def test_t_max_stop_uses_the_amplified_judge():
  """t_max = 3: the debate stops after even's support; the judge's Amp′ of the node decides. A
  lying judge (Amp′(H, liar)) shows that the verdict is the judge's, not the truth."""
  task = tasks.get("permutation", max_exponent=16)
  oracle, liar = players.OracleDebater(task), players.LiarDebater(task, consistent=True)
  config = DebateConfig(t_max=3, learned_stop=False, early_exit=False, assign_prob=0.0)
  state, transcript = _play(task, oracle, liar, config, assigned=_seats(BATCH, 1), judge=liar,
                            force_contest=False)
  leaf_root = _leaf_root(task)
  t_max = state.reason == debate.T_MAX
  np.testing.assert_array_equal(t_max, ~leaf_root)
  assert (state.winner[leaf_root] == debate.EVEN_WINS).all()
  assert (state.num_args[t_max] == 3).all()
  made = transcript.support_made[:, 0]
  np.testing.assert_array_equal(made[:, 0], t_max)
  assert not made[:, 1].any()  # odd never supports
  np.testing.assert_array_equal(transcript.final_node, _questions(task).questions)
  final = transcript.final_judge
  np.testing.assert_array_equal(final.active, t_max)
  np.testing.assert_array_equal(final.called, t_max)  # call_prob 1
  np.testing.assert_array_equal(state.winner[t_max],
                                _judged(final.answer, transcript.claims[:, 0])[t_max])
  assert (state.winner[t_max] != debate.EVEN_WINS).any()  # the judge, not the truth, decided
  assert int(state.calls["verdicts"]) == int(t_max.sum())


def test_confidence_rule_calls_h_only_on_unconfident_answers():
  task = tasks.get("permutation")
  m = HandConfident(task)
  config = DebateConfig(t_max=2, call_prob=0.0, confidence_threshold=0.5, learned_stop=False,
                        early_exit=False, assign_prob=0.0)
  state, transcript = _play(task, m, m, config)
  questions = _questions(task).questions
  confident = np.asarray(_confident(jnp.asarray(questions)))
  assert 0.2 < confident.mean() < 0.8
  comps = transcript.comps
  for side in (0, 1):
    np.testing.assert_array_equal(comps.called[:, 0, side], ~confident)
    np.testing.assert_array_equal(comps.direct_log_probs[:, 0, side, 0],
                                  np.where(confident, 0.0, UNSURE_LOG_PROB))
  assert int(state.calls["claims"]) == 2 * int((~confident).sum())
  np.testing.assert_array_equal(transcript.claims[:, 0, 0], _questions(task).answers)
  assert (state.reason == debate.CONCEDE).all()
  # assigned=None (no assignments at all) plays the same debates as no game assigned.
  unassigned = jax.jit(lambda q, k: debate.rollout(task, m, m, q, k, config))(
      jnp.asarray(questions), jax.random.key(1))
  jax.tree.map(np.testing.assert_array_equal, (state, transcript), unassigned)


# ---- the learned stop, masking, scan == while_loop ---------------------------------------------
STOP_TASK = dict(name="permutation", max_exponent=16)  # depth <= 4
STOP_CONFIG = DebateConfig(t_max=7, call_prob=0.5, learned_stop=True, early_exit=False,
                           assign_prob=0.0)  # R = 3 nodes


@functools.cache
def _stop_game():
  """Oracle vs consistent liar (odd, assigned) with an odd t_max: the debate can stop at T_MAX
  right after even's support on the last node. A coin-flip stopper, and a lying judge so that the
  hindsight labels are mixed."""
  task = tasks.get(**STOP_TASK)
  oracle, liar = players.OracleDebater(task), players.LiarDebater(task, consistent=True)
  return _play(task, oracle, liar, STOP_CONFIG, assigned=_seats(BATCH, 1), force_contest=False,
               stopper=CoinStopper(task), judge=liar)


def test_odd_t_max_keeps_every_stop_bit_and_finished_games_are_frozen():
  task, config = tasks.get(**STOP_TASK), STOP_CONFIG
  r_nodes = config.num_nodes
  assert r_nodes == 3
  state, tr = _stop_game()
  leaf_root, rows = _leaf_root(task), np.arange(BATCH)
  assert tr.nodes.shape == (BATCH, r_nodes, task.question_len)
  assert tr.support_tokens.shape == (BATCH, r_nodes, 2, protocol.support_len(task))
  assert tr.comps.answer.shape == (BATCH, r_nodes, 2, task.answer_len)
  asked, fired, reached = tr.stop_asked, tr.stop_fired, tr.reached

  # Stop bits: asked at every node reached while the game ran (the liar is assigned and the
  # oracle consistent, so every reached non-leaf node), one record per node, none overwritten.
  np.testing.assert_array_equal(asked, reached & ~leaf_root[:, None])
  assert not (fired & ~asked).any() and (fired.sum(1) <= 1).all()
  learned = state.reason == debate.LEARNED_STOP
  np.testing.assert_array_equal(fired.any(1), learned)
  fired_at = fired.argmax(1)
  assert (state.num_args[learned] == 2 + 2 * fired_at[learned]).all()
  later = np.arange(r_nodes)[None] > fired_at[:, None]
  assert not (reached & later)[learned].any()  # nothing after the stop
  np.testing.assert_array_equal(tr.stop_tokens, np.where(
      fired, protocol.YES, np.where(asked, protocol.NO, 0)))
  timed_out = state.reason == debate.T_MAX
  assert (state.num_args[timed_out] == config.t_max).all()
  assert asked[timed_out, r_nodes - 1].all() and not fired[timed_out].any()
  # Not vacuous: stops fire on the root and deeper, T_MAX games keep the last node's stop bit.
  assert fired[:, 0].any() and fired[:, 1:].any() and timed_out.any()
  assert asked.all(1).any()

  # The judge's verdict at every asked node, and the hindsight label.
  np.testing.assert_array_equal(tr.judges.active, asked)
  np.testing.assert_array_equal(tr.stop_verdict[asked], _judged(tr.judges.answer, tr.claims)[asked])
  assert (state.winner[learned] == tr.stop_verdict[rows, fired_at][learned]).all()
  labelled = asked & ~fired
  np.testing.assert_array_equal(tr.stop_labelled, labelled)
  np.testing.assert_array_equal(tr.stop_label[labelled],
                                (tr.stop_verdict == state.winner[:, None])[labelled])
  assert not tr.stop_label[~labelled].any()
  assert tr.stop_label[labelled].any() and not tr.stop_label[labelled].all()
  # A T_MAX stop on a node the judge already decided keeps that verdict: no second Amp′ (H counted
  # once), and the label on that node says stopping there gives the final verdict.
  np.testing.assert_array_equal(state.winner[timed_out], tr.stop_verdict[timed_out, r_nodes - 1])
  assert not tr.final_judge.active[timed_out].any()
  assert tr.stop_label[timed_out, r_nodes - 1].all()

  # Finished games are frozen: records exist only for nodes reached and arguments made.
  assert not (reached[:, 1:] & ~reached[:, :-1]).any()
  made = tr.support_made
  assert not (made[..., 1] & ~made[..., 0]).any() and not (made[..., 0] & ~reached).any()
  np.testing.assert_array_equal(state.num_args, 2 + made.sum((1, 2)))
  for field in (tr.nodes, tr.claims, tr.comps.active, tr.comps.called, tr.comps.answer,
                tr.comps.sub_valid, tr.judges.active, tr.stop_tokens, tr.stop_verdict):
    assert not field[~reached].any()
  row_made = made[..., 0]  # see test_unmade_supports_are_not_recorded for the side-level check
  assert not tr.support_tokens[~row_made].any() and not tr.support_log_probs[~row_made].any()
  assert not tr.support_sampled[~made].any()
  assert not (tr.comps.called & ~tr.comps.active).any()
  assert not (tr.judges.called & ~tr.judges.active).any()
  # The final node and claims are those of the node the debate stopped on.
  stopped = learned | timed_out
  last = np.where(learned, fired_at, r_nodes - 1)
  np.testing.assert_array_equal(tr.final_node[stopped], tr.nodes[rows, last][stopped])
  np.testing.assert_array_equal(state.claims[stopped], tr.claims[rows, last][stopped])
  # Every human call is in the transcript.
  assert int(state.calls["claims"]) == int(tr.comps.called.sum())
  assert int(state.calls["verdicts"]) == int(tr.judges.called.sum() + tr.final_judge.called.sum())
  assert int(state.calls["supports"]) == int(tr.support_sampled.sum() + made[..., 1].sum())
  assert int(state.calls["leaves"]) == int((state.reason == debate.LEAF).sum())


SCAN_CONFIG = DebateConfig(t_max=9, call_prob=0.5, learned_stop=True, early_exit=False,
                           assign_prob=0.0)  # R = 4 nodes


@functools.cache
def _scan_and_loop():
  """The same debates (permutation, depth <= 3; oracle vs consistent liar; coin-flip stopper) as a
  lax.scan and as a lax.while_loop."""
  task = tasks.get("permutation")
  oracle, liar = players.OracleDebater(task), players.LiarDebater(task, consistent=True)
  kwargs = dict(assigned=_seats(BATCH, 1), force_contest=False, stopper=CoinStopper(task, p=0.2),
                judge=oracle)
  return (_play(task, oracle, liar, SCAN_CONFIG, **kwargs),
          _play(task, oracle, liar, dataclasses.replace(SCAN_CONFIG, early_exit=True), **kwargs))


def test_scan_and_while_loop_give_identical_results():
  """Every game ends before the last round, so the while loop exits early while the scan runs
  fully masked rounds; the results must be identical (GameState.comp aside: see
  test_finished_games_keep_their_final_computation)."""
  (state, transcript), (loop_state, loop_transcript) = _scan_and_loop()
  jax.tree.map(np.testing.assert_array_equal, state, loop_state)
  jax.tree.map(np.testing.assert_array_equal, transcript, loop_transcript)
  assert len(set(state.num_args.tolist())) > 2  # debates of several lengths
  assert transcript.reached[:, 2].any()
  assert not transcript.reached[:, SCAN_CONFIG.num_nodes - 1].any()  # a masked last round


def test_a_host_loop_over_the_rollout_pieces_plays_the_same_games():
  """rollout_start, rollout_round per round (stopping when the host reads that every game is
  done, as a Python loop over turns would) and rollout_finish, each jitted once (the round with
  its index traced): the rollout's own results."""
  task = tasks.get("permutation")
  oracle, liar = players.OracleDebater(task), players.LiarDebater(task, consistent=True)
  referees = dict(stopper=CoinStopper(task, p=0.2), judge=oracle)
  questions, rng = jnp.asarray(_questions(task).questions), jax.random.key(1)
  start = jax.jit(lambda q, k, a: debate.rollout_start(
      task, oracle, liar, q, k, SCAN_CONFIG, assigned=a, force_contest=False, **referees))
  next_round = jax.jit(lambda c, r, k: debate.rollout_round(
      task, oracle, liar, c, r, k, SCAN_CONFIG, **referees))
  finish = jax.jit(lambda c, k: debate.rollout_finish(task, oracle, liar, c, k, SCAN_CONFIG,
                                                      **referees))
  carry = start(questions, rng, jnp.asarray(_seats(BATCH, 1), jnp.int32))
  rounds = 0
  for r in range(1, SCAN_CONFIG.num_rounds):
    if bool(carry[0].done.all()):
      break
    carry = next_round(carry, jnp.int32(r), rng)
    rounds += 1
  state, transcript = jax.tree.map(np.asarray, finish(carry, rng))
  loop_state, loop_transcript = _scan_and_loop()[1]
  assert 0 < rounds < SCAN_CONFIG.num_rounds - 1  # the host loop stopped early
  jax.tree.map(np.testing.assert_array_equal, state, loop_state)
  jax.tree.map(np.testing.assert_array_equal, transcript, loop_transcript)


def test_finished_games_keep_their_final_computation():
  (state, _), (loop_state, _) = _scan_and_loop()
  jax.tree.map(np.testing.assert_array_equal, state.comp, loop_state.comp)


def test_unmade_supports_are_not_recorded():
  _, transcript = _stop_game()
  unmade = ~transcript.support_made
  assert (unmade & transcript.support_made[..., :1]).any()  # odd's support missing, even's made
  assert not transcript.support_tokens[unmade].any()
  assert not transcript.support_log_probs[unmade].any()


# ---- config ---------------------------------------------------------------------------------------
def test_config_rounds_nodes_and_contest():
  config = lambda **kwargs: DebateConfig(early_exit=False, assign_prob=0.0, **kwargs)
  assert config(t_max=1).num_rounds == 0 and not config(t_max=1).contested
  assert config(t_max=2).num_rounds == 0 and config(t_max=2).num_nodes == 1
  assert config(t_max=2).contested
  assert config(t_max=4).num_rounds == 1 and config(t_max=5).num_rounds == 2
  assert config(t_max=5).num_nodes == 2
  assert not config(t_max=8, force_stop_after=1).contested
  assert config(t_max=8, force_stop_after=2).contested


@pytest.mark.parametrize("kwargs,field", [
    (dict(t_max=0), "t_max"), (dict(t_max=True), "t_max"), (dict(call_prob=1.5), "call_prob"),
    (dict(confidence_threshold=2.0), "confidence_threshold"),
    (dict(force_stop_after=0), "force_stop_after"), (dict(assign_prob=1.5), "assign_prob"),
    (dict(assign_prob=-0.1), "assign_prob")])
def test_bad_config_raises(kwargs, field):
  with pytest.raises(ValueError, match=field):
    DebateConfig(**{"early_exit": False, "assign_prob": 0.0, **kwargs})


def test_concat_games_joins_batches_and_sums_the_calls():
  """Two batches (the games of test_the_support_check_is_symmetric, whose compiled rollouts this
  reuses: the liar in either seat) joined into one."""
  task = tasks.get("permutation", n=5, max_exponent=4)
  oracle, liar = players.OracleDebater(task), players.LiarDebater(task, consistent=False)
  config = _full_config(task, call_prob=0.0)
  first = _play(task, oracle, liar, config, assigned=_seats(BATCH, 1), force_contest=False)
  second = _play(task, liar, oracle, config, assigned=_seats(BATCH, 0), force_contest=False,
                 seed=2)
  state, transcript = jax.tree.map(np.asarray, debate.concat_games([
      jax.tree.map(jnp.asarray, first), jax.tree.map(jnp.asarray, second)]))
  np.testing.assert_array_equal(state.winner, np.concatenate([first[0].winner, second[0].winner]))
  np.testing.assert_array_equal(transcript.support_tokens, np.concatenate(
      [first[1].support_tokens, second[1].support_tokens]))
  for kind in debate.CALL_KINDS:
    assert int(state.calls[kind]) == int(first[0].calls[kind]) + int(second[0].calls[kind])
  assert int(state.human_calls) == int(first[0].human_calls) + int(second[0].human_calls) > 0


SUPPORT_BATCHES = []  # batch sizes ClaimEcho.support was traced with


@dataclasses.dataclass(frozen=True)
class ClaimEcho(players.OracleDebater):
  """The oracle, but its direct SUPPORT repeats its claim in every subanswer slot (a support that
  depends on which claim it defends); records the batch it was asked for."""

  def support(self, nodes, claims, rng):
    SUPPORT_BATCHES.append(nodes.shape[0])
    s = self.task.num_subquestions
    return players.scripted(jnp.tile(claims, (1, s)))


def test_self_play_with_h_always_called_samples_only_the_assigned_seats_support():
  """call_prob 1, self-play: a computing side's support is its trace, so only the assigned seat
  answers SUPPORT directly; the rollout asks the player for one support per game (not two), and
  each assigned seat's recorded support is its own answer for its own claim."""
  task = tasks.get("permutation", max_exponent=4)
  config = DebateConfig(t_max=6, learned_stop=False, assign_prob=1.0, early_exit=False)
  echo = ClaimEcho(task)
  seats = jnp.asarray(np.arange(BATCH) % 2, jnp.int32)
  SUPPORT_BATCHES.clear()
  state, transcript = _play(task, echo, echo, config, assigned=seats)
  assert SUPPORT_BATCHES and set(SUPPORT_BATCHES) == {BATCH}
  made = transcript.support_made[:, 0]  # [B, 2] at the root
  sampled = transcript.support_sampled[:, 0]
  rows = np.arange(BATCH)
  np.testing.assert_array_equal(sampled[rows, np.asarray(seats)], made[rows, np.asarray(seats)])
  assert not sampled[rows, 1 - np.asarray(seats)].any()  # the computing side's is its trace
  tokens = transcript.support_tokens[:, 0]
  for b in np.flatnonzero(sampled[rows, np.asarray(seats)]):
    seat = int(seats[b])
    claim = transcript.claims[b, 0, seat]
    np.testing.assert_array_equal(tokens[b, seat], np.tile(claim, task.num_subquestions))
  # Without H in every computation both seats may answer directly: one batch of 2B (self-play).
  SUPPORT_BATCHES.clear()
  _play(task, echo, echo, dataclasses.replace(config, call_prob=0.5), assigned=seats)
  assert set(SUPPORT_BATCHES) == {2 * BATCH}


def test_amplification_computes_only_the_first_claim_and_refuses_assignments():
  """force_stop_after=1: only even's Amp′ is computed (one pass of the player over B questions
  per subquestion, not 2B), and assigned claims, never contested, are refused."""
  task = tasks.get("permutation", max_exponent=4)
  batches = []

  @dataclasses.dataclass(frozen=True)
  class Counting(players.OracleDebater):
    def answer_fn(self):
      def answer(questions, rng):
        batches.append(questions.shape[0])
        return self.task.batch_solve(questions)
      return answer

  player = Counting(task)
  _play(task, player, player,
        DebateConfig(t_max=1, learned_stop=False, early_exit=False, assign_prob=0.0))
  assert batches and set(batches) == {BATCH}
  with pytest.raises(ValueError, match="DebateConfig.assign_prob must be 0 when the debate ends"):
    DebateConfig(t_max=8, force_stop_after=1, assign_prob=0.5, early_exit=False)


# ---- several players in one batch (players.Blocks) -----------------------------------------------
def test_blocks_play_each_block_as_its_players_alone():
  """Three pairings (the oracle against a consistent, early or inconsistent liar with deterministic
  claims, the liar in either seat; the oracle in two separate blocks of even's seat) in one rollout
  over blocks of unequal sizes: each block's games are exactly those its players play alone on its
  rows (H never called in a claim, so nothing is drawn at random that a game reads), and the human
  calls add up."""
  task = tasks.get("permutation", n=4, max_exponent=4)
  claims = test_liars.LowestWrong(task.vocab_size)
  oracle = players.OracleDebater(task)
  liar = {style: players.LiarDebater(task, style=style, claim_model=claims)
          for style in players.STYLES}
  pairs = ((oracle, liar["consistent"]), (liar["early"], oracle), (oracle, liar["inconsistent"]))
  sizes = (40, 24, 32)
  liar_seat = [int(even is oracle) for even, _ in pairs]
  config = _full_config(task, call_prob=0.0)
  starts = np.cumsum((0,) + sizes)
  questions = _questions(task).questions[:sum(sizes)]

  @jax.jit
  def run(q, key):
    even, odd = (players.Blocks(tuple(p[s] for p in pairs), sizes) for s in (0, 1))
    together = debate.rollout(task, even, odd, q, key, config, force_contest=False,
                              assigned=jnp.asarray(np.repeat(liar_seat, sizes), jnp.int32))
    alone = [debate.rollout(task, e, o, q[starts[b]:starts[b + 1]], key, config,
                            force_contest=False, assigned=_seats(sizes[b], liar_seat[b]))
             for b, (e, o) in enumerate(pairs)]
    return together, alone

  (state, transcript), alone = jax.tree.map(np.asarray, run(jnp.asarray(questions),
                                                            jax.random.key(4)))
  for b, (solo_state, solo_transcript) in enumerate(alone):
    rows, m_seat = slice(starts[b], starts[b + 1]), 1 - liar_seat[b]
    block = lambda x: x[rows]
    for field in ("done", "winner", "reason", "num_args", "node", "claims", "judged", "verdict"):
      np.testing.assert_array_equal(block(getattr(state, field)), getattr(solo_state, field))
    for field in dataclasses.fields(debate.Transcript):
      if field.name != "comps":  # the liar's seat has random, inactive computations
        jax.tree.map(np.testing.assert_array_equal, jax.tree.map(
            block, getattr(transcript, field.name)), getattr(solo_transcript, field.name))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x[rows, :, m_seat], y[:, :, m_seat]),
                 transcript.comps, solo_transcript.comps)
  for kind in debate.CALL_KINDS:
    assert int(state.calls[kind]) == sum(int(s.calls[kind]) for s, _ in alone)
  # Not vacuous: the liars lose differently (caught at once, or at a leaf below the root).
  assert {debate.INCONSISTENT, debate.LEAF} <= set(state.reason.tolist())
  assert (state.num_args > 4).any()


def test_blocks_refuse_batches_they_do_not_cover():
  task = tasks.get("permutation", n=4, max_exponent=4)
  oracle = players.OracleDebater(task)
  blocks = players.Blocks((oracle, players.LiarDebater(task)), (3, 5))
  questions = jnp.zeros((16, task.question_len), jnp.int32)
  with pytest.raises(ValueError, match="called on 16 games, its blocks"):
    blocks.answer(questions, jax.random.key(0))
  # Self-play with one Blocks object runs both seats as one batch of 2B games: refused.
  config = _full_config(task, call_prob=0.0)
  with pytest.raises(ValueError, match="self-play"):
    jax.eval_shape(lambda q: debate.rollout(task, blocks, blocks, q, jax.random.key(0), config),
                   questions[:8])
  with pytest.raises(ValueError, match="one size per player"):
    players.Blocks((oracle,), (1, 2))
  with pytest.raises(ValueError, match="sizes"):
    players.Blocks((oracle,), (-1,))


def test_an_opening_computed_once_per_question_plays_the_same_games():
  """Games tiled over the same questions, with the opening moves (claims, root supports) played
  by ``players.Copies`` (the oracle's moves computed on the first copy) and ``players.Liars`` with
  ``copies`` (the lie search on the first copy): the same games as without ``opening``."""
  task = tasks.get("permutation", n=4, max_exponent=4)
  claims = test_liars.LowestWrong(task.vocab_size)
  oracle = players.OracleDebater(task)
  liars = (players.LiarDebater(task, claim_model=claims),
           players.LiarDebater(task, style="early", claim_model=claims))
  n, copies = 32, 4
  config = _full_config(task, call_prob=1.0)
  questions = jnp.concatenate([jnp.asarray(_questions(task).questions[:n])] * copies)

  @jax.jit
  def run(q, key):
    lie = lambda k: players.Liars(liars * (copies // 2), (n,) * copies, copies=k)
    kwargs = dict(force_contest=False, assigned=_seats(copies * n, 1))
    plain = debate.rollout(task, oracle, lie(1), q, key, config, **kwargs)
    opened = debate.rollout(task, oracle, lie(1), q, key, config, **kwargs,
                            opening=(players.Copies(oracle, copies), lie(copies)))
    return plain, opened

  plain, opened = jax.tree.map(np.asarray, run(questions, jax.random.key(5)))
  jax.tree.map(np.testing.assert_array_equal, plain, opened)
  assert (plain[0].num_args > 4).any()  # not vacuous: lies defended below the root
  with pytest.raises(ValueError, match="not a multiple"):
    players.Copies(oracle, 3).answer(questions, jax.random.key(0))
