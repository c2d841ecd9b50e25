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
  batch = _sample(task, 4, 512)
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
