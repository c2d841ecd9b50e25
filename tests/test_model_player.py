"""ModelDebater: M answering the protocol questions (shapes, log-probs, jit); M inside amplify."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate import models, tasks
from amp_debate.procedure import debate, model_player, players, protocol
from amp_debate.procedure.amplify import amplify

TASKS = {
    "permutation": dict(n=6, max_exponent=8),
    "wildcard": dict(bits=3, max_wildcards=3),
}
BATCH = 6
TRACES = {"play": 0}


@functools.cache
def _task(name):
  return tasks.get(name, **TASKS[name])


@functools.cache
def _model(name):
  task = _task(name)
  return models.LanguageModel(
      models.preset("tiny", task.vocab_size, model_player.required_max_len(task)))


def _debater(name, seed=0, **kwargs):
  model = _model(name)
  return model_player.ModelDebater(model, model.init(jax.random.key(seed)), _task(name), **kwargs)


def _questions(name, seed=1, batch=BATCH):
  return jax.jit(_task(name).sample, static_argnums=1)(jax.random.key(seed), batch).questions


@jax.jit
def _play(debater, nodes, rng):
  """Every move of one debate turn, and M's log-probs of each recomputed by teacher forcing.

  Returns {role: (Move, rescored float32[B, L])}; compiled once per (task, static fields).
  """
  TRACES["play"] += 1
  task = debater.task
  keys = jax.random.split(rng, 4)
  claims = debater.answer(nodes, keys[0])
  others = debater.answer(nodes, keys[1])
  supports = debater.support(nodes, claims.tokens, keys[2])
  stops = debater.stop(nodes, claims.tokens, others.tokens, keys[3])
  prompts = {
      "answer": model_player.answer_prompts(task, nodes),
      "support": model_player.support_prompts(task, nodes, claims.tokens),
      "stop": model_player.stop_prompts(task, nodes, claims.tokens, others.tokens),
  }
  moves = dict(answer=claims, support=supports, stop=stops)
  return {role: (move, debater.model.log_prob(debater.params, prompts[role], move.tokens,
                                              temperature=debater.temperature))
          for role, move in moves.items()}


# M's teacher-forced log-probs (``ModelDebater.score``) and the policy rows of a transcript, as one
# program each (eagerly every transformer op compiles on its own); static debater fields (task,
# temperature, greedy) are in the cache key, parameters are traced.
_score = jax.jit(lambda debater, prompts, tokens: debater.score(prompts, tokens))


@jax.jit
def _support_score(debater, nodes, claims, supports):
  return debater.score(model_player.support_prompts(debater.task, nodes, claims), supports)


@functools.cache
def _policy_rows(name):
  from amp_debate.procedure import credit  # pylint: disable=import-outside-toplevel
  task = _task(name)
  return jax.jit(lambda transcript: credit.policy_rows(task, transcript, drop_eval_part=False))


def _lengths(task):
  return dict(answer=task.answer_len, support=protocol.support_len(task), stop=1)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_moves_have_protocol_shapes_and_model_log_probs(name):
  task, debater = _task(name), _debater(name)
  out = _play(debater, _questions(name), jax.random.key(2))
  for role, length in _lengths(task).items():
    move, rescored = out[role]
    assert isinstance(move, players.Move)
    assert move.tokens.shape == (BATCH, length) and move.tokens.dtype == jnp.int32, role
    assert move.log_probs.shape == (BATCH, length) and move.log_probs.dtype == jnp.float32, role
    tokens = np.asarray(move.tokens)
    assert ((tokens >= 0) & (tokens < task.vocab_size)).all(), role
    assert (np.asarray(move.log_probs) <= 0).all(), role
    np.testing.assert_allclose(move.log_probs, rescored, atol=1e-5, err_msg=role)


def test_greedy_is_deterministic_and_scored_at_its_temperature():
  name = "permutation"
  debater = _debater(name, greedy=True, temperature=0.5)
  nodes = _questions(name)
  a, b = _play(debater, nodes, jax.random.key(3)), _play(debater, nodes, jax.random.key(4))
  for role in a:
    np.testing.assert_array_equal(a[role][0].tokens, b[role][0].tokens, err_msg=role)
    np.testing.assert_allclose(a[role][0].log_probs, a[role][1], atol=1e-5, err_msg=role)
  # score() is the same teacher-forced log-prob (temperature included).
  np.testing.assert_allclose(_support_score(debater, nodes, a["answer"][0].tokens,
                                            a["support"][0].tokens),
                             a["support"][0].log_probs, atol=1e-5)


def test_sampling_depends_on_the_key():
  debater, nodes = _debater("permutation"), _questions("permutation", batch=BATCH)
  a, b = _play(debater, nodes, jax.random.key(5)), _play(debater, nodes, jax.random.key(6))
  assert any((np.asarray(a[r][0].tokens) != np.asarray(b[r][0].tokens)).any() for r in a)


def test_params_are_a_traced_argument():
  """New parameters reuse the compiled function (only static fields are in the cache key)."""
  nodes = _questions("permutation")
  _play(_debater("permutation", seed=0), nodes, jax.random.key(7))
  before = TRACES["play"]
  a = _play(_debater("permutation", seed=0), nodes, jax.random.key(7))
  b = _play(_debater("permutation", seed=1), nodes, jax.random.key(7))
  assert TRACES["play"] == before
  assert not np.allclose(a["answer"][0].log_probs, b["answer"][0].log_probs)


def test_rejects_short_max_len_and_small_vocab():
  task = _task("permutation")
  needed = model_player.required_max_len(task)
  assert needed == protocol.prompt_len(task) + protocol.support_len(task) - 1
  short = models.LanguageModel(models.preset("tiny", task.vocab_size, needed - 1))
  with pytest.raises(ValueError, match=f"max_len >= {needed}"):
    model_player.ModelDebater(short, None, task)
  small = models.LanguageModel(models.preset("tiny", task.vocab_size - 1, needed))
  with pytest.raises(ValueError, match="vocab_size"):
    model_player.ModelDebater(small, None, task)
  with pytest.raises(ValueError, match="temperature"):
    model_player.ModelDebater(_model("permutation"), None, task, temperature=0.0)
  other_pad = models.LanguageModel(models.preset("tiny", task.vocab_size, needed, pad_id=1))
  with pytest.raises(ValueError, match="pad_id is 1"):
    model_player.ModelDebater(other_pad, None, task)


@functools.cache
def _jitted_amplify(name):
  task = _task(name)
  return jax.jit(lambda d, q, k, p, c: amplify(task, d.answer_fn(), q, k, call_prob=p,
                                               confidence_threshold=c))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_answer_fn_in_amplify_records_model_log_probs(name):
  task, debater = _task(name), _debater(name)
  batch = 16
  questions = _questions(name, seed=8, batch=batch)
  out = _jitted_amplify(name)(debater, questions, jax.random.key(9), 0.0, 0.5)
  score = jax.jit(lambda d, q, a: d.score(model_player.answer_prompts(task, q), a))
  # Direct answers: M's log-probs of its own answers to ANSWER(q).
  np.testing.assert_allclose(out.direct_log_probs, score(debater, questions, out.direct),
                             atol=1e-5)
  # Subanswers: M's log-probs where H posed the subquestion, 0 elsewhere.
  s = task.num_subquestions
  flat_q = out.subquestions.reshape(batch * s, -1)
  flat_a = out.subanswers.reshape(batch * s, -1)
  rescored = np.asarray(score(debater, flat_q, flat_a)).reshape(out.sub_log_probs.shape)
  valid = np.asarray(out.sub_valid)
  assert valid.any()
  np.testing.assert_allclose(np.asarray(out.sub_log_probs)[valid], rescored[valid], atol=1e-5)
  assert (np.asarray(out.sub_log_probs)[~valid] == 0).all()
  # The confidence rule with call_prob 0: H is called exactly where M is unsure. The same key gives
  # the same direct answers, so a threshold at the median confidence splits the batch.
  confidence = np.exp(np.asarray(out.direct_log_probs).sum(-1))
  threshold = float(np.median(confidence))
  out = _jitted_amplify(name)(debater, questions, jax.random.key(9), 0.0, threshold)
  np.testing.assert_allclose(np.exp(np.asarray(out.direct_log_probs).sum(-1)), confidence)
  np.testing.assert_array_equal(out.called, confidence < threshold)
  assert 0 < int(out.human_calls) < batch
  answers, amplified, direct = map(np.asarray, (out.answers, out.amplified, out.direct))
  called = np.asarray(out.called)
  np.testing.assert_array_equal(answers[called], amplified[called])
  np.testing.assert_array_equal(answers[~called], direct[~called])


# ---- M in the debate: supports where H was called are its computation's trace -------------------
SELF_PLAY_BATCH = 16


@functools.cache
def _model_self_play(name, call_prob):
  """An untrained M in self-play (t_max = 4: the root is the only node with supports); returns
  (questions, GameState, Transcript) as numpy arrays. One compile per call_prob."""
  task = _task(name)
  config = debate.DebateConfig(t_max=4, call_prob=call_prob, learned_stop=False, early_exit=False,
                               assign_prob=0.0)
  run = jax.jit(lambda d, q, k: debate.rollout(task, d, d, q, k, config))
  questions = _questions(name, seed=10, batch=SELF_PLAY_BATCH)
  state, transcript = run(_debater(name), questions, jax.random.key(11))
  return jax.tree.map(np.asarray, (questions, state, transcript))


@functools.cache
def _jitted_checks(name):
  """(nodes [B, Lq], claims [B, 2, La], supports [B, 2, S*La]) -> bool[B, 2] check_support, and
  (debater, nodes, claims [B, La], supports [B, S*La]) -> M's log-probs of the supports."""
  task = _task(name)
  check = jax.jit(jax.vmap(jax.vmap(functools.partial(protocol.check_support, task),
                                    in_axes=(None, 0, 0))))
  score = jax.jit(lambda d, n, c, s: d.score(model_player.support_prompts(task, n, c), s))
  return check, score


def test_model_supports_where_h_was_called_are_consistent():
  """Where H was called in a side's Amp′ computation its support is that computation's trace,
  which recombines to its claim: no game ends INCONSISTENT at the root, even with an untrained M.
  Where H was not called M samples SUPPORT itself, and an untrained M's supports are mostly
  inconsistent (so the check can fail)."""
  name = "permutation"
  check, score = _jitted_checks(name)

  questions, state, transcript = _model_self_play(name, 1.0)
  comps, made = transcript.comps, transcript.support_made[:, 0]  # [B, 2] at the root
  called = comps.called[:, 0]
  np.testing.assert_array_equal(called, comps.active[:, 0])  # call_prob 1: H in every Amp′
  assert (made & called).sum() >= 4  # not vacuous: supports were made
  trace = comps.subanswers[:, 0].reshape(SELF_PLAY_BATCH, 2, -1)
  supports = transcript.support_tokens[:, 0]
  np.testing.assert_array_equal(supports[made], trace[made])
  assert not transcript.support_sampled.any()
  assert not transcript.support_log_probs[:, 0][made].any()  # H's recombination: no policy
  assert np.asarray(check(questions, transcript.claims[:, 0], supports))[made].all()
  assert not (state.reason == debate.INCONSISTENT).any()

  questions, state, transcript = _model_self_play(name, 0.0)
  made = transcript.support_made[:, 0]
  assert not transcript.comps.called.any() and made.any()
  np.testing.assert_array_equal(transcript.support_sampled[:, 0], made)
  claims, supports = transcript.claims[:, 0], transcript.support_tokens[:, 0]
  ok = np.asarray(check(questions, claims, supports))
  assert not ok[made].all()  # M's own supports: some inconsistent ...
  assert (state.reason == debate.INCONSISTENT).any()  # ... and they lose at once
  # Sampled supports carry M's log-probs (the policy gradient reaches them).
  debater = _debater(name)
  for side in (0, 1):
    rescored = np.asarray(score(debater, questions, claims[:, side], supports[:, side]))
    np.testing.assert_allclose(transcript.support_log_probs[:, 0, side][made[:, side]],
                               rescored[made[:, side]], atol=1e-5)


def test_answer_excluding_samples_the_renormalised_distribution_without_the_excluded_answer():
  """Exactly π(· | · ≠ excluded) for one-token answers: empirical frequencies over 4,000 draws
  match the renormalised softmax (within 4 standard errors), the excluded token never appears,
  and the recorded log-probs are M's unconditioned ones (what ``score`` gives)."""
  debater = _debater("permutation", temperature=2.0)
  task = _task("permutation")
  node = _questions("permutation", batch=1)
  n = 4000
  nodes = jnp.repeat(node, n, axis=0)
  probs_of = jax.jit(lambda d, q: jax.nn.softmax(d.model.answer_logits(
      d.params, model_player.answer_prompts(task, q), jnp.zeros((1, 1), jnp.int32))[0, 0] / 2.0))
  probs = np.asarray(probs_of(debater, nodes[:1]))
  excluded = int(np.argmax(probs))
  move = jax.jit(debater.answer_excluding)(nodes, jnp.full((n, 1), excluded, jnp.int32),
                                           jax.random.key(3))
  tokens = np.asarray(move.tokens)[:, 0]
  assert not (tokens == excluded).any()
  expected = probs.copy()
  expected[excluded] = 0.0
  expected /= expected.sum()
  counts = np.bincount(tokens, minlength=probs.size) / n
  stderr = np.sqrt(expected * (1 - expected) / n)
  assert (np.abs(counts - expected) <= 4 * stderr + 1e-9).all()
  scored = np.asarray(_score(debater, model_player.answer_prompts(task, nodes[:50]),
                             move.tokens[:50]))
  np.testing.assert_allclose(np.asarray(move.log_probs)[:50], scored, atol=1e-5)
  greedy = dataclasses.replace(debater, greedy=True)
  best_other = int(np.argsort(probs)[-2])
  assert (np.asarray(jax.jit(greedy.answer_excluding)(
      nodes[:4], jnp.full((4, 1), excluded, jnp.int32), jax.random.key(0)).tokens)
          == best_other).all()


def test_distinct_claims_contest_every_self_play_game():
  """Contest by construction: at a low temperature an untrained M's two root claims often agree
  (a concession, the control); with ``distinct_claims`` they never do in an unassigned game where
  odd answered directly, odd's redrawn claim is what its policy row records (with M's log-prob),
  and the games where the claims already differed are untouched (same keys)."""
  task = _task("permutation")
  debater = _debater("permutation", temperature=0.3)
  questions = _questions("permutation", seed=4, batch=64)
  results = {}
  for distinct in (False, True):
    config = debate.DebateConfig(t_max=4, call_prob=0.0, learned_stop=False,
                                 distinct_claims=distinct, early_exit=False, assign_prob=0.0)
    results[distinct] = jax.jit(lambda q, k, c=config: debate.rollout(
        task, debater, debater, q, k, c))(questions, jax.random.key(5))
  (game_off, tr_off), (game_on, tr_on) = results[False], results[True]
  same_off = (np.asarray(tr_off.claims)[:, 0, 0] == np.asarray(tr_off.claims)[:, 0, 1]).all(-1)
  same_on = (np.asarray(tr_on.claims)[:, 0, 0] == np.asarray(tr_on.claims)[:, 0, 1]).all(-1)
  assert same_off.sum() >= 8  # the control: many self-play games open with a concession
  assert not same_on.any()
  assert not (np.asarray(game_on.reason) == debate.CONCEDE)[same_off].any()
  # Even's claims, and odd's where they already differed, are the same draws.
  np.testing.assert_array_equal(np.asarray(tr_on.claims)[:, 0, 0], np.asarray(tr_off.claims)[:, 0, 0])
  np.testing.assert_array_equal(np.asarray(tr_on.claims)[~same_off, 0, 1],
                                np.asarray(tr_off.claims)[~same_off, 0, 1])
  rows = _policy_rows("permutation")(tr_on)
  odd_claim_rows = jax.tree.map(lambda x: np.asarray(x)[:, 0, 1, 0], rows)  # node 0, odd, direct
  assert odd_claim_rows.mask[:, 0].all()
  np.testing.assert_array_equal(odd_claim_rows.tokens[:, 0], np.asarray(tr_on.claims)[:, 0, 1, 0])
  scored = _score(debater, jnp.asarray(odd_claim_rows.prompts),
                  jnp.asarray(odd_claim_rows.tokens[:, :task.answer_len]))
  np.testing.assert_allclose(odd_claim_rows.log_probs[:, :task.answer_len], np.asarray(scored),
                             atol=1e-5)


def test_explored_claims_are_uniform_other_answers_scored_by_m():
  """Challenger exploration at explore_prob 1: odd's root claim in every unassigned game is an
  answer of the task other than even's, spread over the answers (every answer drawn, none in half
  of 256 games), and its policy row records M's own log-prob of it; even's claims are those of
  the control (explore_prob 0, the default: no exploration), draw for draw. The evaluation never
  explores."""
  task = _task("permutation")
  debater = _debater("permutation", temperature=1.0)
  questions = _questions("permutation", seed=6, batch=256)
  results = {}
  for prob in (0.0, 1.0):
    config = debate.DebateConfig(t_max=4, call_prob=0.0, learned_stop=False, explore_prob=prob,
                                 early_exit=False, assign_prob=0.0)
    results[prob] = jax.jit(lambda q, k, c=config: debate.rollout(
        task, debater, debater, q, k, c))(questions, jax.random.key(7))
  control = results[0.0]
  assert debate.DebateConfig(t_max=4, call_prob=0.0, learned_stop=False, early_exit=False,
                             assign_prob=0.0).explore_prob == 0.0
  claims = np.asarray(results[1.0][1].claims)[:, 0, :, 0]  # [B, 2] root claims
  vocab = np.asarray(players.answer_vocabulary(task))
  assert np.isin(claims[:, 1], vocab).all()
  assert (claims[:, 1] != claims[:, 0]).all()
  np.testing.assert_array_equal(claims[:, 0], np.asarray(control[1].claims)[:, 0, 0, 0])
  counts = np.bincount(np.searchsorted(vocab, claims[:, 1]), minlength=len(vocab))
  assert (counts > 0).all() and counts.max() < 256 / 2  # spread, not one answer
  rows = _policy_rows("permutation")(results[1.0][1])
  odd = jax.tree.map(lambda x: np.asarray(x)[:, 0, 1, 0], rows)  # node 0, odd, direct answer
  assert odd.mask[:, 0].all()
  np.testing.assert_array_equal(odd.tokens[:, 0], claims[:, 1])
  scored = _score(debater, jnp.asarray(odd.prompts), jnp.asarray(odd.tokens[:, :1]))
  np.testing.assert_allclose(odd.log_probs[:, :1], np.asarray(scored), atol=1e-5)
  from amp_debate.train import evaluation  # pylint: disable=import-outside-toplevel
  played = debate.DebateConfig(explore_prob=0.5, early_exit=False, assign_prob=0.0)
  assert evaluation.eval_debate_config(task, played).explore_prob == 0


def test_explore_prob_is_checked():
  with pytest.raises(ValueError, match="explore_prob"):
    debate.DebateConfig(explore_prob=1.5, early_exit=False, assign_prob=0.0)
