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

**Held out by construction** (DESIGN.md section 2). Every task's question space is split by a hash
of the question tokens (``is_eval_question``): a question is in the *evaluation* part when its hash
falls in one of ``EVAL_BUCKETS`` of ``HASH_BUCKETS`` buckets (1/4 of the space), else in the
*training* part. ``sample(..., part="train")`` (the default, and what the trainer's sampler uses)
redraws a question until it is a training one (``sample_one_in_part``: a ``lax.while_loop`` per
question, on device), so training never draws an evaluation question; the eval sets
(``data.eval_sets``) hold only evaluation-part questions, without repeats.
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

# The split of every question space: hash(question) % HASH_BUCKETS < EVAL_BUCKETS is evaluation.
HASH_BUCKETS = 4
EVAL_BUCKETS = 1
PARTS = ("train", "eval", "any")
# Draws per question before the sampler gives up (a level with no question in the part asked for:
# ``check_parts`` refuses such task options on the host first). With a quarter of a level in the
# evaluation part, 64 draws all missing the training part has probability 4^-64.
MAX_ATTEMPTS = 64
# The hash's seed and multiplier (FNV-1a over 32-bit tokens, then murmur3's finaliser).
_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def question_hash(question: jax.Array) -> jax.Array:
  """uint32[...]: a hash of each question's tokens. question: int32[..., Lq] (jnp or numpy).

  FNV-1a over the 32-bit tokens followed by murmur3's 32-bit finaliser, in wrapping uint32
  arithmetic: a pure function of the tokens, identical on every backend, under jit and on the host.
  """
  tokens = jnp.asarray(question).astype(jnp.uint32)
  h = jnp.full(tokens.shape[:-1], _FNV_OFFSET, jnp.uint32)
  for i in range(tokens.shape[-1]):
    h = (h ^ tokens[..., i]) * jnp.uint32(_FNV_PRIME)
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def is_eval_question(question: jax.Array) -> jax.Array:
  """bool[...]: the question (int32[..., Lq]) lies in the evaluation part of its task's space."""
  return question_hash(question) % jnp.uint32(HASH_BUCKETS) < jnp.uint32(EVAL_BUCKETS)


def in_part(question: jax.Array, part: str) -> jax.Array:
  """bool[...]: the question (int32[..., Lq]) lies in ``part`` ("train", "eval" or "any")."""
  check_part(part)
  if part == "any":
    return jnp.ones(jnp.shape(question)[:-1], bool)
  evaluation = is_eval_question(question)
  return evaluation if part == "eval" else ~evaluation


def check_part(part: str) -> None:
  """Raises ValueError unless ``part`` is one of ``PARTS``."""
  if part not in PARTS:
    raise ValueError(f"question part must be one of {PARTS}, got {part!r}")


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

  # The per-question functions a debate calls many times at the same shapes (every node, claim
  # and check): each subclass's own is a jitted function inlined into its caller, so within a
  # traced program the calls at one set of input shapes share one trace of the task's Python (the
  # program itself is unchanged). Their arguments are arrays (an index ``i`` may be a Python
  # int: it is traced, as it is under the protocol's vmap).
  _TRACED_ONCE: ClassVar[tuple[str, ...]] = ("is_leaf", "leaf_answer", "subquestion", "recombine",
                                             "complete_support", "solve")

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    for method in Task._TRACED_ONCE:
      if method in cls.__dict__:  # the class's own definition (a jitted function is a method too)
        setattr(cls, method, jax.jit(cls.__dict__[method], static_argnums=0, inline=True))

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

  def sample_one_in_part(self, rng: jax.Array, difficulty: jax.Array,
                        part: str = "train") -> tuple[jax.Array, jax.Array]:
    """One question of the given (traced) difficulty from one part of the question space:
    ``sample_one(fold_in(rng, attempt), difficulty)`` for attempt = 0, 1, ... until the question
    lies in ``part`` (a ``lax.while_loop``, at most ``MAX_ATTEMPTS`` draws; "any": the first
    draw). Returns (question int32[Lq], answer int32[La]).

    The draw is D restricted to the part (conditioning by rejection). A level whose questions all
    lie in the other part would end on the last draw, in the wrong part: ``check_parts`` refuses
    such options before training (the trainer calls it), and ``tests/test_held_out.py`` draws
    100,000 training questions per level of every shipped size and finds no evaluation question.
    """
    check_part(part)
    if part == "any":
      return self.sample_one(rng, difficulty)

    def draw(attempt):
      return self.sample_one(jax.random.fold_in(rng, attempt), difficulty)

    def missing(carry):
      return ~in_part(carry[1], part) & (carry[0] < MAX_ATTEMPTS - 1)

    def redraw(carry):
      attempt = carry[0] + 1
      question, answer = draw(attempt)
      return attempt, question, answer

    _, question, answer = jax.lax.while_loop(missing, redraw, (jnp.int32(0), *draw(0)))
    return question, answer

  def sample(self, rng: jax.Array, batch: int, *, difficulty=None, max_difficulty=None,
             part: str = "train") -> Batch:
    """Samples ``batch`` questions from one part of the question space.

    Args:
      rng: PRNG key.
      batch: static batch size B.
      difficulty: optional int or int32[B]: sample exactly these levels.
      max_difficulty: optional (possibly traced) int: levels uniform in [0, max_difficulty]
        (the curriculum's knob). Default: uniform over all levels.
      part: "train" (default: never an evaluation question), "eval" (the evaluation part, what
        the eval sets hold) or "any" (D itself, either part).
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
    questions, answers = jax.vmap(lambda k, d: self.sample_one_in_part(k, d, part))(keys, difficulty)
    chex.assert_shape(questions, (batch, self.question_len))
    chex.assert_shape(answers, (batch, self.answer_len))
    return Batch(questions=questions, answers=answers, difficulty=difficulty)

  def check_parts(self, draws: int = 512, seed: int = 0) -> None:
    """Raises ValueError if some level's ``draws`` questions of D (host-side check, seconds) hold
    no training question or no evaluation question: options too small to split the space."""
    @jax.jit
    def draw(level):  # one program for every level (op by op: dozens of small compiles)
      batch = self.sample(jax.random.fold_in(jax.random.key(seed), level), draws,
                          difficulty=level, part="any")
      return batch.questions, is_eval_question(batch.questions)

    for level in range(self.max_difficulty + 1):
      questions, evaluation = (np.asarray(x) for x in draw(jnp.int32(level)))
      distinct = len(np.unique(questions, axis=0))
      for part, found in (("evaluation", evaluation.any()), ("training", (~evaluation).any())):
        if not found:
          raise ValueError(
              f"{self.name} {self.options()}: level {level} has no {part} question among {draws} "
              f"draws ({distinct} distinct); its question space is too small to hold out "
              f"evaluation questions by construction. Use larger task options.")

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

  def complete_support(self, question: jax.Array, claim: jax.Array, subanswers: jax.Array,
                       valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The support with the rows its claim determines filled in from the claim (issue 28).

    Where the recombination can be inverted for one row (permutation: the last row is the claim;
    union find: the one row is; sums: the last row is the claim minus the others), that row is
    set so that ``recombine`` gives ``claim``, and the support's other rows are the side's real
    choice: H's check then never fails on a row the claim fixes, and a dispute can only be about
    a row the side chose. The default completes nothing.

    Args:
      question: int32[Lq]; claim: int32[La]; subanswers: int32[S, La]; valid: bool[S] (the
        subquestions H poses from these rows).
    Returns:
      (subanswers int32[S, La], fixed bool[S]: the rows set from the claim). The caller keeps the
      original support wherever the completed one does not recombine to the claim (a value out of
      the task's range).
    """
    del question, claim, valid
    return subanswers, jnp.zeros((self.num_subquestions,), bool)

  def _with_row(self, subanswers: jax.Array, valid: jax.Array, row: int,
                value: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``complete_support``'s usual answer: row ``row`` of ``subanswers`` int32[S, La] set to
    ``value`` int32[La] where that row is valid; (subanswers, fixed bool[S])."""
    fixed = (jnp.arange(self.num_subquestions) == row) & valid
    return jnp.where(fixed[:, None], value[None, :], subanswers), fixed

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
