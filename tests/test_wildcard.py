"""Task-specific tests for wildcard search (generic interface tests live elsewhere)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import task_helpers

from amp_debate.procedure.amplify import human_tree_fn
from amp_debate.tasks.wildcard import Wildcard

TASK = Wildcard()  # bits=4, max_wildcards=4
TOK = TASK.tokenizer
# f = +1 except at indices 5 (0101), 12 (1100), 13 (1101).
TABLE = " ".join("-1" if k in (5, 12, 13) else "1" for k in range(16))


def question(pattern: str, table: str = TABLE, task: Wildcard = TASK):
  return jnp.asarray(task.tokenizer.encode(f"{table} {pattern}"))


def number(value):
  return int(TOK.number(value))


def reference(q, task=TASK):
  """Brute force in numpy from the token strings."""
  words = task.tokenizer.decode(np.asarray(q)).split()
  f, pattern = [int(w) for w in words[: task.table_size]], words[task.table_size :]
  total = 0
  for k in range(task.table_size):
    bits = format(k, f"0{task.bits}b")
    if all(p == "*" or p == b for p, b in zip(pattern, bits)):
      total += f[k]
  return total


@functools.lru_cache(maxsize=None)
def sampled(task=TASK, per_level=96, seed=0):
  levels = np.repeat(np.arange(task.max_difficulty + 1), per_level)
  sample = jax.jit(lambda k: task.sample(k, len(levels), difficulty=levels))
  batch = sample(jax.random.PRNGKey(seed))
  return batch


# ---- hand-built questions ------------------------------------------------------------------------
PAD_ROWS = 640


def evaluate(task):
  return task_helpers.evaluate(task, PAD_ROWS)


HAND_BUILT = [
    ("0 1 0 1", -1),
    ("1 0 1 0", 1),  # index 10; reading b_0 as least significant would give index 5 (-1)
    ("1 1 0 0", -1),
    ("* * * *", 10),
    ("1 1 0 *", -2),
    ("0 * * *", 6),
    ("1 * * *", 4),
    ("* 1 0 1", -2),
    ("0 1 * 1", 0),
]


def test_hand_built_answers():
  q = jnp.stack([question(pattern) for pattern, _ in HAND_BUILT])
  expected = np.array([[number(value)] for _, value in HAND_BUILT])
  assert [reference(row) for row in q] == [value for _, value in HAND_BUILT]
  out = evaluate(TASK)(q)
  np.testing.assert_array_equal(out["solve"], expected)
  np.testing.assert_array_equal(out["amp"], expected)
  leaf = np.array(["*" not in pattern for pattern, _ in HAND_BUILT])
  np.testing.assert_array_equal(out["is_leaf"], leaf)
  np.testing.assert_array_equal(out["leaf_answer"][leaf], expected[leaf])


def test_leaf_answer_reads_wildcard_as_zero():
  # "* 1 0 1" guessed as 0101 -> f(5) = -1; "1 * 0 *" guessed as 1000 -> f(8) = +1.
  assert int(TASK.leaf_answer(question("* 1 0 1"))[0]) == number(-1)
  assert int(TASK.leaf_answer(question("1 * 0 *"))[0]) == number(1)


def test_subquestions_replace_first_wildcard():
  q = question("1 * 0 *")
  none = jnp.zeros((2, 1), jnp.int32)
  sub0, valid0 = TASK.subquestion(q, none, 0)
  sub1, valid1 = TASK.subquestion(q, none, 1)
  assert bool(valid0) and bool(valid1)
  np.testing.assert_array_equal(sub0, question("1 0 0 *"))
  np.testing.assert_array_equal(sub1, question("1 1 0 *"))
  _, valid = TASK.subquestion(question("1 1 0 1"), none, 0)
  assert not bool(valid)
  # Traced i (as inside amplify's scan).
  subs, valids = jax.jit(jax.vmap(lambda i: TASK.subquestion(q, none, i)))(jnp.arange(2))
  np.testing.assert_array_equal(subs[1], sub1)
  assert bool(valids.all())


def test_recombine_adds():
  sub = jnp.asarray([[number(3)], [number(-5)]], jnp.int32)
  q = question("* * 0 0")
  assert int(TASK.recombine(q, sub, jnp.array([True, True]))[0]) == number(-2)
  assert int(TASK.recombine(q, sub, jnp.array([True, False]))[0]) == number(3)
  # Sums beyond the number range are clipped, never out of the vocabulary.
  big = jnp.asarray([[number(16)], [number(16)]], jnp.int32)
  assert int(TASK.recombine(q, big, jnp.array([True, True]))[0]) == number(16)


def test_format_question():
  text = TASK.format_question(question("1 * 0 *"))
  assert text == ("f = [+ + + + + - + + + + + + - - + +]; pattern 1*0*: sum of f over matches?")
  assert TASK.format_answer(np.array([number(-2)])) == "-2"


# ---- generator --------------------------------------------------------------------------------
def test_generator_properties():
  batch = sampled()
  q, answers, levels = map(np.asarray, (batch.questions, batch.answers, batch.difficulty))
  table, pattern = q[:, : TASK.table_size], q[:, TASK.table_size :]
  assert set(np.unique(table)) <= {number(1), number(-1)}
  star = TOK.symbol("*")
  assert set(np.unique(pattern)) <= {number(0), number(1), star}
  np.testing.assert_array_equal((pattern == star).sum(1), levels)  # d wildcards at level d
  # Wildcards land on every position; bits and table entries are not constant.
  for d in range(1, TASK.max_difficulty):
    assert ((pattern == star) & (levels == d)[:, None]).any(0).all()
  assert 0.3 < (table == number(1)).mean() < 0.7
  values = np.asarray(TOK.to_number(answers[:, 0]))
  assert (np.abs(values) <= 2**levels).all()
  assert ((values - 2**levels) % 2 == 0).all()  # parity of a sum of 2^d terms of +-1
  for d in range(TASK.max_difficulty + 1):
    assert len(np.unique(values[levels == d])) >= min(2**d + 1, 3)
  # Ground truth agrees with brute force.
  assert [reference(row) for row in q[::7]] == list(values[::7])


def test_round_trip():
  for row in np.asarray(sampled().questions)[::50]:
    np.testing.assert_array_equal(TOK.encode(TOK.decode(row)), row)
    assert TASK.format_question(row).startswith("f = [")


# ---- H is exact with a perfect M, and the depth of its tree is the difficulty --------------------
def test_amplify_oracle_exact_and_leaves():
  batch = sampled()
  out = evaluate(TASK)(batch.questions)
  np.testing.assert_array_equal(out["solve"], batch.answers)
  np.testing.assert_array_equal(out["amp"], batch.answers)
  leaves = out["is_leaf"]
  np.testing.assert_array_equal(leaves, batch.difficulty == 0)
  np.testing.assert_array_equal(out["leaf_answer"][leaves], np.asarray(batch.answers)[leaves])


SMALL = Wildcard(bits=3, max_wildcards=3)  # non-default options


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_human_tree_depth(depth):
  batch = sampled(SMALL)
  got = jax.jit(human_tree_fn(SMALL, depth))(batch.questions, jax.random.PRNGKey(2))
  exact = np.asarray((got == batch.answers).all(1))
  levels = np.asarray(batch.difficulty)
  assert exact[levels <= depth].all()
  assert not exact[levels == depth + 1].all()


# ---- robustness ----------------------------------------------------------------------------------
def test_garbage_questions_and_answers():
  q = jax.random.randint(jax.random.PRNGKey(3), sampled().questions.shape, 0, TASK.vocab_size)
  out = evaluate(TASK)(q)
  np.testing.assert_array_equal(out["amp"], out["solve"])
  assert bool(TOK.is_number(out["solve"]).all())
  leaves = out["is_leaf"]
  assert 0 < leaves.mean() < 1
  np.testing.assert_array_equal(out["leaf_answer"][leaves], out["solve"][leaves])
  # A garbage M: every output is still a valid token, and so is every subquestion.
  subquestions = out["garbage_subquestions"]
  assert ((subquestions >= 0) & (subquestions < TASK.vocab_size)).all()
  assert bool(TOK.is_number(out["garbage_amp"]).all())


def test_non_default_options():
  task = SMALL
  assert task.question_len == 11 and task.max_difficulty == 3 and task.vocab_size == 15 + 17 + 1
  batch = sampled(task)
  out = evaluate(task)(batch.questions)
  np.testing.assert_array_equal(out["solve"], batch.answers)
  np.testing.assert_array_equal(out["amp"], batch.answers)
  assert [reference(row, task) for row in np.asarray(batch.questions)[::9]] == list(
      np.asarray(task.tokenizer.to_number(batch.answers[::9, 0])))


@pytest.mark.parametrize("options, name", [
    (dict(bits=0), "bits"),
    (dict(bits=9), "bits"),
    (dict(bits=2.0), "bits"),
    (dict(bits=True), "bits"),
    (dict(bits=4, max_wildcards=5), "max_wildcards"),
    (dict(bits=2), "max_wildcards"),  # the default max_wildcards=4 exceeds bits=2
    (dict(max_wildcards=-1), "max_wildcards"),
])
def test_bad_options(options, name):
  with pytest.raises(ValueError, match=name):
    Wildcard(**options)
