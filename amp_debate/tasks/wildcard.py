"""Wildcard search: given a table f: {0,1}^m -> {+1, -1} and a pattern over {0, 1, *}, what is the
sum of f over all bit strings that match the pattern?

Question (Lq = 2^m + m): ``[f(0), ..., f(2^m - 1), p_0, ..., p_{m-1}]``. The table entries are
number tokens ``1`` / ``-1``; each pattern token is a number token ``0`` / ``1`` or the symbol
``*``. A bit string ``b_0 .. b_{m-1}`` has table index ``sum_j b_j 2^(m-1-j)`` (b_0 most
significant).
Answer (La = 1): ``[number(sum of f over matches)]``, a value in [-2^m, 2^m].

Malformed questions are read robustly (so every function is total on any token array): a table
entry is ``clip(to_number(token), -1, 1)`` (so it may be 0), a pattern token is a wildcard iff it is
``*``, and otherwise the bit ``clip(to_number(token), 0, 1)``.

H: with no ``*`` looks up f(pattern); otherwise asks the pattern with its FIRST ``*`` replaced by 0,
then by 1 (independent subquestions), and adds the two answers.
Difficulty d = number of wildcards (0..max_wildcards), the depth of H's tree.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from amp_debate.tasks.base import Task, check_option
from amp_debate.tasks.tokenizer import Tokenizer

WILDCARD = "*"


@dataclasses.dataclass(frozen=True)
class Wildcard(Task):
  """Options: ``bits`` (m, the pattern length, 1..8), ``max_wildcards`` (most ``*``, 0..m)."""

  name = "wildcard"
  bits: int = 4
  max_wildcards: int = 4

  def __post_init__(self):
    check_option(self.name, "bits", self.bits, 1, 8)
    check_option(self.name, "max_wildcards", self.max_wildcards, 0, self.bits)

  @property
  def tokenizer(self) -> Tokenizer:
    size = 2**self.bits
    return Tokenizer(num_lo=-size, num_hi=size, symbols=(WILDCARD,))

  @property
  def table_size(self) -> int:
    return 2**self.bits

  @property
  def question_len(self) -> int:
    return self.table_size + self.bits

  @property
  def num_subquestions(self) -> int:
    return 2

  @property
  def max_difficulty(self) -> int:
    return self.max_wildcards

  # ---- parsing -------------------------------------------------------------------------------
  def _index_bits(self) -> np.ndarray:
    """int32[2^m, m]: bit j of table index k (bit 0 most significant); a static constant."""
    k = np.arange(self.table_size)[:, None]
    shift = self.bits - 1 - np.arange(self.bits)[None, :]
    return ((k >> shift) & 1).astype(np.int32)

  def _parse(self, question):
    """-> (f int32[2^m] in [-1, 1], wild bool[m], bit int32[m] in {0, 1})."""
    tok = self.tokenizer
    f = jnp.clip(tok.to_number(question[: self.table_size]), -1, 1)
    pattern = question[self.table_size : self.table_size + self.bits]
    wild = pattern == tok.symbol(WILDCARD)
    bit = jnp.clip(tok.to_number(pattern), 0, 1)
    return f, wild, bit

  def _question(self, f, wild, bit):
    """Canonical tokens int32[Lq] for table f int[2^m], wildcard mask bool[m], bits int[m]."""
    tok = self.tokenizer
    pattern = jnp.where(wild, tok.symbol(WILDCARD), tok.number(bit))
    return jnp.concatenate([tok.number(f), pattern]).astype(jnp.int32)

  def _lookup(self, f, bit):
    """f at the bit string ``bit`` int[m] (b_0 most significant)."""
    weights = 2 ** jnp.arange(self.bits - 1, -1, -1)
    return f[jnp.clip(jnp.sum(bit * weights), 0, self.table_size - 1)]

  # ---- D -------------------------------------------------------------------------------------
  def sample_one(self, rng, difficulty):
    # One uniform draw, sliced (one PRNG call compiles much faster than several on CPU).
    m, size = self.bits, self.table_size
    u = jax.random.uniform(rng, (size + 2 * m,))
    d = jnp.clip(jnp.asarray(difficulty, jnp.int32), 0, self.max_wildcards)
    f = jnp.where(u[:size] < 0.5, 1, -1)
    # The d positions ranked lowest by a uniformly random permutation hold the wildcards.
    rank = jnp.argsort(jnp.argsort(u[size : size + m]))
    wild = rank < d
    bit = (u[size + m :] < 0.5).astype(jnp.int32)
    question = self._question(f, wild, bit)
    return question, self.solve(question)

  # ---- H -------------------------------------------------------------------------------------
  def is_leaf(self, question):
    _, wild, _ = self._parse(question)
    return ~jnp.any(wild)

  def leaf_answer(self, question):
    """f(pattern), reading any ``*`` as 0 (a fixed guess away from leaves)."""
    f, wild, bit = self._parse(question)
    return self.tokenizer.number(self._lookup(f, jnp.where(wild, 0, bit)))[None]

  def subquestion(self, question, subanswers, i):
    """The pattern with its first ``*`` set to bit i (i = 0, 1); valid iff there is a ``*``."""
    del subanswers  # the two halves are independent
    f, wild, bit = self._parse(question)
    first = jnp.argmax(wild)  # index of the first wildcard (0 when there is none)
    at_first = (jnp.arange(self.bits) == first) & wild
    value = jnp.clip(jnp.asarray(i, jnp.int32), 0, 1)
    sub = self._question(f, wild & ~at_first, jnp.where(at_first, value, bit))
    return sub, jnp.any(wild) & (jnp.asarray(i) >= 0) & (jnp.asarray(i) < 2)

  def recombine(self, question, subanswers, valid):
    """a0 + a1 (subanswer tokens decoded with ``to_number``; invalid rows count as 0)."""
    del question
    values = self.tokenizer.to_number(subanswers[:2, 0])
    return self.tokenizer.number(jnp.sum(jnp.where(valid[:2], values, 0)))[None]

  def complete_support(self, question, claim, subanswers, valid):
    """a0 + a1 = claim: the second row is the claim minus the first (out of the number range: the
    caller keeps the side's own row)."""
    del question
    tok = self.tokenizer
    rest = tok.to_number(claim[0]) - tok.to_number(subanswers[0, 0])
    return self._with_row(subanswers, valid, 1, tok.number(rest)[None])

  # ---- ground truth --------------------------------------------------------------------------
  def solve(self, question):
    f, wild, bit = self._parse(question)
    index_bits = jnp.asarray(self._index_bits())  # [2^m, m]
    match = jnp.all(wild[None, :] | (index_bits == bit[None, :]), axis=1)
    return self.tokenizer.number(jnp.sum(jnp.where(match, f, 0)))[None]

  # ---- text ----------------------------------------------------------------------------------
  def format_question(self, question) -> str:
    q = np.asarray(question).reshape(-1)
    self.tokenizer.decode(q)  # raises ValueError on ids outside the vocabulary
    vocab = self.tokenizer.vocab
    names = {"1": "+", "-1": "-"}
    table = [names.get(vocab[int(t)], vocab[int(t)]) for t in q[: self.table_size]]
    pattern = [vocab[int(t)] for t in q[self.table_size : self.question_len]]
    joiner = "" if all(p in ("0", "1", WILDCARD) for p in pattern) else " "
    return f"f = [{' '.join(table)}]; pattern {joiner.join(pattern)}: sum of f over matches?"
