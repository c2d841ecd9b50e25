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
N = TASK.num_nodes
# The path v0 - v1 - ... - v7 plus the chord v1-v4.
NEIGHBOURS = {0: [1], 1: [0, 2, 4], 2: [1, 3], 3: [2, 4], 4: [1, 3, 5], 5: [4, 6], 6: [5, 7],
              7: [6]}
PAD_ROWS = 512


def rows_text(neighbours, n=N):
  """The well-formed graph: row i is the number sum of 2^j over i's neighbours j."""
  return " ".join(str(sum(1 << j for j in neighbours.get(i, []))) for i in range(n))


GRAPH = rows_text(NEIGHBOURS)  # "2 21 10 20 42 80 160 64"
# The same graph, malformed: a row that is no number token has no edges, a self-loop bit is
# ignored, and one side of a pair suffices. Row 0 sets its own bit (3 = v0 + v1); row 1 is a node
# token (rows 0, 2 and 4 have its edges); row 3 is 0 (rows 2 and 4 have its edges); row 4 omits
# nothing; row 6 omits v5 (row 5 has it); row 7 is <pad> (row 6 has its edge).
MALFORMED = "3 v2 10 0 42 80 128 <pad>"


def question(a, b, h, graph=GRAPH, task=TASK):
  return jnp.asarray(task.tokenizer.encode(f"{graph} v{a} v{b} {h}"))


def token(value):
  return INF if value == "inf" else int(TOK.number(value))


def parse_words(q, task=TASK):
  """From the token ids and the vocabulary layout, independently of the task's parser: ({node: set
  of neighbours}, a, b, h); row i's number token sets bit j for an edge i ~ j (off the diagonal,
  on either side), any other token none; a, b and h are clipped into range like the tokenizer's
  conversions."""
  tok, n = task.tokenizer, task.num_nodes
  q = np.asarray(q)
  node = lambda t: int(np.clip(t - tok.var_offset, 0, n - 1))
  adj = {i: set() for i in range(n)}
  for i in range(n):
    if tok.num_offset <= q[i] < tok.var_offset:
      mask = int(q[i]) - tok.num_offset + tok.num_lo
      for j in range(n):
        if mask >> j & 1 and i != j:
          adj[i].add(j)
          adj[j].add(i)
  h = int(np.clip(q[n + 2] - tok.num_offset, 0, task.max_hops))
  return adj, node(q[n]), node(q[n + 1]), h


def bfs(adj, a, limit):
  """{node: distance from a} over the nodes within ``limit`` hops."""
  dist, frontier = {a: 0}, [a]
  for step in range(1, limit + 1):
    frontier = [y for x in frontier for y in sorted(adj[x]) if y not in dist]
    frontier = list(dict.fromkeys(frontier))
    dist.update({y: step for y in frontier})
  return dist


def reference(q, task=TASK):
  """The true answer of q from an independent implementation: distance or "inf"."""
  adj, a, b, h = parse_words(q, task)
  return bfs(adj, a, h).get(b, "inf")


def check_sampled(task, batch):
  """Properties of every sampled question: well-formed symmetric rows, budget h = d + 1, answers h or
  inf (level 0: 0, 1 or inf), connected graphs, and b at distance <= min(h + 2, N - 1) when inf."""
  q, answers, levels = map(np.asarray, (batch.questions, batch.answers, batch.difficulty))
  tok, n = task.tokenizer, task.num_nodes
  np.testing.assert_array_equal(np.asarray(tok.to_number(q[:, -1])), levels + 1)  # h = d + 1
  np.testing.assert_array_equal(np.asarray(tok.is_number(q[:, -1])), True)
  words = np.array([tok.decode(answer) for answer in answers])
  assert set(words[levels == 0]) <= {"0", "1", "inf"}
  finite = words != "inf"
  np.testing.assert_array_equal(words[finite & (levels > 0)].astype(int),
                                levels[finite & (levels > 0)] + 1)
  np.testing.assert_array_equal(jax.jit(task.batch_solve)(batch.questions), answers)
  for row, word, level in zip(q, words, levels):
    masks = [int(w) for w in tok.decode(row).split()[:n]]  # well-formed: every row a number
    bits = np.array([[mask >> j & 1 for j in range(n)] for mask in masks])
    np.testing.assert_array_equal(bits, bits.T)  # symmetric
    assert (np.diag(bits) == 0).all()  # no self-loops
    adj, a, b, h = parse_words(row, task)
    assert all(bool(bits[i, j]) == (j in adj[i]) for i in range(n) for j in range(n))
    dist = bfs(adj, a, n)
    assert len(dist) == n  # connected
    assert str(reference(row, task)) == word
    if word == "inf":
      assert h + 1 <= dist[b] <= min(h + 2, n - 1)


@functools.lru_cache(maxsize=None)
def sampled(task=TASK, per_level=128, seed=0):
  levels = np.repeat(np.arange(task.max_difficulty + 1), per_level)
  return task_helpers.sampler(task)(jax.random.PRNGKey(seed), jnp.asarray(levels))


def evaluate(task):
  return task_helpers.evaluate(task, PAD_ROWS)


def check_tree_depths(task, batch, depths):
  """H's tree of depth D is exact on exactly the questions of level <= D and the inf questions
  (deterministically): a shallower tree cannot tell dist = h from dist > h and answers inf. Hence
  it is exact on every question of level <= D and on no finite-answer question above."""
  levels = np.asarray(batch.difficulty)
  inf = np.asarray(batch.answers)[:, 0] == task.tokenizer.symbol("inf")
  for depth in depths:
    got = task_helpers.tree(task, depth)(batch.questions, jax.random.PRNGKey(2))
    exact = np.asarray((got == batch.answers).all(1))
    np.testing.assert_array_equal(exact, (levels <= depth) | inf, err_msg=f"depth {depth}")
    if depth < task.max_difficulty:
      assert not exact[levels == depth + 1].all(), depth


# ---- hand-built questions ------------------------------------------------------------------------
HAND_BUILT = [  # (a, b, h, answer, is_leaf)
    (0, 0, 1, 0, True),
    (0, 0, 0, 0, True),
    (3, 3, 4, 0, True),
    (0, 1, 1, 1, True),
    (4, 1, 3, 1, True),  # the chord
    (7, 6, 2, 1, True),
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


@pytest.mark.parametrize("graph", [GRAPH, MALFORMED], ids=["well_formed", "malformed"])
def test_hand_built_answers(graph):
  q = jnp.stack([question(a, b, h, graph) for a, b, h, _, _ in HAND_BUILT])
  expected = np.array([[token(answer)] for *_, answer, _ in HAND_BUILT])
  assert [reference(row) for row in q] == [answer for *_, answer, _ in HAND_BUILT]
  out = evaluate(TASK)(q)
  np.testing.assert_array_equal(out["solve"], expected)
  np.testing.assert_array_equal(out["amp"], expected)
  leaf = np.array([leaf for *_, leaf in HAND_BUILT])
  np.testing.assert_array_equal(out["is_leaf"], leaf)
  np.testing.assert_array_equal(out["leaf_answer"][leaf], expected[leaf])  # exact at leaves


def test_rows_are_symmetrised_and_only_number_tokens_carry_edges():
  adj, *_ = jax.jit(TASK._parse)(question(0, 0, 1, MALFORMED))
  expected = np.zeros((N, N), bool)
  for i, js in NEIGHBOURS.items():
    expected[i, js] = True
  np.testing.assert_array_equal(adj, expected)
  # Re-encoding the parsed graph gives the well-formed rows.
  np.testing.assert_array_equal(TASK._question(adj, 0, 0, 1), question(0, 0, 1))


@jax.jit
def all_subquestions(q):
  """(int32[S, Lq], bool[S]): every subquestion of q (i traced, as inside amplify's scan)."""
  none = jnp.zeros((TASK.num_subquestions, 1), jnp.int32)
  return jax.vmap(lambda i: TASK.subquestion(q, none, i))(jnp.arange(TASK.num_subquestions))


@pytest.mark.parametrize("graph", [GRAPH, MALFORMED], ids=["well_formed", "malformed"])
def test_subquestions_ask_each_neighbour(graph):
  subs, valid = all_subquestions(question(1, 5, 3, graph))  # neighbours of v1: v0, v2, v4
  np.testing.assert_array_equal(valid, [True, False, True, False, True, False, False, False])
  for i in (0, 2, 4):
    np.testing.assert_array_equal(subs[i], question(i, 5, 2, graph))  # rows kept as they are
  _, valid = all_subquestions(question(1, 4, 3, graph))  # leaves pose nothing
  assert not bool(valid.any())


def test_recombine_takes_one_plus_min():
  q = question(1, 5, 3)
  valid = jnp.array([True, False, True, False, True, False, False, False])
  run = jax.jit(TASK.recombine)

  def recombine(rows):
    return TOK.decode(np.asarray(run(q, jnp.asarray([[t] for t in rows], jnp.int32), valid)))

  pad, var, other = 0, int(TOK.variable(3)), int(TOK.variable(5))
  assert recombine([token(4), token(0), INF, token(0), token(1), token(0), 0, 0]) == "2"
  assert recombine([INF, token(0), INF, token(0), INF, token(0), 0, 0]) == "inf"
  # Non-number subanswers count as infinite; invalid rows are ignored.
  assert recombine([pad, token(0), var, token(0), token(2), token(0), 0, 0]) == "3"
  assert recombine([pad, token(0), var, token(0), other, token(0), 0, 0]) == "inf"
  # A result above the budget h = 3 is inf.
  assert recombine([token(3), token(0), token(4), token(0), INF, token(0), 0, 0]) == "inf"


def test_format_question():
  text = TASK.format_question(question(0, 5, 3))
  assert text == ("adjacency 01000000 10101000 01010000 00101000 01010100 00001010 00000101 "
                  "00000010; dist(v0, v5) within 3 hops?")
  assert TASK.format_answer(np.array([INF])) == "inf"
  text = TASK.format_question(question(0, 5, 3, MALFORMED))  # rows as written, non-numbers bracketed
  assert text == ("adjacency 11000000 [v2] 01010000 00000000 01010100 00001010 00000001 "
                  "[<pad>]; dist(v0, v5) within 3 hops?")
  with pytest.raises(ValueError):
    TASK.format_question(np.full(TASK.question_len, TASK.vocab_size))


# ---- generator --------------------------------------------------------------------------------
def test_generator_properties():
  batch = sampled()
  check_sampled(TASK, batch)
  q, levels = np.asarray(batch.questions), np.asarray(batch.difficulty)
  words = np.array([TOK.decode(answer) for answer in np.asarray(batch.answers)])
  # Level 0: a quarter b = a, a quarter adjacent, half inf; above, half h and half inf.
  top = words[levels == 0]
  assert 0.15 < (top == "0").mean() < 0.35 and 0.15 < (top == "1").mean() < 0.35
  for d in range(TASK.max_difficulty + 1):
    assert 0.35 < (words[levels == d] == "inf").mean() < 0.65, d
  parsed = [parse_words(row) for row in q]
  dist = [bfs(adj, a, N) for adj, a, _, _ in parsed]
  far = np.array([dist_row[b] for dist_row, (_, _, b, _) in zip(dist, parsed)])
  ecc = np.array([max(dist_row.values()) for dist_row in dist])
  for d in range(TASK.max_difficulty + 1):
    h = d + 1
    inf = (levels == d) & (words == "inf")
    # Both far distances occur when they fit; some nodes lie beyond b, up to the largest level.
    assert set(far[inf]) == set(range(h + 1, min(h + 2, N - 1) + 1)), d
    assert (ecc[levels == d] > far[levels == d]).mean() > 0.2, d
  assert ecc.max() == TASK.max_level
  # The relabelling spreads a and b over all nodes.
  for d in range(TASK.max_difficulty + 1):
    assert {a for (_, a, _, _), lv in zip(parsed, levels) if lv == d} == set(range(N))
  # Extra edges seldom repeat an edge (they avoid tree edges), so E adds cycles.
  edges = np.array([sum(map(len, adj.values())) // 2 for adj, *_ in parsed])
  assert edges.max() <= N - 1 + TASK.extra_edges
  assert edges.mean() > N - 1 + TASK.extra_edges - 0.5


def test_subquestions_are_questions_of_d_one_level_down():
  """A neighbour u of a has dist(u, b) >= h - 1: the subquestions (budget h - 1) answer h - 1 or
  inf, like level d - 1 of D; the rows are unchanged."""
  batch = sampled()
  q, levels = np.asarray(batch.questions), np.asarray(batch.difficulty)
  subs, valid = jax.vmap(all_subquestions)(batch.questions)
  subs, valid = np.asarray(subs), np.asarray(valid)
  np.testing.assert_array_equal(valid.any(1), levels > 0)
  answers = np.asarray(jax.jit(jax.vmap(TASK.batch_solve))(subs))[..., 0]
  for r in np.flatnonzero(levels > 0):
    d = int(levels[r])
    rows = subs[r][valid[r]]
    np.testing.assert_array_equal(rows[:, :N], np.tile(q[r, :N], (len(rows), 1)))
    np.testing.assert_array_equal(np.asarray(TOK.to_number(rows[:, -1])), d)  # budget h - 1 = d
    got = {TOK.decode(answer[None]) for answer in answers[r][valid[r]]}
    assert got <= {str(d), "inf"}, (r, got)
    assert (str(d) in got) == (TOK.decode(batch.answers[r]) != "inf")


def test_round_trip():
  for row in np.asarray(sampled().questions)[::50]:
    np.testing.assert_array_equal(TOK.encode(TOK.decode(row)), row)
    text = TASK.format_question(row)
    assert text.startswith("adjacency ") and "[" not in text


# ---- H is exact with a perfect M, and the depth of its tree is the difficulty --------------------
def test_amplify_oracle_exact_and_leaves():
  batch = sampled()
  out = evaluate(TASK)(batch.questions)
  np.testing.assert_array_equal(out["solve"], batch.answers)
  np.testing.assert_array_equal(out["amp"], batch.answers)
  leaves = out["is_leaf"]
  np.testing.assert_array_equal(leaves, np.asarray(batch.difficulty) == 0)
  np.testing.assert_array_equal(out["leaf_answer"][leaves], np.asarray(batch.answers)[leaves])


def test_human_tree_depth_is_the_difficulty():
  """Depth d is exact on every level-d question (costs S**d = 8**d per row)."""
  check_tree_depths(TASK, sampled(), range(TASK.max_difficulty + 1))


# ---- robustness ----------------------------------------------------------------------------------
def test_garbage_questions_and_answers():
  q = jax.random.randint(jax.random.PRNGKey(3), (PAD_ROWS, TASK.question_len), 0, TASK.vocab_size)
  out = evaluate(TASK)(q)
  np.testing.assert_array_equal(out["amp"], out["solve"])
  assert [TOK.decode(answer) for answer in out["solve"][:64]] == [
      str(reference(row)) for row in np.asarray(q[:64])]
  leaves = out["is_leaf"]
  assert 0 < leaves.mean() < 1
  np.testing.assert_array_equal(out["leaf_answer"][leaves], out["solve"][leaves])
  for name in ("solve", "garbage_amp"):
    assert bool((TOK.is_number(out[name]) | (out[name] == INF)).all())
  subquestions = out["garbage_subquestions"]
  assert ((subquestions >= 0) & (subquestions < TASK.vocab_size)).all()


@pytest.mark.parametrize("options, depths", [
    # The smallest graph; E = every pair (a triangle whenever the levels allow).
    (dict(num_nodes=3, extra_edges=3, max_hops=1), [0]),
    (dict(num_nodes=9, extra_edges=0, max_hops=3), [0, 1]),  # a tree
    (dict(num_nodes=10, extra_edges=45, max_hops=8), [0, 1]),  # the top level is a path
])
def test_non_default_options(options, depths):
  task = ShortestPath(**options)
  n = task.num_nodes
  assert task.question_len == n + 3 and task.num_subquestions == n
  assert task.tokenizer.num_hi == 2**n - 1  # every row mask is a number token
  assert task.max_difficulty == task.max_hops - 1
  batch = sampled(task, per_level=16)
  check_sampled(task, batch)
  check_tree_depths(task, batch, depths)
  out = task_helpers.amplify_oracle(task)(batch.questions, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(out.answers, batch.answers)


@pytest.mark.parametrize("options, name", [
    (dict(num_nodes=2, max_hops=1), "num_nodes"),
    (dict(num_nodes=11), "num_nodes"),  # 2^11 number tokens: too many
    (dict(num_nodes=8.0), "num_nodes"),
    (dict(extra_edges=-1), "extra_edges"),
    (dict(num_nodes=4, extra_edges=7, max_hops=2), "extra_edges"),  # at most 4 * 3 / 2 = 6
    (dict(max_hops=0), "max_hops"),
    (dict(num_nodes=5), "max_hops"),  # the default max_hops=4 exceeds num_nodes - 2 = 3
    (dict(max_hops=7), "max_hops"),
])
def test_bad_options(options, name):
  with pytest.raises(ValueError, match=name):
    ShortestPath(**options)
