"""Amp(H, M) and Amp′(H, M) over a batch of questions, with human-call counting.

Amp(H, M)(q): H decomposes q, asks M the subquestions one after another (the i-th may depend on the
answers to earlier ones), and recombines; at a leaf H answers alone.
Amp′(H, M)(q) = Amp(H, M)(q) if call(q) else M(q), where call(q) ~ Bernoulli(call_prob). Each call
of H is one *human call*, the scarce resource; ``AmpOutput.human_calls`` counts them.

``answer_fn(questions int32[B, Lq], rng) -> answers int32[B, La]`` stands for M: later the model, in
tests an oracle or a deliberately wrong function. It is traced once (the subquestions run in a
``lax.scan``), so wrapping a large model costs one trace regardless of the number of subquestions.
"""

from __future__ import annotations

from typing import Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp

from amp_debate.tasks.base import Task
from amp_debate.tasks.tokenizer import PAD

AnswerFn = Callable[[jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class AmpOutput:
  """Result of Amp′(H, M) on a batch (B questions, S subquestions each).

  Attributes:
    answers: int32[B, La] Amp′ answers: ``amplified`` where H was called, else ``direct``.
    amplified: int32[B, La] Amp(H, M) answers (computed for every question; static shapes).
    direct: int32[B, La] M's own answers to the questions.
    called: bool[B] whether H was called on each question.
    human_calls: int32[] number of H calls in this batch (= called.sum()).
    is_leaf: bool[B] whether H answered alone (no subquestions).
    subquestions: int32[B, S, Lq] every subquestion posed (the trace).
    subanswers: int32[B, S, La] M's answers to them (PAD where invalid).
    sub_valid: bool[B, S] which subquestions H actually posed.
  """

  answers: jax.Array
  amplified: jax.Array
  direct: jax.Array
  called: jax.Array
  human_calls: jax.Array
  is_leaf: jax.Array
  subquestions: jax.Array
  subanswers: jax.Array
  sub_valid: jax.Array


def amplify(task: Task, answer_fn: AnswerFn, questions: jax.Array, rng: jax.Array, *,
            call_prob: float | jax.Array = 1.0) -> AmpOutput:
  """Amp′(H, M) on a batch.

  Args:
    task: the task (H's abilities).
    answer_fn: M, ``(int32[B, Lq], key) -> int32[B, La]``.
    questions: int32[B, Lq].
    rng: PRNG key (call decisions and M's sampling).
    call_prob: probability of calling H on each question (1.0: always, i.e. plain Amp(H, M)).
  Returns:
    AmpOutput (shapes in its docstring).
  """
  chex.assert_rank(questions, 2)
  chex.assert_type(questions, jnp.int32)
  batch = questions.shape[0]
  call_rng, direct_rng, sub_rng = jax.random.split(rng, 3)
  amplified, is_leaf, subquestions, subanswers, sub_valid = _amp(task, answer_fn, questions, sub_rng)
  direct = answer_fn(questions, direct_rng).astype(jnp.int32)
  chex.assert_equal_shape([direct, amplified])
  called = jax.random.uniform(call_rng, (batch,)) < call_prob
  answers = jnp.where(called[:, None], amplified, direct)
  return AmpOutput(
      answers=answers, amplified=amplified, direct=direct, called=called,
      human_calls=called.sum().astype(jnp.int32), is_leaf=is_leaf,
      subquestions=subquestions, subanswers=subanswers, sub_valid=sub_valid)


def _amp(task: Task, answer_fn: AnswerFn, questions: jax.Array, rng: jax.Array):
  """Amp(H, M) on a batch: (amplified [B, La], is_leaf [B], subquestions [B, S, Lq],
  subanswers [B, S, La], sub_valid [B, S])."""
  batch, question_len = questions.shape
  if question_len != task.question_len:
    raise ValueError(f"amplify: questions have length {question_len}, task {task.name} expects "
                     f"{task.question_len}")
  num_sub, answer_len = task.num_subquestions, task.answer_len
  is_leaf = task.batch_is_leaf(questions)

  def ask(subanswers, step):
    i, key = step
    subq, valid = task.batch_subquestion(questions, subanswers, i)
    valid = valid & ~is_leaf
    answer = answer_fn(subq, key)
    chex.assert_shape(answer, (batch, answer_len))
    answer = jnp.where(valid[:, None], answer.astype(jnp.int32), PAD)
    subanswers = jax.lax.dynamic_update_index_in_dim(subanswers, answer, i, axis=1)
    return subanswers, (subq, valid)

  init = jnp.full((batch, num_sub, answer_len), PAD, jnp.int32)
  steps = (jnp.arange(num_sub), jax.random.split(rng, num_sub))
  subanswers, (subquestions, sub_valid) = jax.lax.scan(ask, init, steps)
  subquestions = jnp.swapaxes(subquestions, 0, 1)  # [B, S, Lq]
  sub_valid = jnp.swapaxes(sub_valid, 0, 1)  # [B, S]
  recombined = task.batch_recombine(questions, subanswers, sub_valid)
  amplified = jnp.where(is_leaf[:, None], task.batch_leaf_answer(questions), recombined)
  return amplified, is_leaf, subquestions, subanswers, sub_valid


# ---- reference answerers (tests, baselines) -----------------------------------------------------
def oracle_fn(task: Task) -> AnswerFn:
  """A perfect M: answers every question with ``task.solve`` (evaluation and tests only)."""
  return lambda questions, rng: task.batch_solve(questions)


def human_alone_fn(task: Task) -> AnswerFn:
  """H without M: H's direct answer to every question (exact only at leaves)."""
  return lambda questions, rng: task.batch_leaf_answer(questions)


def human_tree_fn(task: Task, depth: int) -> AnswerFn:
  """H's full decomposition ``depth`` levels deep: Amp(H, Amp(H, ... H alone)).

  Exact on every question whose difficulty is <= depth (that is what difficulty means). Costs
  S**depth evaluations of H per question, so keep depth small.
  """
  fn = human_alone_fn(task)
  for _ in range(depth):
    fn = (lambda inner: lambda q, rng: _amp(task, inner, q, rng)[0])(fn)
  return fn
