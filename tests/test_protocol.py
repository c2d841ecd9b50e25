"""The debate protocol's prompts and H's checks, exercised by scripted honest and lying debaters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate import tasks
from amp_debate.procedure import players, protocol
from amp_debate.tasks.tokenizer import PAD

BATCH = 256


@pytest.fixture(params=tasks.names(), scope="module")
def task(request):
  return tasks.get(request.param)


_oracle_support = players.oracle_support
_wrong = players.wrong_answer


@functools.cache
def _batch(task):
  return jax.jit(task.sample, static_argnums=1)(jax.random.key(0), BATCH)


def test_prompts_are_left_padded_to_one_length(task):
  batch = _batch(task)
  node, claim = batch.questions[0], batch.answers[0]
  support = _oracle_support(task, node)
  prompts = [protocol.answer_prompt(task, node), protocol.counter_prompt(task, node, claim),
             protocol.support_prompt(task, node, claim),
             protocol.challenge_prompt(task, node, claim, support),
             protocol.stop_prompt(task, node, claim, claim),
             protocol.verdict_prompt(task, node, claim, claim)]
  headers = ["ANSWER", "ANSWER", "SUPPORT", "CHALLENGE", "STOP", "VERDICT"]
  for prompt, header in zip(prompts, headers):
    prompt = np.asarray(prompt)
    assert prompt.shape == (protocol.prompt_len(task),)
    first = np.flatnonzero(prompt != PAD)[0]
    assert prompt[first] == tasks.protocol_id(header)
    np.testing.assert_array_equal(prompt[first + 1 : first + 1 + task.question_len], node)
  challenge = np.asarray(prompts[3])
  assert (challenge != PAD).argmax() == 0 or challenge[0] == tasks.protocol_id("CHALLENGE")


def test_honest_support_is_consistent_and_a_false_claim_is_not(task):
  batch = _batch(task)
  nodes = batch.questions
  supports = jax.vmap(functools.partial(_oracle_support, task))(nodes)
  leaf = np.asarray(task.batch_is_leaf(nodes))
  check = jax.jit(jax.vmap(functools.partial(protocol.check_support, task)))
  ok = np.asarray(check(nodes, batch.answers, supports))
  assert ok[~leaf].all() and not ok[leaf].any()
  false_claims = jax.vmap(functools.partial(_wrong, task))(
      batch.answers, jax.random.split(jax.random.key(1), BATCH))
  assert not np.asarray(check(nodes, false_claims, supports)).any()


def _challenge_row(task, node, j, key):
  """(valid[j], first_challenge of the honest support against one with row j changed, accepted
  for identical supports)."""
  support = _oracle_support(task, node)
  _, valid, rows = protocol.subquestions_of(task, node, support)
  alternative = rows.at[j].set(_wrong(task, rows[j], key)).reshape(-1)
  index, accepted = protocol.first_challenge(task, node, support, alternative)
  _, same = protocol.first_challenge(task, node, support, support)
  return valid[j], index, accepted, same


def test_first_challenge_finds_the_first_differing_valid_row(task):
  batch = _batch(task)
  leaf = np.asarray(task.batch_is_leaf(batch.questions))
  run = jax.jit(jax.vmap(functools.partial(_challenge_row, task), in_axes=(0, None, 0)))
  for j in range(task.num_subquestions):
    valid, index, accepted, same = map(np.asarray, run(
        batch.questions, j, jax.random.split(jax.random.key(j), BATCH)))
    assert same.all()  # identical supports: the challenger accepts
    assert (index[valid] == j).all() and not accepted[valid].any()
    assert accepted[~valid].all() if j == 0 else True
    assert not valid[leaf].any()


def _debate_step(task, node, claim_even, claim_odd, key):
  """Honest even (true support) vs lying odd (challenges one valid row with a wrong answer)."""
  support = _oracle_support(task, node)
  _, valid, rows = protocol.subquestions_of(task, node, support)
  logits = jnp.where(valid, 0.0, -jnp.inf)
  j = jax.random.categorical(key, logits)
  lie = rows.at[j].set(_wrong(task, rows[j], key)).reshape(-1)
  index, accepted = protocol.first_challenge(task, node, support, lie)
  new_node, new_even, new_odd = protocol.descend(task, node, support, lie, index)
  leaf = task.is_leaf(node)
  keep = lambda old, new: jnp.where(leaf, old, new)
  return keep(node, new_node), keep(claim_even, new_even), keep(claim_odd, new_odd), accepted & ~leaf


def test_honest_side_wins_every_scripted_debate_to_a_leaf(task):
  batch = _batch(task)
  keys = jax.random.split(jax.random.key(2), BATCH)
  node, even = batch.questions, batch.answers
  odd = jax.vmap(functools.partial(_wrong, task))(even, keys)
  step = jax.jit(jax.vmap(functools.partial(_debate_step, task)))
  for depth in range(task.max_difficulty + 1):
    node, even, odd, accepted = step(node, even, odd, jax.random.split(keys[depth], BATCH))
    assert not np.asarray(accepted).any()  # the liar always has a row to challenge
    np.testing.assert_array_equal(even, task.batch_solve(node))  # honest claims stay true
  assert np.asarray(task.batch_is_leaf(node)).all()  # descent ends within the difficulty
  verdicts = jax.vmap(functools.partial(protocol.leaf_verdict, task))(node, even, odd)
  assert (np.asarray(verdicts) == 0).all()


def _liar_step(task, node, claim_even):
  """Lying even (consistent support for its false claim) vs honest odd, one level down."""
  honest = _oracle_support(task, node)
  lie = honest.at[task.answer_len:].set(claim_even)  # recombine(σ^k) = second row: consistent
  consistent = protocol.check_support(task, node, claim_even, lie)
  index, accepted = protocol.first_challenge(task, node, lie, honest)
  new_node, new_even, new_odd = protocol.descend(task, node, lie, honest, index)
  leaf = task.is_leaf(node)  # finished debates stay frozen
  keep = lambda old, new: jnp.where(leaf, old, new)
  claim_odd = jnp.where(leaf, task.solve(node), new_odd)
  return keep(node, new_node), keep(claim_even, new_even), claim_odd, consistent | leaf, accepted & ~leaf


def test_consistent_liar_loses_at_a_leaf_permutation():
  """A liar whose support is consistent with its false claim is caught lower down the tree."""
  task = tasks.get("permutation")
  batch = jax.jit(task.sample, static_argnums=1)(jax.random.key(3), 64, difficulty=3)
  node = batch.questions
  claim_even = jax.vmap(functools.partial(_wrong, task))(
      batch.answers, jax.random.split(jax.random.key(0), 64))
  step = jax.jit(jax.vmap(functools.partial(_liar_step, task)))
  for _ in range(3):  # difficulty 3: at most three supports, then a leaf
    node, claim_even, claim_odd, consistent, accepted = step(node, claim_even)
    assert np.asarray(consistent).all() and not np.asarray(accepted).any()
    np.testing.assert_array_equal(claim_odd, task.batch_solve(node))
  assert np.asarray(task.batch_is_leaf(node)).all()
  verdicts = jax.vmap(functools.partial(protocol.leaf_verdict, task))(node, claim_even, claim_odd)
  assert (np.asarray(verdicts) == 1).all()


def test_verdict_side_maps_tokens():
  tokens = jnp.asarray([protocol.EVEN, protocol.ODD, protocol.DRAW, protocol.YES, PAD])
  np.testing.assert_array_equal(protocol.verdict_side(tokens), [0, 1, 2, 2, 2])
