"""Amp(H, M) and Amp′(H, M) over a batch of questions, with human-call counting.

Amp(H, M)(q): H decomposes q, asks M the subquestions one after another (the i-th may depend on the
answers to earlier ones), and recombines; at a leaf H answers alone.
Amp′(H, M)(q) = Amp(H, M)(q) if call(q) else M(q). Each call of H is one *human call*, the scarce
resource; ``AmpOutput.human_calls`` counts them. The call rule (``amplify``'s arguments):

  call(q) = (uniform(q) < call_prob) | (confidence(q) < confidence_threshold)

with confidence(q) = exp(sum of M's log-probs of its direct answer to q), i.e. the probability M
gave its own answer (under its sampling temperature). Without a threshold only the Bernoulli draw
decides (call_prob defaults to 1.0: plain Amp(H, M)); with a threshold call_prob defaults to 0.0,
the pure confidence rule, and a positive call_prob adds random calls on confident questions too.

``answer_fn(questions int32[B, Lq], rng)`` stands for M: the model (``model_player.ModelDebater
.answer_fn``), in tests an oracle or a deliberately wrong function. It returns either answers
int32[B, La] or a pair (answers int32[B, La], log_probs float32[B, La]) of M's per-token log-probs;
plain answers count as log-prob 0 (certain). It is traced once (the subquestions run in a
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

# (questions int32[B, Lq], key) -> answers int32[B, La] | (answers, log_probs float32[B, La])
AnswerFn = Callable[[jax.Array, jax.Array], "jax.Array | tuple[jax.Array, jax.Array]"]


@flax.struct.dataclass
class AmpOutput:
  """Result of Amp′(H, M) on a batch (B questions, S subquestions each).

  Attributes:
    answers: int32[B, La] Amp′ answers: ``amplified`` where H was called, else ``direct``.
    amplified: int32[B, La] Amp(H, M) answers (computed for every question; static shapes).
    direct: int32[B, La] M's own answers to the questions (PAD where not computed: H always
      called, see ``amplify``).
    direct_log_probs: float32[B, La] M's log-probs of its direct answers (0 for plain answer_fns,
      and where not computed).
    called: bool[B] whether H was called on each question.
    human_calls: int32[] number of H calls in this batch (= called.sum()).
    is_leaf: bool[B] whether H answered alone (no subquestions).
    subquestions: int32[B, S, Lq] every subquestion posed (the trace).
    subanswers: int32[B, S, La] M's answers to them (PAD where invalid).
    sub_log_probs: float32[B, S, La] M's log-probs of those answers (0 where invalid or plain).
    sub_valid: bool[B, S] which subquestions H actually posed.
  """

  answers: jax.Array
  amplified: jax.Array
  direct: jax.Array
  direct_log_probs: jax.Array
  called: jax.Array
  human_calls: jax.Array
  is_leaf: jax.Array
  subquestions: jax.Array
  subanswers: jax.Array
  sub_log_probs: jax.Array
  sub_valid: jax.Array


def amplify(task: Task, answer_fn: AnswerFn, questions: jax.Array, rng: jax.Array, *,
            call_prob: float | jax.Array | None = None,
            confidence_threshold: float | jax.Array | None = None,
            direct: bool | None = None) -> AmpOutput:
  """Amp′(H, M) on a batch.

  H is called on question q iff ``uniform(q) < call_prob`` or ``confidence(q) <
  confidence_threshold`` (module docstring), so call_prob=1 always calls and call_prob=0 with a
  threshold is the pure confidence rule.

  Args:
    task: the task (H's abilities).
    answer_fn: M, ``(int32[B, Lq], key) -> int32[B, La]`` or ``-> (int32[B, La], float32[B, La])``.
    questions: int32[B, Lq].
    rng: PRNG key (call decisions and M's sampling).
    call_prob: probability in [0, 1] of calling H on each question regardless of confidence.
      Default: 1.0 (plain Amp(H, M)) without a threshold, 0.0 with one.
    confidence_threshold: None (no confidence rule) or a value in [0, 1]: H is also called where
      M's confidence in its direct answer is below it. Needs an answer_fn that returns log-probs.
    direct: whether to compute M's direct answers. None (default): unless H is called on every
      question by construction (call_prob the Python number 1, no threshold), where no answer
      uses them and they would cost one more pass of M over the batch; then ``direct`` is PAD
      and its log-probs 0. The other outputs, and the random draws behind them, do not depend
      on it. False is refused unless H is always called.
  Returns:
    AmpOutput (shapes in its docstring).
  Raises:
    ValueError: a Python-number call_prob or confidence_threshold outside [0, 1], or a threshold
      with an answer_fn that returns no log-probs.
  """
  chex.assert_rank(questions, 2)
  chex.assert_type(questions, jnp.int32)
  _check_unit_interval("call_prob", call_prob)
  _check_unit_interval("confidence_threshold", confidence_threshold)
  if call_prob is None:
    call_prob = 1.0 if confidence_threshold is None else 0.0
  batch = questions.shape[0]
  call_rng, direct_rng, sub_rng = jax.random.split(rng, 3)
  amplified, is_leaf, subquestions, subanswers, sub_log_probs, sub_valid = _amp(
      task, answer_fn, questions, sub_rng, with_log_probs=True)
  always = (confidence_threshold is None and isinstance(call_prob, (int, float))
            and call_prob == 1)
  if direct is None:
    direct = not always
  elif not direct and not always:
    raise ValueError("amplify: direct=False needs H called on every question (call_prob=1, no "
                     "confidence_threshold): elsewhere Amp′ answers with M's direct answer")
  if direct:
    raw = answer_fn(questions, direct_rng)
    if confidence_threshold is not None and not isinstance(raw, tuple):
      raise ValueError("amplify: confidence_threshold needs an answer_fn that returns "
                       "(answers, log_probs); this one returns answers only")
    direct_answers, direct_log_probs = _answers_and_log_probs(raw, (batch, task.answer_len))
  else:
    direct_answers = jnp.full((batch, task.answer_len), PAD, jnp.int32)
    direct_log_probs = jnp.zeros((batch, task.answer_len), jnp.float32)
  chex.assert_equal_shape([direct_answers, amplified])
  called = jax.random.uniform(call_rng, (batch,)) < call_prob
  if confidence_threshold is not None:
    confidence = jnp.exp(direct_log_probs.sum(axis=-1))
    called = called | (confidence < confidence_threshold)
  answers = jnp.where(called[:, None], amplified, direct_answers)
  return AmpOutput(
      answers=answers, amplified=amplified, direct=direct_answers,
      direct_log_probs=direct_log_probs,
      called=called, human_calls=called.sum().astype(jnp.int32), is_leaf=is_leaf,
      subquestions=subquestions, subanswers=subanswers, sub_log_probs=sub_log_probs,
      sub_valid=sub_valid)


def _check_unit_interval(name: str, value) -> None:
  """ValueError unless a Python-number ``value`` is in [0, 1] (None and arrays pass unchecked)."""
  if isinstance(value, bool) or (isinstance(value, (int, float)) and not 0.0 <= value <= 1.0):
    raise ValueError(f"amplify: {name} must be a number in [0, 1], got {value!r}")


def _answers_and_log_probs(raw, shape):
  """An answer_fn's result -> (answers int32[B, La], log_probs float32[B, La]; zeros if absent)."""
  if isinstance(raw, tuple):
    answers, log_probs = raw
    chex.assert_shape([answers, log_probs], shape)
    return answers.astype(jnp.int32), log_probs.astype(jnp.float32)
  chex.assert_shape(raw, shape)
  return raw.astype(jnp.int32), jnp.zeros(shape, jnp.float32)


def _amp(task: Task, answer_fn: AnswerFn, questions: jax.Array, rng: jax.Array, *,
         with_log_probs: bool = False):
  """Amp(H, M) on a batch: (amplified [B, La], is_leaf [B], subquestions [B, S, Lq],
  subanswers [B, S, La], [sub_log_probs [B, S, La] if with_log_probs,] sub_valid [B, S])."""
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
    answer, log_probs = _answers_and_log_probs(answer_fn(subq, key), (batch, answer_len))
    answer = jnp.where(valid[:, None], answer, PAD)
    log_probs = jnp.where(valid[:, None], log_probs, 0.0)
    subanswers = jax.lax.dynamic_update_index_in_dim(subanswers, answer, i, axis=1)
    return subanswers, (subq, log_probs, valid)

  init = jnp.full((batch, num_sub, answer_len), PAD, jnp.int32)
  steps = (jnp.arange(num_sub), jax.random.split(rng, num_sub))
  subanswers, trace = jax.lax.scan(ask, init, steps)
  subquestions, sub_log_probs, sub_valid = (jnp.swapaxes(x, 0, 1) for x in trace)  # [B, S, ...]
  recombined = task.batch_recombine(questions, subanswers, sub_valid)
  amplified = jnp.where(is_leaf[:, None], task.batch_leaf_answer(questions), recombined)
  if with_log_probs:
    return amplified, is_leaf, subquestions, subanswers, sub_log_probs, sub_valid
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
