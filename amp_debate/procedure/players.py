"""Debaters: who produces each argument of a debate (DESIGN.md section 3).

A debater answers the protocol questions of ``protocol`` for a batch of games. Every move returns the
argument tokens and their log-probabilities under the debater's policy (scripted debaters return
zeros), so the RL loss can weigh them. The rollout (``debate``) calls:

  answer(nodes [B, Lq], rng)                          -> Move, tokens int32[B, La]
  counter(nodes, claims_even [B, La], rng)            -> Move, tokens int32[B, La] (equal: concede)
  support(nodes, claims [B, La], rng)                 -> Move, tokens int32[B, S*La]
  challenge(nodes, claims, supports [B, S*La], rng)   -> Move, tokens int32[B, S*La]
  stop(nodes, claims_even, claims_odd, rng)           -> Move, tokens int32[B, 1]; YES stops

The model-backed debater (M_target answering protocol prompts) lives in ``model_player``; this module
holds the scripted ones used to test the protocol: an honest oracle and liars.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from amp_debate.procedure import protocol
from amp_debate.tasks.base import Task
from amp_debate.tasks.tokenizer import PAD


@flax.struct.dataclass
class Move:
  """One argument per game: tokens int32[B, L] and their log-probs float32[B, L]."""

  tokens: jax.Array
  log_probs: jax.Array


def scripted(tokens) -> Move:
  """A move with zero log-probs (scripted debaters have no policy to train)."""
  return Move(tokens=tokens.astype(jnp.int32), log_probs=jnp.zeros(tokens.shape, jnp.float32))


def oracle_support(task: Task, node):
  """True answers to H's subquestions of ``node``, posed in order: int32[S*La] (one game)."""
  rows = jnp.full((task.num_subquestions, task.answer_len), PAD, jnp.int32)
  for i in range(task.num_subquestions):
    sub, valid = task.subquestion(node, rows, i)
    rows = rows.at[i].set(jnp.where(valid, task.solve(sub), PAD))
  return rows.reshape(-1)


def wrong_answer(task: Task, answer, rng):
  """A number token different from ``answer`` (any shape), uniformly among the others."""
  tok = task.tokenizer
  span = tok.var_offset - tok.num_offset
  shift = jax.random.randint(rng, answer.shape, 1, span)
  value = jnp.clip(answer - tok.num_offset, 0, span - 1)
  return (tok.num_offset + (value + shift) % span).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class OracleDebater:
  """Honest and perfect: true answers, true supports, challenges exactly the false subanswers."""

  task: Task

  def answer(self, nodes, rng):
    return scripted(self.task.batch_solve(nodes))

  def counter(self, nodes, claims_even, rng):
    return self.answer(nodes, rng)

  def support(self, nodes, claims, rng):
    return scripted(jax.vmap(lambda n: oracle_support(self.task, n))(nodes))

  def challenge(self, nodes, claims, supports, rng):
    return self.support(nodes, claims, rng)

  def stop(self, nodes, claims_even, claims_odd, rng):
    return scripted(jnp.full((nodes.shape[0], 1), protocol.NO, jnp.int32))


@dataclasses.dataclass(frozen=True)
class LiarDebater:
  """Claims a false answer and defends it.

  consistent=True: supports keep the lie consistent where the task's recombination passes one
  subanswer through (the last valid row carries the claim: permutation, union find); elsewhere, and
  with consistent=False, supports are true, so H's recombination exposes the false claim at once.
  Challenges dispute one valid subanswer (chosen at random) with a false answer.
  """

  task: Task
  consistent: bool = True

  def answer(self, nodes, rng):
    truth = self.task.batch_solve(nodes)
    return scripted(wrong_answer(self.task, truth, rng))

  def counter(self, nodes, claims_even, rng):
    return self.answer(nodes, rng)

  def support(self, nodes, claims, rng):
    def one(node, claim):
      honest = oracle_support(self.task, node)
      if not self.consistent:
        return honest
      _, valid, rows = protocol.subquestions_of(self.task, node, honest)
      last = jnp.max(jnp.where(valid, jnp.arange(valid.shape[0]), -1))
      lied = rows.at[jnp.maximum(last, 0)].set(claim)
      return jnp.where(last >= 0, lied.reshape(-1), honest)
    return scripted(jax.vmap(one)(nodes, claims))

  def challenge(self, nodes, claims, supports, rng):
    def one(node, support, key):
      _, valid, rows = protocol.subquestions_of(self.task, node, support)
      pick_key, lie_key = jax.random.split(key)
      j = jax.random.categorical(pick_key, jnp.where(valid, 0.0, -jnp.inf))
      return rows.at[j].set(wrong_answer(self.task, rows[j], lie_key)).reshape(-1)
    keys = jax.random.split(rng, nodes.shape[0])
    return scripted(jax.vmap(one)(nodes, supports, keys))

  def stop(self, nodes, claims_even, claims_odd, rng):
    return scripted(jnp.full((nodes.shape[0], 1), protocol.NO, jnp.int32))
