"""Task-specific tests for sequential assignments (hand-built questions, generator, H, options)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import task_helpers

from amp_debate.procedure.amplify import amplify, human_tree_fn, oracle_fn
from amp_debate.tasks.assignments import Assignments
from amp_debate.tasks.tokenizer import PAD

BATCH = 1000


_sampler = task_helpers.sampler
_amplify = task_helpers.amplify_oracle
_tree = task_helpers.tree
_encode = task_helpers.encode
_value = task_helpers.value


def _levels(task):
  return task_helpers.levels(task, BATCH)


def _reference(task, question):
  """Host-side parse of a well-formed acyclic question -> ([(value, depth)] per var, query)."""
  tok, n = task.tokenizer, task.num_vars
  q = np.asarray(question)
  defs = []
  for i in range(n):
    kind, a, b = q[3 * i : 3 * i + 3]
    if kind == tok.symbol("const"):
      assert tok.num_offset <= a < tok.var_offset and b == PAD
      defs.append(("const", int(a - tok.num_offset)))
    else:
      assert kind == tok.symbol("add")
      assert tok.var_offset <= a < tok.symbol_offset and tok.var_offset <= b < tok.symbol_offset
      defs.append(("add", int(a - tok.var_offset), int(b - tok.var_offset)))

  @functools.lru_cache(None)
  def ev(i, seen=()):
    assert i not in seen, "cyclic definitions"
    d = defs[i]
    if d[0] == "const":
      return d[1], 0
    (va, da), (vb, db) = ev(d[1], seen + (i,)), ev(d[2], seen + (i,))
    return (va + vb) % task.modulus, 1 + max(da, db)

  query = int(q[3 * n] - tok.var_offset)
  assert 0 <= query < n
  return [ev(i) for i in range(n)], query


# ---- hand-built questions --------------------------------------------------------------------
def test_hand_built_question():
  task = Assignments(num_vars=4, modulus=10, max_depth=3)
  # v0 := 3; v1 := v0 + v0; v2 := v1 + v3; v3 := 5; value(v2)? = 6 + 5 mod 10 = 1
  q = _encode(task, "const 3 <pad> add v0 v0 add v1 v3 const 5 <pad> v2")
  assert q.shape == (task.question_len,) == (13,)
  assert task.format_question(q) == "v0 := 3; v1 := v0 + v0; v2 := v1 + v3; v3 := 5; value(v2)?"
  assert _value(task, task.solve(q)) == 1
  assert not task.is_leaf(q)
  assert _value(task, task.leaf_answer(q)) == 0  # the fixed guess at a non-leaf
  sub = jnp.full((2, 1), PAD, jnp.int32)
  q0, valid0 = task.subquestion(q, sub, 0)
  q1, valid1 = task.subquestion(q, sub, 1)
  assert bool(valid0) and bool(valid1)
  assert task.format_question(q0).endswith("value(v1)?")
  assert task.format_question(q1).endswith("value(v3)?")
  np.testing.assert_array_equal(q0[:-1], q[:-1])
  np.testing.assert_array_equal(q1[:-1], q[:-1])
  assert _value(task, task.solve(q0)) == 6 and _value(task, task.solve(q1)) == 5
  subanswers = task.tokenizer.number(jnp.array([[6], [5]]))
  assert _value(task, task.recombine(q, subanswers, jnp.array([True, True]))) == 1
  # Traced i works too.
  q1_traced, _ = jax.jit(task.subquestion)(q, sub, jnp.int32(1))
  np.testing.assert_array_equal(q1_traced, q1)

  leaf = _encode(task, "const 3 <pad> add v0 v0 add v1 v3 const 5 <pad> v3")
  assert task.is_leaf(leaf)
  assert _value(task, task.leaf_answer(leaf)) == 5 == _value(task, task.solve(leaf))
  assert not task.subquestion(leaf, sub, 0)[1] and not task.subquestion(leaf, sub, 1)[1]


def test_deep_chain_and_cycle_terminate():
  task = Assignments(num_vars=4, modulus=7, max_depth=3)
  # v3 := 1, v2 := v3 + v3 = 2, v1 := v2 + v3 = 3, v0 := v1 + v2 = 5 (depth 3).
  q = _encode(task, "add v1 v2 add v2 v3 add v3 v3 const 1 <pad> v0")
  assert _value(task, task.solve(q)) == 5
  assert _value(task, jax.jit(human_tree_fn(task, 3))(q[None], jax.random.PRNGKey(0))[0]) == 5
  # Cyclic malformed definitions: solve still terminates with some number token.
  cyc = _encode(task, "add v1 v1 add v0 v3 add v2 v2 const 1 <pad> v0")
  assert task.tokenizer.is_number(jax.jit(task.solve)(cyc)).all()


# ---- generator and H over every difficulty ---------------------------------------------------
@pytest.fixture(scope="module", params=[{}, {"num_vars": 12, "modulus": 7, "max_depth": 8}],
                ids=["default", "n12_d8"])
def sampled(request):
  task = Assignments(**request.param)
  return task, _sampler(task)(jax.random.PRNGKey(1), _levels(task))


def test_generator_depth_and_wellformed(sampled):
  task, batch = sampled
  assert batch.questions.shape == (batch.questions.shape[0], 3 * task.num_vars + 1)
  assert batch.questions.dtype == jnp.int32 and batch.answers.shape[1:] == (1,)
  q, a = np.asarray(batch.questions), np.asarray(batch.answers)
  levels = np.asarray(batch.difficulty)
  rows = np.random.default_rng(0).choice(len(q), 300, replace=False)
  for r in rows:
    values, query = _reference(task, q[r])
    assert values[query][1] == levels[r]  # the query has depth exactly d
    # Every level's table holds every depth (so H's subquestions are questions of D).
    assert max(depth for _, depth in values) == task.max_depth
    assert values[query][0] == _value(task, a[r])
    task.tokenizer.decode(q[r])
  for d in range(task.max_difficulty + 1):  # the renaming spreads queries over all variables
    queries = q[levels == d, -1]
    assert len(np.unique(queries)) == task.num_vars
  # All constants occur, and at every difficulty every answer value occurs (the query draws on
  # several constants, not a multiple of a single one).
  consts = q[:, 1:-1:3][q[:, 0:-1:3] == task.tokenizer.symbol("const")]
  assert len(np.unique(consts)) == task.modulus
  for d in range(task.max_difficulty + 1):
    assert len(np.unique(a[levels == d])) == task.modulus, d


def test_solve_amplify_leaves(sampled):
  task, batch = sampled
  q, a, levels = batch.questions, batch.answers, batch.difficulty
  np.testing.assert_array_equal(jax.jit(task.batch_solve)(q), a)
  out = _amplify(task)(q, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(out.answers, a)  # Amp(H, oracle) is exact
  leaf = task.batch_is_leaf(q)
  np.testing.assert_array_equal(leaf, levels == 0)
  np.testing.assert_array_equal(out.sub_valid, np.broadcast_to(~leaf[:, None], out.sub_valid.shape))
  np.testing.assert_array_equal(task.batch_leaf_answer(q)[leaf], a[leaf])
  # Subquestions are one level easier: operand depths are d - 1 and <= d - 1.
  subq = np.asarray(out.subquestions)
  for r in np.flatnonzero(~np.asarray(leaf))[::37]:
    depths = [_reference(task, subq[r, i])[0][int(subq[r, i, -1] - task.tokenizer.var_offset)][1]
              for i in range(2)]
    assert max(depths) == int(levels[r]) - 1, (r, depths)


def test_human_tree_depth(sampled):
  """H's tree d levels deep is exact at difficulty <= d and not exact on all of difficulty d + 1."""
  task, batch = sampled
  depths = range(task.max_difficulty + 1) if task.max_difficulty <= 4 else (0, 3, 7, 8)
  task_helpers.check_tree_depth(task, batch, depths)


# ---- robustness --------------------------------------------------------------------------------
def test_garbage_questions():
  """Any int32 array (in-vocabulary or not): no crash under jit/vmap, number-token answers."""
  task = Assignments()
  k1, k2 = jax.random.split(jax.random.PRNGKey(4))
  g = jnp.concatenate([jax.random.randint(k1, (500, task.question_len), 0, task.vocab_size),
                       jax.random.randint(k2, (500, task.question_len), -1000, 1000)])
  sub = jnp.full((1000, 2, 1), -7, jnp.int32)

  @jax.jit
  def run(g):
    subq, _ = task.batch_subquestion(g, sub, 1)
    recombined = task.batch_recombine(g, sub, jnp.ones((1000, 2), bool))
    return task.batch_solve(g), amplify(task, oracle_fn(task), g, k1).amplified, subq, recombined

  answers, amplified, subq, recombined = run(g)
  for tokens in (answers, amplified, recombined):
    assert task.tokenizer.is_number(tokens).all()
  assert subq.shape == g.shape
  for row in np.asarray(g[:50]):
    assert task.format_question(row).endswith("?")


def test_difficulty_is_clipped():
  task = Assignments()
  levels = jnp.full_like(_levels(task), 99)  # same shape as the fixture: no new compile
  batch = _sampler(task)(jax.random.PRNGKey(5), levels)
  for row in np.asarray(batch.questions[::250]):
    values, query = _reference(task, row)
    assert values[query][1] == task.max_depth


# ---- options -----------------------------------------------------------------------------------
@pytest.mark.parametrize("options, name", [
    ({"num_vars": 1}, "num_vars"), ({"num_vars": 33}, "num_vars"), ({"num_vars": 8.0}, "num_vars"),
    ({"modulus": 1}, "modulus"), ({"modulus": 101}, "modulus"),
    ({"max_depth": 0}, "max_depth"), ({"max_depth": 8}, "max_depth"),
    ({"num_vars": 4, "max_depth": 4}, "max_depth"), ({"max_depth": True}, "max_depth"),
])
def test_bad_options(options, name):
  with pytest.raises(ValueError, match=name):
    Assignments(**options)


def test_layout_and_tokenizer():
  task = Assignments(num_vars=5, modulus=13, max_depth=4)
  assert task.name == "assignments"
  assert task.question_len == 16 and task.answer_len == 1 and task.num_subquestions == 2
  assert task.max_difficulty == 4
  tok = task.tokenizer
  assert (tok.num_lo, tok.num_hi, tok.num_vars, tok.symbols) == (0, 12, 5, ("const", "add"))
  assert task.options() == {"num_vars": 5, "modulus": 13, "max_depth": 4}
