"""Debaters: who produces each argument of a debate (DESIGN.md section 3).

A debater is M (or a scripted stand-in) seen through the protocol questions of ``protocol``. Every
move returns the argument tokens and their log-probabilities under the debater's policy (scripted
debaters return zeros). The rollout (``debate``) calls:

  answer_fn()                                -> M for ``amplify``: a side's claim on a node is its
                                                own Amp′(H, M)(node) computation
  answer(nodes [B, Lq], rng)                 -> Move [B, La]: an assigned claim to defend
  support(nodes, claims [B, La], rng)        -> Move [B, S*La]: answers to H's subquestions of each
                                                node, used where H was not called (or the claim is
                                                assigned)
  stop(nodes, claims_even, claims_odd, rng)  -> Move [B, 1]; protocol.YES stops the debate

The model-backed debater lives in ``model_player``; this module holds the scripted ones used to test
the protocol and to measure honesty: an honest oracle and liars.
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


def _never_stop(nodes) -> Move:
  return scripted(jnp.full((nodes.shape[0], 1), protocol.NO, jnp.int32))


@dataclasses.dataclass(frozen=True)
class OracleDebater:
  """Honest and perfect: M = ``task.solve``, true supports, never stops."""

  task: Task

  def answer_fn(self):
    return lambda questions, rng: self.task.batch_solve(questions)

  def answer(self, nodes, rng):
    return scripted(self.task.batch_solve(nodes))

  def support(self, nodes, claims, rng):
    return scripted(jax.vmap(lambda n: oracle_support(self.task, n))(nodes))

  def stop(self, nodes, claims_even, claims_odd, rng):
    return _never_stop(nodes)


@dataclasses.dataclass(frozen=True)
class LiarDebater:
  """Claims a false answer and defends it (played in an assigned seat: ``debate.rollout(...,
  assigned=...)``).

  consistent=True: the support's last valid row is replaced by the claim. Where the task's
  recombination passes that subanswer through (permutation, union find) the lie stays consistent and
  moves one level down, to be caught only at a leaf; elsewhere it is usually exposed by H's
  recombination at once (sometimes not: in wildcard a + claim = claim when a = 0, and the lie goes
  down the tree). consistent=False: supports are true, so H's recombination exposes the lie at once. As an M for ``amplify``
  (``answer_fn``) it answers every question falsely.
  """

  task: Task
  consistent: bool = True

  def answer_fn(self):
    return lambda questions, rng: self.answer(questions, rng).tokens

  def answer(self, nodes, rng):
    truth = self.task.batch_solve(nodes)
    return scripted(wrong_answer(self.task, truth, rng))

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

  def stop(self, nodes, claims_even, claims_odd, rng):
    return _never_stop(nodes)
