"""Task-specific tests for union find (hand-built questions, generator, H, options)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate.procedure.amplify import amplify, human_tree_fn, oracle_fn
from amp_debate.tasks.tokenizer import PAD
from amp_debate.tasks.union_find import UnionFind

BATCH = 1000


def _encode(task, text):
  return jnp.asarray(task.tokenizer.encode(text))


def _value(task, answer):
  return int(task.tokenizer.to_number(answer[0]))


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
  for depth, expect in [(0, 0), (1, 0), (2, 0), (3, 4), (4, 4)]:
    got = human_tree_fn(task, depth)(q[None], jax.random.PRNGKey(0))[0]
    assert _value(task, got) == expect, depth

  leaf = _encode(task, "= v3 := 4 = v0 = v1 := 7 v4")
  assert task.is_leaf(leaf)
  assert _value(task, task.leaf_answer(leaf)) == 7 == _value(task, task.solve(leaf))
  assert not task.subquestion(leaf, sub, 0)[1]


def test_cycles_have_value_zero_consistently():
  task = UnionFind(num_vars=4, num_values=10, max_depth=3)
  # v0 = v1 = v2 = v0 is a cycle; v3 = v3 a self loop; no roots reachable.
  for query in ("v0", "v3"):
    q = _encode(task, f"= v1 = v2 = v0 = v3 {query}")
    assert _value(task, jax.jit(task.solve)(q)) == 0
    out = amplify(task, oracle_fn(task), q[None], jax.random.PRNGKey(0))
    np.testing.assert_array_equal(out.answers[0], task.solve(q))


# ---- generator and H over every difficulty ---------------------------------------------------
@pytest.fixture(scope="module", params=[{}, {"num_vars": 12, "num_values": 7, "max_depth": 8}],
                ids=["default", "n12_d8"])
def sampled(request):
  task = UnionFind(**request.param)
  levels = jnp.repeat(jnp.arange(task.max_difficulty + 1), BATCH)
  batch = jax.jit(lambda key: task.sample(key, levels.shape[0], difficulty=levels))(
      jax.random.PRNGKey(1))
  return task, batch


def test_generator_depth_and_wellformed(sampled):
  task, batch = sampled
  assert batch.questions.shape == (batch.questions.shape[0], 2 * task.num_vars + 1)
  assert batch.questions.dtype == jnp.int32 and batch.answers.shape[1:] == (1,)
  q, a, levels = np.asarray(batch.questions), np.asarray(batch.answers), np.asarray(batch.difficulty)
  for r in np.random.default_rng(0).choice(len(q), 300, replace=False):
    value, steps = _reference(task, q[r])
    assert steps == levels[r]  # the query is exactly d '=' steps from its root
    assert value == _value(task, a[r])
    task.tokenizer.decode(q[r])
  for d in range(task.max_difficulty + 1):  # the renaming spreads queries over all variables
    assert len(np.unique(q[levels == d, -1])) == task.num_vars
  roots = q[:, 0:-1:2] == task.tokenizer.symbol(":=")
  assert len(np.unique(q[:, 1:-1:2][roots])) == task.num_values  # every value occurs
  # Off-chain positions are roots with probability 1/3 (d = 0: N - 1 of them, plus the chain root).
  frac = (roots[levels == 0].sum(-1) - 1).mean() / (task.num_vars - 1)
  assert abs(frac - 1 / 3) < 0.03


def test_solve_amplify_leaves(sampled):
  task, batch = sampled
  q, a, levels = batch.questions, batch.answers, batch.difficulty
  np.testing.assert_array_equal(jax.jit(task.batch_solve)(q), a)
  out = jax.jit(lambda q, k: amplify(task, oracle_fn(task), q, k))(q, jax.random.PRNGKey(2))
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
  q, a, levels = batch.questions, batch.answers, np.asarray(batch.difficulty)
  for depth in range(task.max_difficulty + 1):
    ok = np.asarray((jax.jit(human_tree_fn(task, depth))(q, jax.random.PRNGKey(3)) == a).all(-1))
    assert ok[levels <= depth].all(), depth
    if depth < task.max_difficulty:
      assert not ok[levels == depth + 1].all(), depth
      assert ok[levels == depth + 1].mean() < 0.5, depth


# ---- robustness --------------------------------------------------------------------------------
def test_garbage_questions():
  """Any token array: no crash, number answers, and Amp(H, oracle) == solve even on cycles."""
  task = UnionFind()
  key = jax.random.PRNGKey(4)
  for lo, hi in [(0, task.vocab_size), (-1000, 1000)]:
    g = jax.random.randint(key, (1000, task.question_len), lo, hi)
    answers = jax.jit(task.batch_solve)(g)
    assert task.tokenizer.is_number(answers).all()
    out = amplify(task, oracle_fn(task), g, key)
    np.testing.assert_array_equal(out.amplified, answers)
    sub = jnp.full((1000, 1, 1), -7, jnp.int32)
    assert task.tokenizer.is_number(task.batch_recombine(g, sub, jnp.ones((1000, 1), bool))).all()
  g = jax.random.randint(key, (50, task.question_len), 0, task.vocab_size)
  for row in np.asarray(g):
    assert task.format_question(row).endswith("?")


def test_difficulty_is_clipped():
  task = UnionFind()
  batch = task.sample(jax.random.PRNGKey(5), 8, difficulty=99)
  for row in np.asarray(batch.questions):
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
  assert tok.num_lo == 0 and tok.num_hi == 12 and tok.num_vars == 5 and tok.symbols == ("=", ":=")
  assert task.options() == {"num_vars": 5, "num_values": 13, "max_depth": 4}
