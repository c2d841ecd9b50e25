"""Jitted task helpers shared by the task-specific tests, cached per task so each shape compiles once."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

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
