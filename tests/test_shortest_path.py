"""Task-specific tests for shortest path with a hop budget (generic tests live elsewhere)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import task_helpers

from amp_debate.procedure.amplify import human_tree_fn
from amp_debate.tasks.shortest_path import ShortestPath

TASK = ShortestPath()  # num_nodes=8, extra_edges=2, max_hops=4
TOK = TASK.tokenizer
INF = TOK.symbol("inf")
# The path v0 - v1 - ... - v7 plus the chord v1-v4 and a duplicate of v6-v7.
GRAPH = "v0 v1 v1 v2 v2 v3 v3 v4 v4 v5 v5 v6 v6 v7 v1 v4 v7 v6"
PAD_ROWS = 512


def question(a, b, h, graph=GRAPH, task=TASK):
  return jnp.asarray(task.tokenizer.encode(f"{graph} v{a} v{b} {h}"))


def token(value):
  return INF if value == "inf" else int(TOK.number(value))


def bounded_bfs(q, task=TASK):
  """Bellman-Ford over hop counts in numpy, from the token strings: ({node: distance within h}, b)."""
  words = task.tokenizer.decode(np.asarray(q)).split()
  k = task.num_edges
  edges = [(int(words[2 * j][1:]), int(words[2 * j + 1][1:])) for j in range(k)]
  a, b, h = int(words[2 * k][1:]), int(words[2 * k + 1][1:]), int(words[2 * k + 2])
  dist = {a: 0}
  for step in range(1, h + 1):
    for u, v in edges:
      for x, y in ((u, v), (v, u)):
        if x in dist and dist[x] == step - 1 and y not in dist:
          dist[y] = step
  return dist, b


def reference(q, task=TASK):
  """The true answer of q from an independent implementation: distance or "inf"."""
  dist, b = bounded_bfs(q, task)
  return dist.get(b, "inf")


def check_sampled(task, batch):
  """Properties of every sampled question: full budget, answer fixed by the level, connected."""
  q, answers, levels = map(np.asarray, (batch.questions, batch.answers, batch.difficulty))
  tok = task.tokenizer
  np.testing.assert_array_equal(np.asarray(tok.to_number(q[:, -1])), task.max_hops)  # root h
  words = np.array([tok.decode(answer) for answer in answers])
  assert (words != "inf").all()
  np.testing.assert_array_equal(words[levels > 0].astype(int), levels[levels > 0] + 1)
  assert set(words[levels == 0]) == {"0", "1"}
  np.testing.assert_array_equal(jax.jit(task.batch_solve)(batch.questions), answers)
  for row, word in zip(q, words):
    dist, _ = bounded_bfs(row, task)
    assert len(dist) == task.num_nodes  # every node is within the budget of a: connected
    assert str(reference(row, task)) == word


def check_tree_depths(task, batch, depths):
  """H's tree of depth D is exact on exactly the questions of level <= D (deterministically)."""
  levels = np.asarray(batch.difficulty)
  for depth in depths:
    got = jax.jit(human_tree_fn(task, depth))(batch.questions, jax.random.PRNGKey(2))
    exact = np.asarray((got == batch.answers).all(1))
    np.testing.assert_array_equal(exact, levels <= depth, err_msg=f"depth {depth}")


@functools.lru_cache(maxsize=None)
def sampled(task=TASK, per_level=128, seed=0):
  levels = np.repeat(np.arange(task.max_difficulty + 1), per_level)
  return jax.jit(lambda k: task.sample(k, len(levels), difficulty=levels))(jax.random.PRNGKey(seed))


def evaluate(task):
  return task_helpers.evaluate(task, PAD_ROWS)


# ---- hand-built questions ------------------------------------------------------------------------
HAND_BUILT = [  # (a, b, h, answer, is_leaf)
    (0, 0, 1, 0, True),
    (0, 0, 0, 0, True),
    (3, 3, 4, 0, True),
    (0, 1, 1, 1, True),
    (4, 1, 3, 1, True),  # the chord
    (7, 6, 2, 1, True),  # duplicate edge
    (0, 1, 0, "inf", True),  # adjacent, but no hop allowed
    (0, 2, 1, "inf", True),
    (0, 2, 2, 2, False),
    (0, 4, 2, 2, False),  # 0-1-4
    (0, 4, 4, 2, False),
    (0, 5, 2, "inf", False),
    (0, 5, 3, 3, False),  # 0-1-4-5
    (0, 7, 4, "inf", False),  # needs 5 hops: 0-1-4-5-6-7
    (3, 0, 2, "inf", False),
    (3, 0, 3, 3, False),
    (7, 4, 3, 3, False),
    (7, 1, 4, 4, False),  # 7-6-5-4-1
]


def test_hand_built_answers():
  q = jnp.stack([question(a, b, h) for a, b, h, _, _ in HAND_BUILT])
  expected = np.array([[token(answer)] for *_, answer, _ in HAND_BUILT])
  assert [reference(row) for row in q] == [answer for *_, answer, _ in HAND_BUILT]
  out = evaluate(TASK)(q)
  np.testing.assert_array_equal(out["solve"], expected)
  np.testing.assert_array_equal(out["amp"], expected)
  leaf = np.array([leaf for *_, leaf in HAND_BUILT])
  np.testing.assert_array_equal(out["is_leaf"], leaf)
  np.testing.assert_array_equal(out["leaf_answer"][leaf], expected[leaf])  # exact at leaves


@jax.jit
def all_subquestions(q):
  """(int32[S, Lq], bool[S]): every subquestion of q (i traced, as inside amplify's scan)."""
  none = jnp.zeros((TASK.num_subquestions, 1), jnp.int32)
  return jax.vmap(lambda i: TASK.subquestion(q, none, i))(jnp.arange(TASK.num_subquestions))


def test_subquestions_ask_each_neighbour():
  subs, valid = all_subquestions(question(1, 5, 3))  # neighbours of v1: v0, v2, v4
  np.testing.assert_array_equal(valid, [True, False, True, False, True, False, False, False])
  for i in (0, 2, 4):
    np.testing.assert_array_equal(subs[i], question(i, 5, 2))
  _, valid = all_subquestions(question(1, 4, 3))  # leaves pose nothing
  assert not bool(valid.any())


def test_recombine_takes_one_plus_min():
  q = question(1, 5, 3)
  valid = jnp.array([True, False, True, False, True, False, False, False])
  run = jax.jit(TASK.recombine)

  def recombine(rows):
    return TOK.decode(np.asarray(run(q, jnp.asarray([[t] for t in rows], jnp.int32), valid)))

  pad, var = 0, int(TOK.variable(3))
  assert recombine([token(4), token(0), INF, token(0), token(1), token(0), 0, 0]) == "2"
  assert recombine([INF, token(0), INF, token(0), INF, token(0), 0, 0]) == "inf"
  # Non-number subanswers count as infinite; invalid rows are ignored.
  assert recombine([pad, token(0), var, token(0), token(2), token(0), 0, 0]) == "3"
  assert recombine([pad, token(0), var, token(0), pad, token(0), 0, 0]) == "inf"
  # A result above the budget h = 3 is inf.
  assert recombine([token(3), token(0), token(4), token(0), INF, token(0), 0, 0]) == "inf"


def test_format_question():
  text = TASK.format_question(question(0, 5, 3))
  assert text == ("edges v0-v1 v1-v2 v2-v3 v3-v4 v4-v5 v5-v6 v6-v7 v1-v4 v7-v6; "
                  "dist(v0, v5) within 3 hops?")
  assert TASK.format_answer(np.array([INF])) == "inf"


# ---- generator --------------------------------------------------------------------------------
def test_generator_properties():
  batch = sampled()
  check_sampled(TASK, batch)
  q, levels = np.asarray(batch.questions), np.asarray(batch.difficulty)
  k = TASK.num_edges
  assert bool(TOK.is_variable(q[:, : 2 * k + 2]).all())
  edges = q[:, : 2 * k].reshape(-1, k, 2)
  assert (edges[..., 0] != edges[..., 1]).all()  # no self-loops
  # Edges are oriented at random (the tree's child-first order is hidden).
  assert 0.3 < (edges[..., 0] < edges[..., 1]).mean() < 0.7
  # Extra edges seldom repeat an edge (they avoid tree edges), so E adds cycles.
  distinct = [len({tuple(sorted(edge)) for edge in row}) for row in edges]
  assert np.mean(distinct) > k - 0.5
  # Level 0 is half a = b, half adjacent; below the top level, some nodes lie beyond b (b is not
  # always a farthest node, and level-0 graphs are not stars around a).
  words = np.array([TOK.decode(answer) for answer in np.asarray(batch.answers)])
  assert 0.3 < (words[levels == 0] == "0").mean() < 0.7
  ecc = np.array([max(bounded_bfs(row)[0].values()) for row in q])
  for d in range(TASK.max_difficulty):
    assert (ecc[levels == d] > d + 1).mean() > 0.3, d
  assert (ecc[levels == TASK.max_difficulty] == TASK.max_hops).all()


def test_round_trip():
  for row in np.asarray(sampled().questions)[::50]:
    np.testing.assert_array_equal(TOK.encode(TOK.decode(row)), row)
    assert TASK.format_question(row).startswith("edges v")


# ---- H is exact with a perfect M, and the depth of its tree is the difficulty --------------------
def test_amplify_oracle_exact_and_leaves():
  batch = sampled()
  out = evaluate(TASK)(batch.questions)
  np.testing.assert_array_equal(out["solve"], batch.answers)
  np.testing.assert_array_equal(out["amp"], batch.answers)
  leaves = out["is_leaf"]
  assert leaves[np.asarray(batch.difficulty) == 0].all()
  np.testing.assert_array_equal(out["leaf_answer"][leaves], np.asarray(batch.answers)[leaves])


def test_human_tree_depth_is_the_difficulty():
  """Depth d is exact and depth d - 1 wrong on EVERY level-d question (costs S**d = 8**d per row)."""
  check_tree_depths(TASK, sampled(), range(TASK.max_difficulty + 1))


# ---- robustness ----------------------------------------------------------------------------------
def test_garbage_questions_and_answers():
  q = jax.random.randint(jax.random.PRNGKey(3), (PAD_ROWS, TASK.question_len), 0, TASK.vocab_size)
  out = evaluate(TASK)(q)
  np.testing.assert_array_equal(out["amp"], out["solve"])
  leaves = out["is_leaf"]
  assert 0 < leaves.mean() < 1
  np.testing.assert_array_equal(out["leaf_answer"][leaves], out["solve"][leaves])
  for name in ("solve", "garbage_amp"):
    assert bool((TOK.is_number(out[name]) | (out[name] == INF)).all())
  subquestions = out["garbage_subquestions"]
  assert ((subquestions >= 0) & (subquestions < TASK.vocab_size)).all()


@pytest.mark.parametrize("options, depths", [
    # E = every pair, max_hops = N - 1: the extra edge can only repeat the tree edge.
    (dict(num_nodes=2, extra_edges=1, max_hops=1), [0]),
    (dict(num_nodes=12, extra_edges=0, max_hops=3), [0, 1]),  # a tree
    (dict(num_nodes=16, extra_edges=120, max_hops=15), [0, 1]),  # the top level is a path
])
def test_non_default_options(options, depths):
  task = ShortestPath(**options)
  n, e = task.num_nodes, task.extra_edges
  assert task.question_len == 2 * (n - 1 + e) + 3 and task.num_subquestions == n
  assert task.max_difficulty == task.max_hops - 1
  batch = sampled(task, per_level=16)
  check_sampled(task, batch)
  check_tree_depths(task, batch, depths)


@pytest.mark.parametrize("options, name", [
    (dict(num_nodes=1), "num_nodes"),
    (dict(num_nodes=17), "num_nodes"),
    (dict(num_nodes=8.0), "num_nodes"),
    (dict(extra_edges=-1), "extra_edges"),
    (dict(num_nodes=4, extra_edges=7, max_hops=3), "extra_edges"),  # at most 4 * 3 / 2 = 6
    (dict(max_hops=0), "max_hops"),
    (dict(num_nodes=4), "max_hops"),  # the default max_hops=4 exceeds num_nodes - 1 = 3
    (dict(max_hops=8), "max_hops"),
])
def test_bad_options(options, name):
  with pytest.raises(ValueError, match=name):
    ShortestPath(**options)
