"""The task interface: the question distribution D, the simulated human H, and ground truth.

Every function that takes a question works on ONE question (shapes below) and is pure ``jnp``, so it
runs under ``jax.jit`` and ``jax.vmap``; the ``batch_*`` helpers vmap them over a leading batch axis.

Shapes (per question):
  question    int32[Lq]      Lq = ``task.question_len``
  answer      int32[La]      La = ``task.answer_len``
  subanswers  int32[S, La]   S  = ``task.num_subquestions`` (static maximum; unused rows are masked)
  valid       bool[S]        which subquestions H actually poses for this question

Difficulty is an integer level in ``[0, task.max_difficulty]`` that bounds the depth of H's
decomposition: recursively expanding a question of difficulty d with H alone (Amp(H, Amp(H, ...)),
d levels deep, H answering directly at the bottom) gives the exact answer. Level 0 is a leaf.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import ClassVar

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from amp_debate import checks
from amp_debate.tasks.tokenizer import Tokenizer


@flax.struct.dataclass
class Batch:
  """A batch of questions from D.

  Attributes:
    questions: int32[B, Lq].
    answers: int32[B, La] ground truth (evaluation and the supervised baseline only).
    difficulty: int32[B] level in [0, max_difficulty].
  """

  questions: jax.Array
  answers: jax.Array
  difficulty: jax.Array


def check_option(task: str, name: str, value, lo, hi=None) -> None:
  """Raises ``checks.FieldError`` (a ValueError: "permutation.n must be in [2, 64], got 1")
  unless ``value`` is an integer with lo <= value <= hi."""
  checks.check(task, name, value, checks.integer(lo, hi))


@dataclasses.dataclass(frozen=True)
class Task(abc.ABC):
  """Base class: subclasses are frozen dataclasses whose fields are the difficulty options.

  Subclasses define ``name``, the tokenizer and lengths (in ``__post_init__`` after validating their
  options) and the per-question functions below.
  """

  name: ClassVar[str] = "task"

  # ---- static description (set by subclasses) ------------------------------------------------
  @property
  @abc.abstractmethod
  def tokenizer(self) -> Tokenizer:
    ...

  @property
  @abc.abstractmethod
  def question_len(self) -> int:
    ...

  @property
  def answer_len(self) -> int:
    return 1

  @property
  @abc.abstractmethod
  def num_subquestions(self) -> int:
    ...

  @property
  @abc.abstractmethod
  def max_difficulty(self) -> int:
    ...

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size

  def options(self) -> dict:
    """The difficulty options as a dict (used to name eval sets and in configs)."""
    return dataclasses.asdict(self)

  # ---- D ---------------------------------------------------------------------------------------
  @abc.abstractmethod
  def sample_one(self, rng: jax.Array, difficulty: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One question of the given (traced) difficulty -> (question int32[Lq], answer int32[La])."""
    ...

  def sample(self, rng: jax.Array, batch: int, *, difficulty=None, max_difficulty=None) -> Batch:
    """Samples ``batch`` questions.

    Args:
      rng: PRNG key.
      batch: static batch size B.
      difficulty: optional int or int32[B]: sample exactly these levels.
      max_difficulty: optional (possibly traced) int: levels uniform in [0, max_difficulty]
        (the curriculum's knob). Default: uniform over all levels.
    Returns:
      Batch with questions int32[B, Lq], answers int32[B, La], difficulty int32[B].
    """
    level_rng, question_rng = jax.random.split(rng)
    if difficulty is None:
      top = self.max_difficulty if max_difficulty is None else max_difficulty
      top = jnp.clip(jnp.asarray(top, jnp.int32), 0, self.max_difficulty)
      difficulty = jax.random.randint(level_rng, (batch,), 0, top + 1)
    difficulty = jnp.clip(jnp.asarray(difficulty, jnp.int32), 0, self.max_difficulty)
    difficulty = jnp.broadcast_to(difficulty, (batch,))
    keys = jax.random.split(question_rng, batch)
    questions, answers = jax.vmap(self.sample_one)(keys, difficulty)
    chex.assert_shape(questions, (batch, self.question_len))
    chex.assert_shape(answers, (batch, self.answer_len))
    return Batch(questions=questions, answers=answers, difficulty=difficulty)

  # ---- H ---------------------------------------------------------------------------------------
  @abc.abstractmethod
  def is_leaf(self, question: jax.Array) -> jax.Array:
    """bool[]: can H answer this question directly?"""
    ...

  @abc.abstractmethod
  def leaf_answer(self, question: jax.Array) -> jax.Array:
    """int32[La]: H's direct answer (exact at leaves; a fixed guess elsewhere)."""
    ...

  @abc.abstractmethod
  def subquestion(self, question: jax.Array, subanswers: jax.Array, i) -> tuple[jax.Array, jax.Array]:
    """The i-th subquestion H poses, given answers to subquestions 0..i-1.

    Args:
      question: int32[Lq].
      subanswers: int32[S, La]; rows >= i are not yet known and must not be read.
      i: int (may be traced) in [0, S).
    Returns:
      (subquestion int32[Lq], valid bool[]). Invalid subquestions are ignored by ``recombine``.
    """
    ...

  @abc.abstractmethod
  def recombine(self, question: jax.Array, subanswers: jax.Array, valid: jax.Array) -> jax.Array:
    """int32[La]: H's answer to a non-leaf question from the answers to its subquestions."""
    ...

  # ---- ground truth (evaluation only) ----------------------------------------------------------
  @abc.abstractmethod
  def solve(self, question: jax.Array) -> jax.Array:
    """int32[La]: the true answer. Never a training signal outside the supervised baseline."""
    ...

  # ---- text (host side) ------------------------------------------------------------------------
  def format_question(self, question) -> str:
    """Readable text for one question (numpy or jax int array [Lq])."""
    return self.tokenizer.decode(np.asarray(question))

  def format_answer(self, answer) -> str:
    return self.tokenizer.decode(np.asarray(answer))

  # ---- batched helpers -------------------------------------------------------------------------
  def batch_is_leaf(self, questions):
    return jax.vmap(self.is_leaf)(questions)

  def batch_leaf_answer(self, questions):
    return jax.vmap(self.leaf_answer)(questions)

  def batch_subquestion(self, questions, subanswers, i):
    return jax.vmap(self.subquestion, in_axes=(0, 0, None))(questions, subanswers, i)

  def batch_recombine(self, questions, subanswers, valid):
    return jax.vmap(self.recombine)(questions, subanswers, valid)

  def batch_solve(self, questions):
    return jax.vmap(self.solve)(questions)
