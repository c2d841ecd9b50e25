"""Amp′(H, M): the stochastic call decision, human-call counting and the trace."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate import tasks
from amp_debate.procedure.amplify import amplify, human_alone_fn, oracle_fn


@pytest.fixture(scope="module")
def task():
  return tasks.get("permutation", n=6, max_exponent=8)


def _sample(task, seed, batch):
  return jax.jit(task.sample, static_argnums=1)(jax.random.key(seed), batch)


@functools.cache
def _jitted_amplify(task, answerer):
  answer_fn = answerer(task)
  return jax.jit(lambda q, k, p: amplify(task, answer_fn, q, k, call_prob=p))


def _amplify(task, answerer, questions, seed, call_prob=1.0):
  """Amp′ with M = answerer(task); one compilation per (task, answerer, batch shape)."""
  return _jitted_amplify(task, answerer)(questions, jax.random.key(seed), call_prob)


@pytest.mark.parametrize("call_prob", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_call_fraction_matches_probability(task, call_prob):
  batch = _sample(task, 0, 8192)
  out = _amplify(task, oracle_fn, batch.questions, 1, call_prob)
  fraction = float(out.called.mean())
  sigma = np.sqrt(call_prob * (1 - call_prob) / 8192)
  assert abs(fraction - call_prob) <= 4 * sigma + 1e-9
  assert int(out.human_calls) == int(out.called.sum())


def test_amp_prime_mixes_amplified_and_direct_answers(task):
  """Where H is called the answer is Amp(H, M); elsewhere it is M's own answer."""
  batch = _sample(task, 2, 2048)
  out = _amplify(task, human_alone_fn, batch.questions, 3, 0.5)
  called = np.asarray(out.called)
  answers, amplified, direct = map(np.asarray, (out.answers, out.amplified, out.direct))
  np.testing.assert_array_equal(answers[called], amplified[called])
  np.testing.assert_array_equal(answers[~called], direct[~called])
  np.testing.assert_array_equal(direct, task.batch_leaf_answer(batch.questions))
  # Amp(H, H alone) is exact one level above the leaves, H alone is not.
  level1 = np.asarray(batch.difficulty) == 1
  assert (amplified[level1] == np.asarray(batch.answers)[level1]).all()
  assert (direct[level1] != np.asarray(batch.answers)[level1]).any()


def test_call_decisions_depend_on_the_key(task):
  batch = _sample(task, 4, 256)  # 256: the batch of the trace tests, one compile for all three
  a = _amplify(task, oracle_fn, batch.questions, 5, 0.5).called
  b = _amplify(task, oracle_fn, batch.questions, 5, 0.5).called
  c = _amplify(task, oracle_fn, batch.questions, 6, 0.5).called
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a) != np.asarray(c)).any()


def test_trace_records_every_subquestion(task):
  batch = _sample(task, 7, 256)
  out = _amplify(task, oracle_fn, batch.questions, 8)
  b, s = 256, task.num_subquestions
  assert out.subquestions.shape == (b, s, task.question_len)
  assert out.subanswers.shape == (b, s, task.answer_len)
  leaf = np.asarray(out.is_leaf)
  valid = np.asarray(out.sub_valid)
  assert not valid[leaf].any() and valid[~leaf].all()
  # The oracle's answers to the recorded subquestions are what the trace holds.
  flat_q = out.subquestions.reshape(b * s, -1)
  truth = np.asarray(task.batch_solve(flat_q)).reshape(b, s, -1)
  np.testing.assert_array_equal(np.asarray(out.subanswers)[valid], truth[valid])
  assert (np.asarray(out.subanswers)[~valid] == tasks.PAD).all()


def test_rejects_wrong_question_length(task):
  with pytest.raises(ValueError, match="expects"):
    amplify(task, oracle_fn(task), jnp.zeros((4, task.question_len + 1), jnp.int32),
            jax.random.key(0))


# ---- M's log-probs in the trace and the confidence call rule -----------------------------------
UNSURE_LOG_PROB = -3.0  # confidence exp(-3) ~ 0.05 per answer token


def _confident(questions):
  """bool[B]: a fixed, question-dependent half of the questions on which the hand-set M is sure."""
  return questions.sum(-1) % 2 == 0


def hand_confident_fn(task):
  """The oracle, reporting log-prob 0 on ``_confident`` questions and UNSURE_LOG_PROB elsewhere."""
  def answer(questions, rng):
    log_probs = jnp.where(_confident(questions)[:, None], 0.0, UNSURE_LOG_PROB)
    return task.batch_solve(questions), jnp.broadcast_to(log_probs, (questions.shape[0],
                                                                     task.answer_len))
  return answer


@functools.cache
def _jitted_confidence(task, answerer):
  answer_fn = answerer(task)
  return jax.jit(lambda q, k, p, c: amplify(task, answer_fn, q, k, call_prob=p,
                                            confidence_threshold=c))


def test_confidence_rule_calls_exactly_the_unconfident(task):
  batch = _sample(task, 10, 4096)  # the batch of the test below: one compile for both
  confident = np.asarray(_confident(batch.questions))
  assert 0.3 < confident.mean() < 0.7
  out = _jitted_confidence(task, hand_confident_fn)(batch.questions, jax.random.key(11), 0.0, 0.5)
  np.testing.assert_array_equal(out.called, ~confident)
  assert int(out.human_calls) == int((~confident).sum())
  # The default call_prob with a threshold is 0: the pure confidence rule.
  default = jax.jit(lambda q, k: amplify(task, hand_confident_fn(task), q, k,
                                         confidence_threshold=0.5))(batch.questions,
                                                                     jax.random.key(11))
  np.testing.assert_array_equal(default.called, ~confident)
  # Threshold 0 never calls on confidence; below-threshold questions are always called.
  never = _jitted_confidence(task, hand_confident_fn)(batch.questions, jax.random.key(11), 0.0, 0.0)
  assert not np.asarray(never.called).any()


def test_confidence_rule_or_bernoulli(task):
  """call = unconfident | Bernoulli(p): every unconfident question, and about p of the others."""
  batch = _sample(task, 12, 4096)
  confident = np.asarray(_confident(batch.questions))
  out = _jitted_confidence(task, hand_confident_fn)(batch.questions, jax.random.key(13), 0.3, 0.5)
  called = np.asarray(out.called)
  assert called[~confident].all()
  n = confident.sum()
  assert abs(called[confident].mean() - 0.3) <= 4 * np.sqrt(0.3 * 0.7 / n)


def test_trace_records_log_probs(task):
  batch = _sample(task, 14, 256)
  out = _jitted_confidence(task, hand_confident_fn)(batch.questions, jax.random.key(15), 1.0, 0.5)
  expected = np.where(np.asarray(_confident(batch.questions)), 0.0, UNSURE_LOG_PROB)
  assert out.direct_log_probs.shape == (256, task.answer_len)
  np.testing.assert_array_equal(np.asarray(out.direct_log_probs)[:, 0], expected)
  s = task.num_subquestions
  assert out.sub_log_probs.shape == (256, s, task.answer_len)
  valid = np.asarray(out.sub_valid)
  flat_q = out.subquestions.reshape(256 * s, -1)
  sub_expected = np.where(np.asarray(_confident(flat_q)), 0.0, UNSURE_LOG_PROB).reshape(256, s)
  np.testing.assert_array_equal(np.asarray(out.sub_log_probs)[..., 0][valid], sub_expected[valid])
  assert (np.asarray(out.sub_log_probs)[~valid] == 0).all()
  # Answers are the oracle's either way.
  np.testing.assert_array_equal(out.answers, batch.answers)


def test_plain_answer_fns_have_zero_log_probs(task):
  batch = _sample(task, 16, 256)
  out = _amplify(task, oracle_fn, batch.questions, 17)
  assert out.direct_log_probs.dtype == jnp.float32
  assert not np.asarray(out.direct_log_probs).any() and not np.asarray(out.sub_log_probs).any()


@pytest.mark.parametrize("kwargs", [
    dict(call_prob=1.5), dict(call_prob=-0.1), dict(confidence_threshold=2.0),
    dict(confidence_threshold=-0.5), dict(call_prob=True)])
def test_rejects_invalid_call_prob_and_threshold(task, kwargs):
  q = jnp.zeros((4, task.question_len), jnp.int32)
  with pytest.raises(ValueError, match="in \\[0, 1\\]"):
    amplify(task, hand_confident_fn(task), q, jax.random.key(0), **kwargs)


def test_threshold_needs_log_probs(task):
  q = jnp.zeros((4, task.question_len), jnp.int32)
  with pytest.raises(ValueError, match="log_probs"):
    amplify(task, oracle_fn(task), q, jax.random.key(0), confidence_threshold=0.5)


def test_direct_answers_are_skipped_only_where_h_is_always_called(task):
  """call_prob 1 without a threshold: no direct answers are computed (PAD, log-prob 0), and
  every other output equals the run that computes them; direct=False elsewhere is refused."""
  batch = _sample(task, 21, 64)
  skipped = amplify(task, oracle_fn(task), batch.questions, jax.random.key(22), call_prob=1.0)
  computed = amplify(task, oracle_fn(task), batch.questions, jax.random.key(22), call_prob=1.0,
                     direct=True)
  assert (np.asarray(skipped.direct) == 0).all()
  np.testing.assert_array_equal(computed.direct, batch.answers)
  for field in ("answers", "amplified", "called", "subquestions", "subanswers", "sub_valid"):
    np.testing.assert_array_equal(getattr(skipped, field), getattr(computed, field), err_msg=field)
  with pytest.raises(ValueError, match="direct=False needs H called on every question"):
    amplify(task, oracle_fn(task), batch.questions, jax.random.key(22), call_prob=0.5,
            direct=False)
