"""Properties every task must have (DESIGN.md section 2), checked on >= 1,000 questions per task."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate import tasks
from amp_debate.procedure.amplify import amplify, human_tree_fn, oracle_fn

PER_LEVEL = 256  # questions per difficulty level; >= 1,000 per task across levels (checked below)

# Depth checks expand S**d nodes per question; shortest path has S = num_nodes, so use a
# smaller graph there to keep the full expansion cheap.
TREE_OPTIONS = {"shortest_path": dict(num_nodes=6, max_hops=4)}


def _sample(task, seed, batch, **kwargs):
  """Jitted ``task.sample`` (eager sampling dispatches op by op and is slow)."""
  return jax.jit(task.sample, static_argnums=1)(jax.random.key(seed), batch, **kwargs)


def _levels_batch(task, seed=0, per_level=PER_LEVEL):
  levels = task.max_difficulty + 1
  per_level = max(per_level, -(-1000 // levels))
  difficulty = jnp.repeat(jnp.arange(levels, dtype=jnp.int32), per_level)
  return _sample(task, seed, levels * per_level, difficulty=difficulty)


@pytest.fixture(params=tasks.names(), scope="module")
def task(request):
  return tasks.get(request.param)


def test_registry_lists_the_five_tasks():
  assert tasks.names() == sorted(
      ["permutation", "assignments", "wildcard", "shortest_path", "union_find"])


def test_ground_truth_and_amp_with_oracle_are_exact(task):
  batch = _levels_batch(task)
  assert batch.questions.shape[0] >= 1000
  np.testing.assert_array_equal(jax.jit(task.batch_solve)(batch.questions), batch.answers)
  out = jax.jit(lambda q, k: amplify(task, oracle_fn(task), q, k))(batch.questions, jax.random.key(1))
  np.testing.assert_array_equal(out.answers, batch.answers)
  assert int(out.human_calls) == batch.questions.shape[0]


def test_leaf_answer_is_exact_at_leaves(task):
  batch = _levels_batch(task, seed=2)
  leaf = np.asarray(jax.jit(task.batch_is_leaf)(batch.questions))
  assert leaf[np.asarray(batch.difficulty) == 0].all(), "difficulty 0 must be a leaf"
  alone = np.asarray(jax.jit(task.batch_leaf_answer)(batch.questions))
  np.testing.assert_array_equal(alone[leaf], np.asarray(batch.answers)[leaf])
  # H alone is not an oracle: somewhere above the leaves it must be wrong.
  assert (alone[~leaf] != np.asarray(batch.answers)[~leaf]).any()


def test_decomposition_terminates_within_difficulty(task):
  task = tasks.get(task.name, **TREE_OPTIONS.get(task.name, {}))
  batch = _levels_batch(task, seed=3, per_level=64)
  difficulty = np.asarray(batch.difficulty)
  for depth in range(task.max_difficulty + 1):
    got = np.asarray(jax.jit(human_tree_fn(task, depth))(batch.questions, jax.random.key(0)))
    correct = (got == np.asarray(batch.answers)).all(-1)
    assert correct[difficulty <= depth].all(), f"H's tree of depth {depth} is not exact"
    if depth < task.max_difficulty:  # one level short of the difficulty is not enough
      assert not correct[difficulty == depth + 1].all()


def test_wrong_answer_fn_makes_amp_wrong(task):
  batch = _levels_batch(task, seed=4)
  tok = task.tokenizer

  def wrong(questions, key):  # a uniformly random answer in the task's number range
    return jax.random.randint(key, (questions.shape[0], task.answer_len),
                              tok.num_offset, tok.var_offset)

  out = jax.jit(lambda q, k: amplify(task, wrong, q, k))(batch.questions, jax.random.key(5))
  correct = np.asarray((out.answers == batch.answers).all(-1))
  leaf = np.asarray(out.is_leaf)
  assert correct[leaf].all()  # H answers leaves alone
  assert correct[~leaf].mean() < 0.6


def test_jit_vmap_and_static_shapes(task):
  batch = _sample(task, 6, 64)
  assert batch.questions.shape == (64, task.question_len) and batch.questions.dtype == jnp.int32
  assert batch.answers.shape == (64, task.answer_len) and batch.answers.dtype == jnp.int32
  assert ((batch.questions >= 0) & (batch.questions < task.vocab_size)).all()
  for fn in (task.is_leaf, task.leaf_answer, task.solve):
    np.testing.assert_array_equal(jax.jit(jax.vmap(fn))(batch.questions), jax.vmap(fn)(batch.questions))
  subanswers = jnp.zeros((64, task.num_subquestions, task.answer_len), jnp.int32)
  subquestion = jax.jit(task.batch_subquestion)  # i is traced: one compilation for every i
  for i in range(task.num_subquestions):
    sub, valid = subquestion(batch.questions, subanswers, i)
    assert sub.shape == batch.questions.shape and valid.shape == (64,)
  # the curriculum passes a traced level
  sampled = jax.jit(lambda k, top: task.sample(k, 256, max_difficulty=top))(jax.random.key(7), 1)
  assert int(sampled.difficulty.max()) <= 1
  np.testing.assert_array_equal(task.batch_solve(sampled.questions), sampled.answers)


def test_robust_to_garbage_tokens(task):
  """Any token array (e.g. an untrained model's answers) gives in-vocabulary outputs, no crash."""
  rng = np.random.default_rng(0)
  questions = jnp.asarray(rng.integers(0, task.vocab_size, (256, task.question_len)), jnp.int32)
  subanswers = jnp.asarray(
      rng.integers(0, task.vocab_size, (256, task.num_subquestions, task.answer_len)), jnp.int32)
  valid = jnp.ones(subanswers.shape[:2], bool)
  outs = [jax.jit(task.batch_solve)(questions), jax.jit(task.batch_leaf_answer)(questions),
          jax.jit(task.batch_recombine)(questions, subanswers, valid)]
  outs += [jax.jit(task.batch_subquestion)(questions, subanswers, i)[0]
           for i in range(task.num_subquestions)]
  for out in outs:
    assert ((np.asarray(out) >= 0) & (np.asarray(out) < task.vocab_size)).all()


def test_tokenizer_round_trip(task):
  batch = _sample(task, 8, 200)
  tok = task.tokenizer
  for q, a in zip(np.asarray(batch.questions), np.asarray(batch.answers)):
    np.testing.assert_array_equal(tok.encode(tok.decode(q)), q)
    np.testing.assert_array_equal(tok.encode(tok.decode(a)), a)
  text = task.format_question(batch.questions[0])
  assert isinstance(text, str) and text and "<pad>" not in text
  assert tok.vocab[: len(tasks.PROTOCOL_TOKENS)] == tasks.PROTOCOL_TOKENS


def test_difficulty_levels_are_used(task):
  batch = _sample(task, 9, 2000)
  levels = np.bincount(np.asarray(batch.difficulty), minlength=task.max_difficulty + 1)
  assert (levels > 0).all() and len(levels) == task.max_difficulty + 1


BAD_OPTIONS = [
    ("permutation", dict(n=1), "n"),
    ("permutation", dict(max_exponent=0), "max_exponent"),
    ("permutation", dict(n=65), "n"),
    ("assignments", dict(num_vars=1), "num_vars"),
    ("assignments", dict(num_vars=4, max_depth=4), "max_depth"),
    ("assignments", dict(modulus=1), "modulus"),
    ("wildcard", dict(bits=0), "bits"),
    ("wildcard", dict(bits=3, max_wildcards=4), "max_wildcards"),
    ("shortest_path", dict(num_nodes=1), "num_nodes"),
    ("shortest_path", dict(num_nodes=2, max_hops=1), "num_nodes"),
    ("shortest_path", dict(num_nodes=5, max_hops=4), "max_hops"),  # at most num_nodes - 2
    ("shortest_path", dict(extra_edges=-1), "extra_edges"),
    ("union_find", dict(num_vars=1), "num_vars"),
    ("union_find", dict(num_vars=4, max_depth=7), "max_depth"),
]


@pytest.mark.parametrize("name,options,field", BAD_OPTIONS)
def test_impossible_options_raise_clear_errors(name, options, field):
  with pytest.raises(ValueError, match=field):
    tasks.get(name, **options)


def test_unknown_task_and_option():
  with pytest.raises(ValueError, match="unknown task 'chess'.*permutation"):
    tasks.get("chess")
  with pytest.raises(ValueError, match="unknown option.*size"):
    tasks.get("permutation", size=3)
  with pytest.raises(ValueError, match="integer"):
    tasks.get("permutation", n=2.5)
