"""Task-specific tests for union find (hand-built questions, generator, H, options)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import task_helpers

from amp_debate.procedure.amplify import amplify, human_tree_fn, oracle_fn
from amp_debate.tasks.tokenizer import PAD
from amp_debate.tasks.union_find import UnionFind

BATCH = 1000


_sampler = task_helpers.sampler
_amplify = task_helpers.amplify_oracle
_tree = task_helpers.tree
_encode = task_helpers.encode
_value = task_helpers.value


def _levels(task):
  return task_helpers.levels(task, BATCH)


def _reference(task, question):
  """Host-side parse of a well-formed question -> (root value, steps to the root) of the query."""
  tok, n = task.tokenizer, task.num_vars
  q = np.asarray(question)
  x, steps = int(q[2 * n] - tok.var_offset), 0
  assert 0 <= x < n
  while q[2 * x] == tok.symbol("="):
    assert tok.var_offset <= q[2 * x + 1] < tok.symbol_offset
    x, steps = int(q[2 * x + 1] - tok.var_offset), steps + 1
    assert steps < n, "cyclic facts"
  assert q[2 * x] == tok.symbol(":=") and tok.num_offset <= q[2 * x + 1] < tok.var_offset
  return int(q[2 * x + 1] - tok.num_offset), steps


# ---- hand-built questions --------------------------------------------------------------------
def test_hand_built_question():
  task = UnionFind(num_vars=5, num_values=10, max_depth=4)
  # v0 = v3; v1 := 4; v2 = v0; v3 = v1; v4 := 7; value(v2)? -> v2 -> v0 -> v3 -> v1 = 4
  q = _encode(task, "= v3 := 4 = v0 = v1 := 7 v2")
  assert q.shape == (task.question_len,) == (11,)
  assert task.format_question(q) == "v0 = v3; v1 := 4; v2 = v0; v3 = v1; v4 := 7; value(v2)?"
  assert _value(task, task.solve(q)) == 4
  assert not task.is_leaf(q)
  assert _value(task, task.leaf_answer(q)) == 0  # the fixed guess at a non-leaf
  sub = jnp.full((1, 1), PAD, jnp.int32)
  q0, valid = task.subquestion(q, sub, 0)
  assert bool(valid)
  np.testing.assert_array_equal(q0[:-1], q[:-1])
  assert task.format_question(q0).endswith("value(v0)?")
  q0_traced, valid_traced = jax.jit(task.subquestion)(q, sub, jnp.int32(0))
  np.testing.assert_array_equal(q0_traced, q0)
  assert bool(valid_traced)
  answer = task.tokenizer.number(jnp.array([4]))
  assert _value(task, task.recombine(q, answer[None], jnp.array([True]))) == 4
  for depth, expect in [(2, 0), (3, 4)]:  # three '=' steps: depth 2 falls back on the guess 0
    got = jax.jit(human_tree_fn(task, depth))(q[None], jax.random.PRNGKey(0))[0]
    assert _value(task, got) == expect, depth

  leaf = _encode(task, "= v3 := 4 = v0 = v1 := 7 v4")
  assert task.is_leaf(leaf)
  assert _value(task, task.leaf_answer(leaf)) == 7 == _value(task, task.solve(leaf))
  assert not task.subquestion(leaf, sub, 0)[1]


def test_cycles_have_value_zero_consistently():
  task = UnionFind(num_vars=4, num_values=10, max_depth=3)
  # v0 = v1 = v2 = v0 is a cycle; v3 = v3 a self loop; no roots reachable.
  q = jnp.stack([_encode(task, f"= v1 = v2 = v0 = v3 {query}") for query in ("v0", "v3")])
  out = jax.jit(lambda q: amplify(task, oracle_fn(task), q, jax.random.PRNGKey(0)))(q)
  np.testing.assert_array_equal(task.tokenizer.to_number(task.batch_solve(q)), [[0], [0]])
  np.testing.assert_array_equal(out.answers, task.batch_solve(q))
  assert not out.is_leaf.any() and out.sub_valid.all()


# ---- generator and H over every difficulty ---------------------------------------------------
@pytest.fixture(scope="module", params=[{}, {"num_vars": 12, "num_values": 7, "max_depth": 8}],
                ids=["default", "n12_d8"])
def sampled(request):
  task = UnionFind(**request.param)
  return task, _sampler(task)(jax.random.PRNGKey(1), _levels(task))


def test_generator_depth_and_wellformed(sampled):
  task, batch = sampled
  assert batch.questions.shape == (batch.questions.shape[0], 2 * task.num_vars + 1)
  assert batch.questions.dtype == jnp.int32 and batch.answers.shape[1:] == (1,)
  q, a = np.asarray(batch.questions), np.asarray(batch.answers)
  levels = np.asarray(batch.difficulty)
  for r in np.random.default_rng(0).choice(len(q), 300, replace=False):
    value, steps = _reference(task, q[r])
    assert steps == levels[r]  # the query is exactly d '=' steps from its root
    assert value == _value(task, a[r])
    task.tokenizer.decode(q[r])
  for d in range(task.max_difficulty + 1):  # the renaming spreads queries over all variables
    assert len(np.unique(q[levels == d, -1])) == task.num_vars
  for d in range(task.max_difficulty + 1):
    assert len(np.unique(a[levels == d])) == task.num_values, d
  roots = q[:, 0:-1:2] == task.tokenizer.symbol(":=")
  assert len(np.unique(q[:, 1:-1:2][roots])) == task.num_values  # every value occurs
  # Off-chain positions are roots with probability 1/3 (d = 0: N - 1 of them, plus the chain root).
  frac = (roots[levels == 0].sum(-1) - 1).mean() / (task.num_vars - 1)
  assert abs(frac - 1 / 3) < 0.03


def test_solve_amplify_leaves(sampled):
  task, batch = sampled
  q, a, levels = batch.questions, batch.answers, batch.difficulty
  np.testing.assert_array_equal(jax.jit(task.batch_solve)(q), a)
  out = _amplify(task)(q, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(out.answers, a)  # Amp(H, oracle) is exact
  leaf = task.batch_is_leaf(q)
  np.testing.assert_array_equal(leaf, levels == 0)
  np.testing.assert_array_equal(out.sub_valid[:, 0], ~leaf)
  np.testing.assert_array_equal(task.batch_leaf_answer(q)[leaf], a[leaf])
  # The subquestion is exactly one level easier.
  subq = np.asarray(out.subquestions[:, 0])
  for r in np.flatnonzero(~np.asarray(leaf))[::37]:
    assert _reference(task, subq[r])[1] == int(levels[r]) - 1


def test_human_tree_depth(sampled):
  """H's tree d levels deep is exact at difficulty <= d and not exact on all of difficulty d + 1."""
  task, batch = sampled
  depths = range(task.max_difficulty + 1) if task.max_difficulty <= 4 else (0, 3, 7, 8)
  task_helpers.check_tree_depth(task, batch, depths)


# ---- robustness --------------------------------------------------------------------------------
def test_garbage_questions():
  """Any int32 array: no crash, number answers, and Amp(H, oracle) == solve even on cycles."""
  task = UnionFind()
  k1, k2 = jax.random.split(jax.random.PRNGKey(4))
  g = jnp.concatenate([jax.random.randint(k1, (1000, task.question_len), 0, task.vocab_size),
                       jax.random.randint(k2, (1000, task.question_len), -1000, 1000)])
  sub = jnp.full((2000, 1, 1), -7, jnp.int32)

  @jax.jit
  def run(g):
    recombined = task.batch_recombine(g, sub, jnp.ones((2000, 1), bool))
    return task.batch_solve(g), amplify(task, oracle_fn(task), g, k1).amplified, recombined

  answers, amplified, recombined = run(g)
  assert task.tokenizer.is_number(answers).all() and task.tokenizer.is_number(recombined).all()
  np.testing.assert_array_equal(amplified, answers)
  for row in np.asarray(g[:50]):
    assert task.format_question(row).endswith("?")


def test_difficulty_is_clipped():
  task = UnionFind()
  levels = jnp.full_like(_levels(task), 99)  # same shape as the fixture: no new compile
  batch = _sampler(task)(jax.random.PRNGKey(5), levels)
  for row in np.asarray(batch.questions[::250]):
    assert _reference(task, row)[1] == task.max_depth


# ---- options -----------------------------------------------------------------------------------
@pytest.mark.parametrize("options, name", [
    ({"num_vars": 1}, "num_vars"), ({"num_vars": 33}, "num_vars"), ({"num_vars": "8"}, "num_vars"),
    ({"num_values": 1}, "num_values"), ({"num_values": 101}, "num_values"),
    ({"max_depth": 0}, "max_depth"), ({"max_depth": 8}, "max_depth"),
    ({"num_vars": 3, "max_depth": 3}, "max_depth"), ({"max_depth": 2.0}, "max_depth"),
])
def test_bad_options(options, name):
  with pytest.raises(ValueError, match=name):
    UnionFind(**options)


def test_layout_and_tokenizer():
  task = UnionFind(num_vars=5, num_values=13, max_depth=4)
  assert task.name == "union_find"
  assert task.question_len == 11 and task.answer_len == 1 and task.num_subquestions == 1
  assert task.max_difficulty == 4
  tok = task.tokenizer
  assert (tok.num_lo, tok.num_hi, tok.num_vars, tok.symbols) == (0, 12, 5, ("=", ":="))
  assert task.options() == {"num_vars": 5, "num_values": 13, "max_depth": 4}
