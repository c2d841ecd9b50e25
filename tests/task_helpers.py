"""Jitted task helpers shared by the task-specific tests, cached per task so each shape compiles once."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from amp_debate.procedure.amplify import amplify, human_tree_fn, oracle_fn


@functools.cache
def sampler(task):
  """jit((key, levels int32[B]) -> task.sample(key, B, difficulty=levels))."""
  return jax.jit(lambda key, levels: task.sample(key, levels.shape[0], difficulty=levels))


@functools.cache
def amplify_oracle(task):
  """jit((questions, key) -> Amp(H, oracle) output)."""
  return jax.jit(lambda q, key: amplify(task, oracle_fn(task), q, key))


@functools.cache
def tree(task, depth):
  """jit(H's full decomposition ``depth`` levels deep)."""
  return jax.jit(human_tree_fn(task, depth))


def levels(task, per_level):
  """int32[(max_difficulty + 1) * per_level]: every level, ``per_level`` times each."""
  return jnp.repeat(jnp.arange(task.max_difficulty + 1), per_level)


def encode(task, text):
  return jnp.asarray(task.tokenizer.encode(text))


def value(task, answer):
  return int(task.tokenizer.to_number(answer[0]))


@functools.cache
def evaluate(task, pad_rows):
  """Jitted (one compile per task): questions int32[B <= pad_rows, Lq] -> dict of numpy arrays
  solve [B, 1], is_leaf [B], leaf_answer [B, 1], amp (Amp(H, oracle)) [B, 1], and with a garbage M
  (uniformly random tokens): garbage_amp [B, 1], garbage_subquestions [B, S, Lq]."""
  garbage = lambda qs, k: jax.random.randint(k, (qs.shape[0], 1), 0, task.vocab_size)

  @jax.jit
  def run(q):
    key = jax.random.PRNGKey(0)
    with_garbage = amplify(task, garbage, q, key)
    return dict(solve=task.batch_solve(q), is_leaf=task.batch_is_leaf(q),
                leaf_answer=task.batch_leaf_answer(q),
                amp=amplify(task, oracle_fn(task), q, key).answers,
                garbage_amp=with_garbage.answers, garbage_subquestions=with_garbage.subquestions)

  def padded(q):  # pad to pad_rows rows so that every batch reuses one compile
    q = np.asarray(q)
    rows = np.concatenate([q, np.repeat(q[:1], pad_rows - len(q), axis=0)])
    return {name: np.asarray(value)[: len(q)] for name, value in run(jnp.asarray(rows)).items()}

  return padded


def check_tree_depth(task, batch, depths, seed=3):
  """H's tree d levels deep is exact at difficulty <= d and not exact on all (nor most) of
  difficulty d + 1, for each d in ``depths``."""
  q, a, levels = batch.questions, batch.answers, np.asarray(batch.difficulty)
  for depth in depths:
    ok = np.asarray((tree(task, depth)(q, jax.random.PRNGKey(seed)) == a).all(-1))
    assert ok[levels <= depth].all(), depth
    if depth < task.max_difficulty:
      assert not ok[levels == depth + 1].all(), depth
      assert ok[levels == depth + 1].mean() < 0.5, depth
