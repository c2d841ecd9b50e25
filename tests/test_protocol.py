"""The debate protocol's prompts and H's checks, exercised by scripted honest and lying debaters."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate import tasks
from amp_debate.procedure import players, protocol
from amp_debate.tasks.tokenizer import PAD, SEP

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
  node, claim = np.asarray(batch.questions[0]), np.asarray(batch.answers[0])
  other = np.asarray(batch.answers[1])
  if (other == claim).all():
    other = np.asarray(batch.answers[0]) + 1  # any other claim will do
  lp = protocol.prompt_len(task)
  assert lp == 3 + task.question_len + 2 * task.answer_len
  h = tasks.protocol_id
  prompts = jax.jit(lambda n, c, o: (
      protocol.answer_prompt(task, n), protocol.support_prompt(task, n, c),
      protocol.stop_prompt(task, n, c, o), protocol.verdict_prompt(task, n, c, o)))(
          node, claim, other)
  expected = {  # header, node and claims, left-padded with PAD
      "ANSWER": (prompts[0], [h("ANSWER"), *node]),
      "SUPPORT": (prompts[1], [h("SUPPORT"), *node, SEP, *claim]),
      "STOP": (prompts[2], [h("STOP"), *node, SEP, *claim, SEP, *other]),
      "VERDICT": (prompts[3], [h("VERDICT"), *node, SEP, *claim, SEP, *other]),
  }
  for header, (prompt, body) in expected.items():
    prompt = np.asarray(prompt)
    assert prompt.shape == (lp,) and prompt.dtype == np.int32, header
    pad = lp - len(body)
    assert (prompt[:pad] == PAD).all(), header
    np.testing.assert_array_equal(prompt[pad:], body, err_msg=header)
  # The longest prompts (STOP, VERDICT) set the length: no padding at all.
  assert np.asarray(expected["STOP"][0])[0] == h("STOP")
  # CHALLENGE and ACCEPT are gone from the protocol (their token ids stay in the vocabulary).
  assert not hasattr(protocol, "CHALLENGE") and not hasattr(protocol, "first_challenge")


def test_honest_support_is_consistent_and_a_false_claim_is_not(task):
  batch = _batch(task)

  @jax.jit
  def run(nodes, truth, key):
    supports = jax.vmap(functools.partial(_oracle_support, task))(nodes)
    false_claims = _wrong(task, truth, key)
    check = jax.vmap(functools.partial(protocol.check_support, task))
    return (task.batch_is_leaf(nodes), false_claims, check(nodes, truth, supports),
            check(nodes, false_claims, supports))

  leaf, false_claims, ok, false_ok = map(np.asarray, run(batch.questions, batch.answers,
                                                         jax.random.key(1)))
  assert leaf.any() and not leaf.all()
  assert ok[~leaf].all() and not ok[leaf].any()
  assert (false_claims != np.asarray(batch.answers)).any(-1).all()
  assert not false_ok.any()


def _dispute_row(task, node, j, key):
  """The honest support against one with every row from j on answered wrongly (so several rows
  differ and "first" is what picks j): (valid of both supports, first_dispute both ways round,
  first_dispute of identical supports, descend at the disputed row, the subquestion rows)."""
  support = _oracle_support(task, node)
  subs, valid, rows = protocol.subquestions_of(task, node, support)
  keys = jax.random.split(key, task.num_subquestions)
  wrong = jax.vmap(lambda row, k: _wrong(task, row, k))(rows, keys)
  later = jnp.arange(task.num_subquestions)[:, None] >= j
  alternative = jnp.where(later, wrong, rows).reshape(-1)
  _, valid_alt, _ = protocol.subquestions_of(task, node, alternative)
  forward = protocol.first_dispute(task, node, support, alternative)
  backward = protocol.first_dispute(task, node, alternative, support)
  _, same = protocol.first_dispute(task, node, support, support)
  descended = protocol.descend(task, node, support, alternative, forward[0])
  return (valid, valid_alt), forward, backward, same, descended, subs[j], rows[j], \
      alternative.reshape(rows.shape)[j]


@functools.cache
def _jitted_dispute_row(task):
  return jax.jit(jax.vmap(functools.partial(_dispute_row, task), in_axes=(0, None, 0)))


def _first_valid_from(valid, j):
  """(index, found) per example: the first i >= j with valid[:, i] (index 0 when there is none)."""
  later = valid & (np.arange(valid.shape[1]) >= j)
  return np.argmax(later, axis=1), later.any(axis=1)


def test_first_dispute_finds_the_first_differing_valid_row(task):
  batch = _batch(task)
  leaf = np.asarray(task.batch_is_leaf(batch.questions))
  run = _jitted_dispute_row(task)
  multi = 0  # examples where more than one valid row differs: "first" decides the answer
  most_posed = 0
  for j in range(task.num_subquestions):
    (valid_all, valid_alt), (index, agree), (index_b, agree_b), same, descended, sub_j, row_j, \
        alt_j = jax.tree.map(np.asarray, run(batch.questions, j,
                                             jax.random.split(jax.random.key(j), BATCH)))
    valid = valid_all[:, j]
    assert same.all()  # identical supports: no dispute
    assert not valid_all[leaf].any()
    assert valid.any(), j
    # Rows before j agree, so row j is posed (valid) alike on both sides.
    np.testing.assert_array_equal(valid_alt[:, j], valid)
    multi += int((valid_all[:, j:].sum(1) > 1).sum())
    most_posed = max(most_posed, int(valid_all.sum(1).max()))
    # The first differing valid row is disputed, whichever side holds which support; differing
    # invalid rows are skipped; with no valid row differing, the supports agree.
    for got, got_agree, posed in ((index, agree, valid_all), (index_b, agree_b, valid_alt)):
      first, found = _first_valid_from(posed, j)
      np.testing.assert_array_equal(got_agree, ~found)
      np.testing.assert_array_equal(got[found], first[found])
    assert (index[valid] == j).all() and (index_b[valid] == j).all()
    # Descent: the disputed subquestion (rows before j agree, so both sides posed it), and each
    # side's own answer there as its new claim.
    node, claim_even, claim_odd = descended
    np.testing.assert_array_equal(node[valid], sub_j[valid])
    np.testing.assert_array_equal(claim_even[valid], row_j[valid])
    np.testing.assert_array_equal(claim_odd[valid], alt_j[valid])
    assert (claim_even[valid] != claim_odd[valid]).any(-1).all()
  assert multi > 0 or most_posed == 1  # (a task whose nodes pose one subquestion at most)


def _debate_step(task, node, claim_even, claim_odd, key):
  """Honest even (true support) vs lying odd (a support with one valid row answered wrongly)."""
  support = _oracle_support(task, node)
  _, valid, rows = protocol.subquestions_of(task, node, support)
  j = jax.random.categorical(key, jnp.where(valid, 0.0, -jnp.inf))
  lie = rows.at[j].set(_wrong(task, rows[j], key)).reshape(-1)
  index, agree = protocol.first_dispute(task, node, support, lie)
  new_node, new_even, new_odd = protocol.descend(task, node, support, lie, index)
  leaf = task.is_leaf(node)  # finished debates stay frozen
  keep = lambda old, new: jnp.where(leaf, old, new)
  return keep(node, new_node), keep(claim_even, new_even), keep(claim_odd, new_odd), agree & ~leaf


def test_honest_side_wins_every_scripted_debate_to_a_leaf(task):
  batch = _batch(task)

  @jax.jit
  def run(node, even, key):
    """Up to max_difficulty + 1 steps; returns per step (agree, even true, odd differs), and the
    final (is_leaf, leaf verdict)."""
    step = jax.vmap(functools.partial(_debate_step, task))

    def one(carry, keys):
      node, even, odd = carry
      node, even, odd, agree = step(node, even, odd, keys)
      return (node, even, odd), (agree, (even == task.batch_solve(node)).all(-1),
                                 (odd != even).any(-1))

    keys = jax.random.split(key, (task.max_difficulty + 1, BATCH))
    (node, even, odd), per_step = jax.lax.scan(one, (node, even, _wrong(task, even, key)), keys)
    verdicts = jax.vmap(functools.partial(protocol.leaf_verdict, task))(node, even, odd)
    return per_step, task.batch_is_leaf(node), verdicts

  per_step, leaf, verdicts = jax.tree.map(np.asarray, run(batch.questions, batch.answers,
                                                          jax.random.key(2)))
  agree, even_true, odd_differs = per_step  # [max_difficulty + 1, BATCH] each
  assert not agree.any()  # a wrong row is always disputed
  assert even_true.all()  # honest claims stay true
  assert odd_differs.all()  # the lie stays a lie
  assert leaf.all()  # descent ends within the difficulty
  assert (verdicts == 0).all()


@pytest.mark.parametrize("name", ["permutation", "union_find"])
def test_a_consistent_liar_loses_at_a_leaf(name):
  """A liar whose support is consistent with its false claim (LiarDebater, consistent=True) passes
  every support check and is caught lower down the tree, at a leaf."""
  task = tasks.get(name)
  depth = task.max_difficulty
  batch = jax.jit(task.sample, static_argnums=1)(jax.random.key(3), 64, difficulty=depth)
  liar, oracle = players.LiarDebater(task, consistent=True), players.OracleDebater(task)

  def step(node, claim_even, key):
    """Lying even vs honest odd on each game, one level down (leaves stay frozen)."""
    lie = liar.support(node, claim_even, key).tokens
    honest = oracle.support(node, task.batch_solve(node), key).tokens
    consistent = jax.vmap(functools.partial(protocol.check_support, task))(node, claim_even, lie)
    index, agree = jax.vmap(functools.partial(protocol.first_dispute, task))(node, lie, honest)
    new = jax.vmap(functools.partial(protocol.descend, task))(node, lie, honest, index)
    leaf = task.batch_is_leaf(node)
    keep = lambda old, new: jnp.where(leaf[:, None], old, new)
    claim_odd = keep(task.batch_solve(node), new[2])
    return keep(node, new[0]), keep(claim_even, new[1]), claim_odd, consistent | leaf, agree & ~leaf

  @jax.jit
  def run(node, key):
    claim_even = liar.answer(node, key).tokens
    per_step = []
    for level in range(depth):  # at most `depth` supports, then a leaf
      node, claim_even, claim_odd, consistent, agree = step(node, claim_even,
                                                            jax.random.fold_in(key, level))
      per_step.append((consistent, agree, (claim_odd == task.batch_solve(node)).all(-1),
                       (claim_even != claim_odd).any(-1)))
    verdicts = jax.vmap(functools.partial(protocol.leaf_verdict, task))(node, claim_even, claim_odd)
    return per_step, task.batch_is_leaf(node), verdicts

  per_step, leaf, verdicts = jax.tree.map(np.asarray, run(batch.questions, jax.random.key(0)))
  for consistent, agree, odd_true, differ in per_step:
    assert consistent.all() and not agree.any()
    assert odd_true.all() and differ.all()
  assert leaf.all()
  assert (verdicts == 1).all()


def test_leaf_verdict_picks_the_side_with_h_answer():
  task = tasks.get("permutation")

  @jax.jit
  def run(key):
    batch = task.sample(key, 32, difficulty=0)
    node, truth = batch.questions, batch.answers
    wrong = _wrong(task, truth, key)
    verdict = jax.vmap(functools.partial(protocol.leaf_verdict, task))
    return [verdict(node, e, o) for e, o in
            [(truth, wrong), (wrong, truth), (wrong, wrong), (truth, truth)]]

  for verdicts, expected in zip(run(jax.random.key(4)), [0, 1, 2, 0]):
    assert (np.asarray(verdicts) == expected).all(), expected


def test_verdict_side_maps_tokens():
  tokens = jnp.asarray([protocol.EVEN, protocol.ODD, protocol.DRAW, protocol.YES, PAD])
  np.testing.assert_array_equal(protocol.verdict_side(tokens), [0, 1, 2, 2, 2])


def test_complete_support_fixes_only_the_rows_the_claim_determines(task):
  """``protocol.complete_support``: the completed support recombines to the claim wherever it
  fixes a row, leaves every other row as it was, leaves an honest support of the truth unchanged,
  and completes nothing at a leaf or on the task whose recombination it cannot invert."""
  batch = _batch(task)

  @jax.jit
  def run(nodes, truth, key):
    honest = jax.vmap(functools.partial(_oracle_support, task))(nodes)
    rows = honest.reshape(nodes.shape[0], task.num_subquestions, task.answer_len)
    keys = jax.random.split(key, 2)
    noisy = jax.vmap(lambda r, k: _wrong(task, r, k))(rows, jax.random.split(keys[0], rows.shape[0]))
    noisy = noisy.reshape(honest.shape)
    claims = _wrong(task, truth, keys[1])
    complete = jax.vmap(functools.partial(protocol.complete_support, task))
    check = jax.vmap(functools.partial(protocol.check_support, task))
    done_true, fixed_true = complete(nodes, truth, honest)
    done_false, fixed_false = complete(nodes, claims, noisy)
    return (honest, noisy, done_true, fixed_true, done_false, fixed_false,
            check(nodes, claims, done_false), task.batch_is_leaf(nodes))

  honest, noisy, done_true, fixed_true, done_false, fixed_false, ok, leaf = map(
      np.asarray, run(batch.questions, batch.answers, jax.random.key(3)))
  np.testing.assert_array_equal(done_true, honest)  # the truth's own rows already recombine
  np.testing.assert_array_equal(done_false[~fixed_false], noisy[~fixed_false])
  fixed_any = fixed_false.any(-1)
  assert ok[fixed_any].all()  # completed: consistent by construction
  assert not fixed_false[leaf].any() and not fixed_true[leaf].any()
  if task.name == "shortest_path":  # 1 + min(rows): no one row is determined
    assert not fixed_false.any()
    return
  # Elsewhere it completes most inner nodes' supports (all but values out of the task's range).
  assert fixed_any[~leaf].mean() > 0.5, fixed_any[~leaf].mean()
  # The fixed tokens are one whole row, the last valid one (union find: its only row).
  per_row = fixed_false.reshape(-1, task.num_subquestions, task.answer_len)
  assert (per_row.all(-1) == per_row.any(-1)).all()
  last = 0 if task.name == "union_find" else 1
  assert (per_row.any(-1).argmax(-1)[fixed_any] == last).all()
