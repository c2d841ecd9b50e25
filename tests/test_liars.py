"""Scripted liars are what they claim to be, on every task (DESIGN.md section 3, "Honesty is
measured"): a consistent liar's support passes H's recombination check for its false claim, an early
liar lies above the last valid row, a plausible liar claims M's own likeliest wrong answer, and an
honest oracle beats each of them in full debates (H at the leaves is exact).
"""

from __future__ import annotations

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate import tasks
from amp_debate.models import ModelConfig
from amp_debate.models.transformer import LanguageModel
from amp_debate.procedure import debate, model_player, players, protocol
from experiments.configs import default

PER_LEVEL = 256  # questions per level
# Share of H's checks a consistent (or early) liar's supports must pass, per task and level.
MIN_PASS = 0.99
# Tasks whose every non-leaf node has two valid rows, all of which an early liar can lie in (so its
# first dispute is never the last row); union find has one row; shortest path has as many valid
# rows as the node has neighbours (a node with one neighbour has one row).
EARLY_ALWAYS = ("permutation", "assignments", "wildcard")
OPTIONS = ("default", "runlocal")


def _task(name, options):
  return tasks.get(name, **(default.RUNLOCAL[name].task_options if options == "runlocal" else {}))


def _sample(task, key, difficulty):
  """int32[B, Lq]: one question of D per level in difficulty int32[B] (either part of the
  held-out split: ``sample_one`` without the rejection loop, which only costs compile time here)."""
  keys = jax.random.split(key, difficulty.shape[0])
  return jax.vmap(task.sample_one)(keys, difficulty)[0]


@functools.cache
def _checked(name, options):
  """Per level 1..max_difficulty, PER_LEVEL questions: numpy arrays [levels, PER_LEVEL] of the
  claim being false, each style's support passing check_support, its first dispute against the
  honest support not being the last valid row, the node having >= 2 valid rows; and whether every
  answer (of the nodes and of their honest subquestions) lies in the answer vocabulary."""
  task = _task(name, options)
  levels = task.max_difficulty
  vocab = jnp.asarray(players.answer_vocabulary(task))

  @jax.jit
  def run(key):
    difficulty = jnp.repeat(jnp.arange(1, levels + 1), PER_LEVEL)
    q = _sample(task, key, difficulty)
    truth = task.batch_solve(q)
    claims = players.LiarDebater(task).answer(q, jax.random.fold_in(key, 1)).tokens
    honest = players.OracleDebater(task).support(q, truth, key).tokens
    subs, valid, rows = jax.vmap(functools.partial(protocol.subquestions_of, task))(q, honest)
    last = jnp.max(jnp.where(valid, jnp.arange(valid.shape[1]), -1), -1)
    sub_truth = jax.vmap(task.batch_solve)(subs)
    in_vocab = jnp.isin(truth, vocab).all() & (jnp.isin(sub_truth, vocab) | ~valid[..., None]).all()
    out = dict(false=(claims != truth).any(-1), two_rows=valid.sum(-1) >= 2)
    # The old consistent liar: the last valid row := the claim.
    old = rows.at[jnp.arange(q.shape[0]), jnp.maximum(last, 0)].set(claims).reshape(honest.shape)
    out["old/pass"] = jax.vmap(functools.partial(protocol.check_support, task))(q, claims, old)
    for style in ("consistent", "early"):
      support = players.LiarDebater(task, style=style).support(q, claims, key).tokens
      out[f"{style}/pass"] = jax.vmap(functools.partial(protocol.check_support, task))(
          q, claims, support)
      index, agree = jax.vmap(functools.partial(protocol.first_dispute, task))(q, support, honest)
      out[f"{style}/not_last"] = ~agree & (index != last)
    return {k: v.reshape(levels, PER_LEVEL) for k, v in out.items()}, in_vocab

  out, in_vocab = jax.device_get(run(jax.random.key(tasks.names().index(name))))
  return out, bool(in_vocab)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("name", tasks.names())
def test_consistent_and_early_liars_pass_h_check(name, options):
  out, in_vocab = _checked(name, options)
  assert in_vocab  # the search's vocabulary holds every answer solve gives
  assert out["false"].all()  # the claims are lies
  for style in ("consistent", "early"):
    passed = out[f"{style}/pass"].mean(1)  # per level
    assert (passed >= MIN_PASS).all(), (style, passed)


@pytest.mark.parametrize("name", tasks.names())
def test_the_early_liar_lies_above_the_last_row(name):
  """Per task, the share of level >= 1 questions whose first dispute (early liar vs the honest
  support) is not the last valid row: 100% where every node has two rows an early lie can use
  (permutation, assignments, wildcard), 0% in union find (one row), and in shortest path every node
  with two or more neighbour rows (about half of them at the default size); the consistent liar
  disputes the last row wherever a last-row lie exists (permutation, union find, assignments:
  always)."""
  out, _ = _checked(name, "default")
  early, two_rows = out["early/not_last"], out["two_rows"]
  assert not (early & ~two_rows).any()  # a node with one valid row has only its last row
  if name in EARLY_ALWAYS:
    assert early.all()
  elif name == "union_find":
    assert not two_rows.any()
  else:
    assert early[two_rows].mean() >= 0.95
    assert 0.2 <= two_rows.mean() <= 0.8  # not vacuous: both kinds of nodes occur
  if name in ("permutation", "union_find", "assignments"):
    assert not out["consistent/not_last"].any()
  assert out["consistent/not_last"].mean() < early.mean() or name == "union_find"


@pytest.mark.parametrize("name", ["assignments", "wildcard", "shortest_path"])
def test_the_search_is_needed(name):
  """The old consistent liar (last valid row := claim) fails H's check on the same claims where the
  recombination is no pass-through (measured, by level at the default sizes: it passes 6-9% in
  assignments, 3-52% in wildcard, 10-13% in shortest path); the search passes 100% (test above)."""
  out, _ = _checked(name, "default")
  assert out["old/pass"].mean() < 0.6


@pytest.mark.parametrize("name", tasks.names())
def test_an_oracle_beats_every_liar_in_full_debates(name):
  """OracleDebater in one seat, a liar in the assigned other seat, H called in every Amp′, t_max
  covering the full depth (runlocal sizes): the oracle wins every game, and the consistent liar's
  lies go down the tree (debates longer than the root's four arguments). Two rollouts per task
  (compile time): the consistent liar in one seat and the early liar in the other, the seats
  alternating over the tasks, so each liar plays both seats and each task sees both."""
  task = _task(name, "runlocal")
  batch = 96
  config = debate.DebateConfig(t_max=2 + 2 * task.max_difficulty, call_prob=1.0,
                               learned_stop=False, early_exit=False, assign_prob=0.0)
  oracle = players.OracleDebater(task)
  consistent_seat = tasks.names().index(name) % 2
  games = (("consistent", consistent_seat), ("early", 1 - consistent_seat))

  @jax.jit
  def run(questions, key):
    out = {}
    for style, liar_seat in games:
      liar = players.LiarDebater(task, style=style)
      even, odd = (liar, oracle) if liar_seat == 0 else (oracle, liar)
      state, transcript = debate.rollout(
          task, even, odd, questions, jax.random.fold_in(key, liar_seat), config,
          assigned=jnp.full((batch,), liar_seat, jnp.int32), force_contest=False)
      out[style, liar_seat] = (state.winner, state.num_args, state.reason,
                               transcript.claims[:, 0, liar_seat])
    return out

  level = np.arange(batch) % (task.max_difficulty + 1)
  questions = jax.jit(lambda k: _sample(task, k, jnp.asarray(level)))(jax.random.key(1))
  truth = np.asarray(jax.jit(task.batch_solve)(questions))
  leaf = np.asarray(jax.jit(task.batch_is_leaf)(questions))
  for (style, liar_seat), (winner, num_args, reason, claims) in jax.device_get(
      run(questions, jax.random.key(2))).items():
    assert (claims != truth).any(-1).all()  # the liar's root claim is false
    assert (winner == 1 - liar_seat).all(), (style, liar_seat, np.bincount(winner))
    # Caught at a leaf or by H's check, never drawn; at the root the lie is consistent.
    assert np.isin(reason, [debate.LEAF, debate.INCONSISTENT]).all()
    assert not ((reason == debate.INCONSISTENT) & (num_args <= 4)).any()
    assert (num_args[leaf] == 2).all()
    deep = num_args > 4  # supports argued below the root
    if style == "consistent":  # level 2: half of permutation's lies are in a leaf row (k = 3)
      assert deep[level >= 2].mean() >= 0.4 and (reason[deep] == debate.LEAF).any()
    # Inconsistent below the root only where the lie it committed to has no consistent support
    # (shortest path: a claim 1 needs a neighbour at distance 0, a claim 0 below the root).
    if name != "shortest_path":
      assert (reason == debate.LEAF).all()
    else:
      assert (reason == debate.INCONSISTENT).mean() <= 0.1


@functools.cache
def _tiny_model(task):
  config = ModelConfig(vocab_size=task.vocab_size + 3, max_len=model_player.required_max_len(task),
                       num_layers=1, d_model=32, num_heads=2, d_ff=64)
  model = LanguageModel(config)
  return model_player.ModelDebater(model=model, params=model.init(jax.random.key(0)), task=task)


@pytest.mark.parametrize("name", ["shortest_path"])
def test_the_plausible_liar_claims_m_likeliest_wrong_answer(name):
  """With a random-init M: the plausible claim is never the truth, is the argmax of M's answer
  logits among the wrong answers the liar can defend, and its support passes H's check;
  ``likeliest_wrong`` alone is the argmax with only the truth (and non-task tokens) masked."""
  task = tasks.get(name)
  m = _tiny_model(task)
  vocab = players.answer_vocabulary(task)

  @jax.jit
  def run(m, key):
    q = _sample(task, key, jnp.arange(128) % (task.max_difficulty + 1))
    truth = task.batch_solve(q)
    liar = players.LiarDebater(task, claim_model=m)
    claims = liar.answer(q, key).tokens
    support = liar.support(q, claims, key).tokens
    passed = jax.vmap(functools.partial(protocol.check_support, task))(q, claims, support)
    logits = m.model.answer_logits(m.params, model_player.answer_prompts(task, q),
                                   jnp.zeros_like(truth))[:, 0]
    defensible = jax.vmap(functools.partial(players.defensible, task))(q)
    return (q, truth, claims, passed, logits, defensible, task.batch_is_leaf(q),
            m.likeliest_wrong(q, truth))

  q, truth, claims, passed, logits, defensible, leaf, plain = jax.device_get(
      run(m, jax.random.key(3)))
  assert (claims != truth).all() and (plain != truth).all()
  assert np.isin(claims, vocab).all()
  assert passed[~leaf].all() and (~leaf).any()
  for i in range(len(q)):
    if leaf[i]:  # nothing to defend: the likeliest wrong answer of the vocabulary
      allowed = vocab[vocab != truth[i, 0]]
    else:
      allowed = vocab[defensible[i]]
    assert claims[i, 0] == allowed[np.argmax(logits[i, allowed])]
    masked = np.where(np.arange(logits.shape[1]) < task.vocab_size, logits[i], -np.inf)
    masked[truth[i, 0]] = -np.inf
    assert plain[i, 0] == np.argmax(masked)
  # Not vacuous: M's plain argmax is sometimes no answer it could defend.
  assert (plain[:, 0] != claims[:, 0]).any()


def test_liar_options_and_the_old_switch():
  task = tasks.get("permutation")
  assert players.LiarDebater(task).style == "consistent"
  assert players.LiarDebater(task, consistent=True).style == "consistent"
  assert players.LiarDebater(task, consistent=False).style == "inconsistent"
  assert not players.LiarDebater(task, consistent=False).consistent
  assert players.LiarDebater(task, style="early").consistent
  with pytest.raises(ValueError, match="contradicts"):
    players.LiarDebater(task, consistent=False, style="early")
  with pytest.raises(ValueError, match="style"):
    players.LiarDebater(task, style="sneaky")
  with pytest.raises(ValueError, match="claims"):
    players.LiarDebater(task, claims="random")
  # answer_len must be 1 for the search and for M's likeliest wrong answer.
  long = type("LongPermutation", (tasks.Permutation,), {"answer_len": property(lambda s: 2)})()
  with pytest.raises(ValueError, match="answer_len"):
    players.LiarDebater(long)
  m = _tiny_model(long)
  with pytest.raises(ValueError, match="answer_len"):
    m.likeliest_wrong(jnp.zeros((1, long.question_len), jnp.int32), jnp.zeros((1, 2), jnp.int32))


@dataclasses.dataclass(frozen=True)
class LowestWrong:
  """A stand-in ``claim_model``: its "likeliest" wrong answer is the lowest allowed token (claims
  that draw nothing at random)."""

  vocab_size: int

  @property
  def model(self):
    return types.SimpleNamespace(config=types.SimpleNamespace(vocab_size=self.vocab_size))

  def likeliest_wrong(self, nodes, truth, allowed):
    return jnp.argmax(allowed, -1).astype(jnp.int32)[:, None]


def test_liars_play_each_block_as_its_liar_alone():
  """``Liars`` (one search over every row, each row in its own liar's style) against each liar
  alone on its rows: the same supports, the same deterministic claims, and the random claims
  false (defensible ones defensible where any is)."""
  task = tasks.get("permutation")
  stub = LowestWrong(task.vocab_size)
  liars = (players.LiarDebater(task, claim_model=stub),
           players.LiarDebater(task, style="early", claim_model=stub),
           players.LiarDebater(task),  # random defensible claims
           players.LiarDebater(task, style="inconsistent", claim_model=stub),
           players.LiarDebater(task, style="early", claims="any"))
  sizes = (48, 32, 16, 24, 8)
  starts = np.cumsum((0,) + sizes)
  vocab = players.answer_vocabulary(task)

  @jax.jit
  def run(key):
    q = _sample(task, key, jnp.arange(sum(sizes)) % (task.max_difficulty + 1))
    together = players.Liars(liars, sizes)
    claims = together.answer(q, key).tokens
    support = together.support(q, claims, key).tokens
    alone = []
    for b, liar in enumerate(liars):
      rows = slice(starts[b], starts[b + 1])
      alone.append((liar.answer(q[rows], key).tokens, liar.support(q[rows], claims[rows],
                                                                   key).tokens))
    defensible = jax.vmap(functools.partial(players.defensible, task))(q)
    early = slice(starts[1], starts[2])  # the early liar's rows, supported consistently
    other_style = liars[0].support(q[early], claims[early], key).tokens
    return claims, support, alone, task.batch_solve(q), defensible, other_style

  claims, support, alone, truth, defensible, other_style = jax.device_get(run(jax.random.key(7)))
  assert (claims != truth).all()
  for b, (liar_claims, liar_support) in enumerate(alone):
    rows = slice(starts[b], starts[b + 1])
    np.testing.assert_array_equal(support[rows], liar_support)
    if liars[b].claim_model is not None:
      np.testing.assert_array_equal(claims[rows], liar_claims)
    elif liars[b].claims == "defensible":
      can = defensible[rows].any(-1)
      chosen = (vocab[None, :] == claims[rows]) & defensible[rows]
      assert chosen.any(-1)[can].all() and can.any()
  # Not vacuous: the early liar's rows are not supported as the consistent liar would.
  assert (support[starts[1]:starts[2]] != other_style).any()
  with pytest.raises(ValueError, match="LiarDebater"):
    players.Liars((players.OracleDebater(task),), (1,))
  with pytest.raises(ValueError, match="called on 3 games"):
    players.Liars(liars[:1], (2,)).answer(jnp.zeros((3, task.question_len), jnp.int32),
                                          jax.random.key(0))
