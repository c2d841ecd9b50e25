"""Sequential assignments: definitions v_i := c or v_i := v_j + v_k (mod P); what is value(v_x)?

Question (Lq = 3N + 1): N entries of 3 tokens, entry i defining v_i, then the queried variable:
  ``[const, c, <pad>]``   v_i := c            (c a number token in [0, P))
  ``[add, v_j, v_k]``     v_i := v_j + v_k    (mod P; v_j, v_k variable tokens)
  ``... , v_x]``          value(v_x)?
Answer (La = 1): ``[value(v_x)]``, a number token.

Depth: a constant has depth 0, ``v_j + v_k`` has depth 1 + max(depth(v_j), depth(v_k)). Difficulty d
is the depth of the queried variable, the depth of H's tree.
H: at a constant reads it off; otherwise asks value(v_j), then value(v_k), and adds them mod P.

Parsing is total, so any token array is a question: an entry whose first token is not ``const`` is
an ``add``; operand and value tokens are clipped into range (``Tokenizer.to_variable`` and
``to_number``).
Amp(H, oracle) == solve on every question whose definitions are acyclic (every generated question
and every subquestion of one); on cyclic malformed input ``solve`` still terminates (static loop),
but no answer can be consistent with H there (v := v + 1 has no value mod P).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from amp_debate.tasks.base import Task, check_option
from amp_debate.tasks.tokenizer import PAD, Tokenizer


@dataclasses.dataclass(frozen=True)
class Assignments(Task):
  """Options: ``num_vars`` N (2..32), ``modulus`` P (2..100), ``max_depth`` (1..N-1)."""

  name = "assignments"
  num_vars: int = 8
  modulus: int = 11
  max_depth: int = 4

  def __post_init__(self):
    check_option(self.name, "num_vars", self.num_vars, 2, 32)
    check_option(self.name, "modulus", self.modulus, 2, 100)
    check_option(self.name, "max_depth", self.max_depth, 1, self.num_vars - 1)

  @property
  def tokenizer(self) -> Tokenizer:
    return Tokenizer(num_lo=0, num_hi=self.modulus - 1, num_vars=self.num_vars,
                     symbols=("const", "add"))

  @property
  def question_len(self) -> int:
    return 3 * self.num_vars + 1

  @property
  def num_subquestions(self) -> int:
    return 2

  @property
  def max_difficulty(self) -> int:
    return self.max_depth

  # ---- parsing -------------------------------------------------------------------------------
  def _parse(self, question):
    """-> (is_const bool[N], const int32[N] in [0, P), lhs, rhs int32[N], query int32[])."""
    tok = self.tokenizer
    n = self.num_vars
    entries = question[: 3 * n].reshape(n, 3)
    is_const = entries[:, 0] == tok.symbol("const")
    const = tok.to_number(entries[:, 1])
    lhs = tok.to_variable(entries[:, 1])
    rhs = tok.to_variable(entries[:, 2])
    query = tok.to_variable(question[3 * n])
    return is_const, const, lhs, rhs, query

  def _entries(self, is_const, const, lhs, rhs):
    """Token rows int32[N, 3] for the definitions (layout in the module docstring)."""
    tok = self.tokenizer
    const_rows = jnp.stack([jnp.full_like(const, tok.symbol("const")), tok.number(const),
                            jnp.full_like(const, PAD)], axis=-1)
    add_rows = jnp.stack([jnp.full_like(lhs, tok.symbol("add")), tok.variable(lhs),
                          tok.variable(rhs)], axis=-1)
    return jnp.where(is_const[:, None], const_rows, add_rows).astype(jnp.int32)

  def _with_query(self, question, var):
    return question.at[3 * self.num_vars].set(self.tokenizer.variable(var))

  # ---- D -------------------------------------------------------------------------------------
  def sample_one(self, rng, difficulty):
    """A question whose queried variable has depth exactly ``difficulty`` (clipped to [0, max]).

    The table does not depend on the difficulty: depths ``0, 1, ..., max_depth`` each occur at
    least once, the other ``N - max_depth - 1`` are uniform in ``[0, max_depth]``, and generation
    order (positions 0..N-1) sorts them by depth. A depth-0 position is a random constant; a
    position of depth e > 0 adds one earlier position of depth e - 1 and one earlier position of
    depth <= e - 1 (in random order), so its depth is exactly e. The query is a uniformly chosen
    position of depth d; variables are then renamed by a random permutation.

    So every level's questions come from one distribution of tables, and H's subquestions (the
    same table, an operand queried) are questions of D one level down: M is trained where
    Amp(H, M) asks it. (Version 1.0.0 built a level-d table from depths <= d only, so a level-0
    table held nothing but constants; a model could answer level 0 without reading the query's
    definition and then failed on the subquestions of level 1, whose tables hold sums.)
    Sorting by depth lets every definition draw on all shallower ones, so the query depends on
    several constants (without it the query at d = 1 would always be 2c mod P).
    """
    n, p_mod, top = self.num_vars, self.modulus, self.max_depth
    dep_rng, const_rng, op1_rng, op2_rng, swap_rng, query_rng, perm_rng = jax.random.split(rng, 7)
    d = jnp.clip(jnp.asarray(difficulty, jnp.int32), 0, top)
    pos = jnp.arange(n, dtype=jnp.int32)
    dep = jnp.sort(jnp.where(pos <= top, pos, jax.random.randint(dep_rng, (n,), 0, top + 1)))
    const = jax.random.randint(const_rng, (n,), 0, p_mod)

    earlier = pos[None, :] < pos[:, None]  # [p, q]: q < p

    def pick(key, mask):
      # One q per row p among mask[p]; rows with an empty mask (constants) pick anything.
      mask = mask | ~mask.any(axis=-1, keepdims=True)
      return jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf), axis=-1).astype(jnp.int32)

    op1 = pick(op1_rng, earlier & (dep[None, :] == dep[:, None] - 1))
    op2 = pick(op2_rng, earlier & (dep[None, :] <= dep[:, None] - 1))
    swap = jax.random.bernoulli(swap_rng, 0.5, (n,))
    lhs, rhs = jnp.where(swap, op2, op1), jnp.where(swap, op1, op2)
    query = jax.random.categorical(query_rng, jnp.where(dep == d, 0.0, -jnp.inf)).astype(jnp.int32)

    perm = jax.random.permutation(perm_rng, n).astype(jnp.int32)  # name of each position
    rows = self._entries(dep == 0, const, perm[lhs], perm[rhs])
    entries = jnp.zeros((n, 3), jnp.int32).at[perm].set(rows)
    question = jnp.concatenate([entries.reshape(-1), self.tokenizer.variable(perm[query])[None]])
    return question, self.solve(question)

  # ---- H -------------------------------------------------------------------------------------
  def is_leaf(self, question):
    is_const, _, _, _, query = self._parse(question)
    return is_const[query]

  def leaf_answer(self, question):
    is_const, const, _, _, query = self._parse(question)
    return self.tokenizer.number(jnp.where(is_const[query], const[query], 0))[None]

  def subquestion(self, question, subanswers, i):
    """i = 0: value of the first operand; i = 1: value of the second (same table, new query)."""
    del subanswers
    is_const, _, lhs, rhs, query = self._parse(question)
    target = jnp.where(i == 0, lhs[query], rhs[query])
    return self._with_query(question, target), ~is_const[query] & (i >= 0) & (i < 2)

  def recombine(self, question, subanswers, valid):
    """(a0 + a1) mod P; answers are decoded with ``to_number`` (non-numbers are clipped)."""
    del question, valid
    values = self.tokenizer.to_number(subanswers[:, 0])
    return self.tokenizer.number((values[0] + values[1]) % self.modulus)[None]

  def complete_support(self, question, claim, subanswers, valid):
    """(a0 + a1) mod P = claim: the second row is (claim − a0) mod P."""
    del question
    tok = self.tokenizer
    rest = (tok.to_number(claim[0]) - tok.to_number(subanswers[0, 0])) % self.modulus
    return self._with_row(subanswers, valid, 1, tok.number(rest)[None])

  # ---- ground truth --------------------------------------------------------------------------
  def solve(self, question):
    is_const, const, lhs, rhs, query = self._parse(question)

    def step(_, values):
      return jnp.where(is_const, const, (values[lhs] + values[rhs]) % self.modulus)

    values = jax.lax.fori_loop(0, self.num_vars, step, jnp.zeros(self.num_vars, jnp.int32))
    return self.tokenizer.number(values[query])[None]

  # ---- text ----------------------------------------------------------------------------------
  def format_question(self, question) -> str:
    """E.g. ``v0 := 7; v1 := v0 + v3; ... value(v5)?``; malformed entries show their raw tokens."""
    tok = self.tokenizer
    q = np.asarray(question).reshape(-1)
    n = self.num_vars
    word = lambda t: tok.decode(q[t : t + 1])
    const_id, add_id = tok.symbol("const"), tok.symbol("add")
    is_num = lambda t: tok.num_offset <= q[t] < tok.var_offset
    is_var = lambda t: tok.var_offset <= q[t] < tok.symbol_offset
    parts = []
    for i in range(n):
      a = 3 * i
      if q[a] == const_id and is_num(a + 1) and q[a + 2] == PAD:
        parts.append(f"v{i} := {word(a + 1)}")
      elif q[a] == add_id and is_var(a + 1) and is_var(a + 2):
        parts.append(f"v{i} := {word(a + 1)} + {word(a + 2)}")
      else:
        parts.append(f"v{i} := [{tok.decode(q[a : a + 3])}]")
    return "; ".join(parts) + f"; value({word(3 * n)})?"
