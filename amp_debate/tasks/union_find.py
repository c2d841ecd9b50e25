"""Union find: given equality facts v_i = v_j and root values v_i := c, what is value(v_x)?

Question (Lq = 2N + 1): N facts of 2 tokens, fact i about v_i, then the queried variable:
  ``[=, v_j]``     v_i equals v_j (its parent)
  ``[:=, c]``      v_i is a root with value c (a number token in [0, P))
  ``... , v_x]``   value(v_x)?
Answer (La = 1): ``[c]``, the value of the root reached from v_x by following ``=`` facts.

Difficulty d is the number of ``=`` steps from v_x to its root, the depth of H's tree.
H: at a root reads its value off; otherwise asks value(parent(v_x)) and returns that answer.

Parsing is total, so any token array is a question: a fact whose first token is not ``:=`` is an
``=`` fact; parent and value tokens are clipped into range (``Tokenizer.to_variable`` and
``to_number``).
A variable whose ``=`` chain never reaches a root (a cycle in malformed input) has value 0; with
that convention Amp(H, oracle) == solve on EVERY token array, not only on generated questions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from amp_debate.tasks.base import Task, check_option
from amp_debate.tasks.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class UnionFind(Task):
  """Options: ``num_vars`` N (2..32), ``num_values`` P (2..100), ``max_depth`` (1..N-1)."""

  name = "union_find"
  num_vars: int = 8
  num_values: int = 10
  max_depth: int = 4

  def __post_init__(self):
    check_option(self.name, "num_vars", self.num_vars, 2, 32)
    check_option(self.name, "num_values", self.num_values, 2, 100)
    check_option(self.name, "max_depth", self.max_depth, 1, self.num_vars - 1)

  @property
  def tokenizer(self) -> Tokenizer:
    return Tokenizer(num_lo=0, num_hi=self.num_values - 1, num_vars=self.num_vars,
                     symbols=("=", ":="))

  @property
  def question_len(self) -> int:
    return 2 * self.num_vars + 1

  @property
  def num_subquestions(self) -> int:
    return 1

  @property
  def max_difficulty(self) -> int:
    return self.max_depth

  # ---- parsing -------------------------------------------------------------------------------
  def _parse(self, question):
    """-> (is_root bool[N], value int32[N] in [0, P), parent int32[N], query int32[])."""
    tok = self.tokenizer
    n = self.num_vars
    facts = question[: 2 * n].reshape(n, 2)
    is_root = facts[:, 0] == tok.symbol(":=")
    value = tok.to_number(facts[:, 1])
    parent = tok.to_variable(facts[:, 1])
    query = tok.to_variable(question[2 * n])
    return is_root, value, parent, query

  def _facts(self, is_root, value, parent):
    """Token rows int32[N, 2] for the facts (layout in the module docstring)."""
    tok = self.tokenizer
    root_rows = jnp.stack([jnp.full_like(value, tok.symbol(":=")), tok.number(value)], axis=-1)
    eq_rows = jnp.stack([jnp.full_like(parent, tok.symbol("=")), tok.variable(parent)], axis=-1)
    return jnp.where(is_root[:, None], root_rows, eq_rows).astype(jnp.int32)

  # ---- D -------------------------------------------------------------------------------------
  def sample_one(self, rng, difficulty):
    """A question whose queried variable is ``difficulty`` (clipped) ``=`` steps from its root.

    Built in generation order (positions 0..N-1): position 0 is a root, positions 1..d each equal
    the previous one (a chain); later positions are roots with probability 1/3, else equal a
    uniformly chosen earlier position. The query is position d; variables are then renamed by a
    random permutation.
    """
    n = self.num_vars
    root_rng, value_rng, parent_rng, perm_rng = jax.random.split(rng, 4)
    d = jnp.clip(jnp.asarray(difficulty, jnp.int32), 0, self.max_depth)
    pos = jnp.arange(n, dtype=jnp.int32)
    value = jax.random.randint(value_rng, (n,), 0, self.num_values)
    earlier = pos[None, :] < pos[:, None]  # [p, q]: q < p
    earlier = earlier | ~earlier.any(axis=-1, keepdims=True)  # position 0: anything (unused)
    random_parent = jax.random.categorical(
        parent_rng, jnp.where(earlier, 0.0, -jnp.inf), axis=-1).astype(jnp.int32)
    parent = jnp.where(pos <= d, pos - 1, random_parent)
    is_root = jnp.where(pos <= d, pos == 0, jax.random.bernoulli(root_rng, 1 / 3, (n,)))

    perm = jax.random.permutation(perm_rng, n).astype(jnp.int32)  # name of each position
    rows = self._facts(is_root, value, perm[jnp.clip(parent, 0, n - 1)])
    facts = jnp.zeros((n, 2), jnp.int32).at[perm].set(rows)
    question = jnp.concatenate([facts.reshape(-1), self.tokenizer.variable(perm[d])[None]])
    return question, self.solve(question)

  # ---- H -------------------------------------------------------------------------------------
  def is_leaf(self, question):
    is_root, _, _, query = self._parse(question)
    return is_root[query]

  def leaf_answer(self, question):
    is_root, value, _, query = self._parse(question)
    return self.tokenizer.number(jnp.where(is_root[query], value[query], 0))[None]

  def subquestion(self, question, subanswers, i):
    """i = 0: value(parent of the query) (same facts, new query)."""
    del subanswers
    is_root, _, parent, query = self._parse(question)
    subq = question.at[2 * self.num_vars].set(self.tokenizer.variable(parent[query]))
    return subq, ~is_root[query] & (i == 0)

  def recombine(self, question, subanswers, valid):
    """The answer to value(parent), re-encoded as a number token (garbage is clipped)."""
    del question, valid
    return self.tokenizer.number(self.tokenizer.to_number(subanswers[0, 0]))[None]

  def complete_support(self, question, claim, subanswers, valid):
    """value(query) = value(parent): the one row is the claim."""
    del question
    return self._with_row(subanswers, valid, 0, claim)

  # ---- ground truth --------------------------------------------------------------------------
  def solve(self, question):
    """Pointer jumping: after k rounds ptr = parent^(2^k) (roots point to themselves)."""
    is_root, value, parent, query = self._parse(question)
    n = self.num_vars
    ptr = jnp.where(is_root, jnp.arange(n, dtype=jnp.int32), parent)
    # Any chain that reaches a root does so within n - 1 steps; 2^rounds >= n - 1.
    rounds = max(1, (n - 1).bit_length())
    ptr = jax.lax.fori_loop(0, rounds, lambda _, p: p[p], ptr)
    top = ptr[query]
    return self.tokenizer.number(jnp.where(is_root[top], value[top], 0))[None]

  # ---- text ----------------------------------------------------------------------------------
  def format_question(self, question) -> str:
    """E.g. ``v0 = v3; v1 := 4; ... value(v2)?``; malformed facts show their raw tokens."""
    tok = self.tokenizer
    q = np.asarray(question).reshape(-1)
    n = self.num_vars
    word = lambda t: tok.decode(q[t : t + 1])
    parts = []
    for i in range(n):
      a = 2 * i
      if q[a] == tok.symbol("=") and tok.var_offset <= q[a + 1] < tok.symbol_offset:
        parts.append(f"v{i} = {word(a + 1)}")
      elif q[a] == tok.symbol(":=") and tok.num_offset <= q[a + 1] < tok.var_offset:
        parts.append(f"v{i} := {word(a + 1)}")
      else:
        parts.append(f"v{i} : [{tok.decode(q[a : a + 2])}]")
    return "; ".join(parts) + f"; value({word(2 * n)})?"
