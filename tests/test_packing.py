"""procedure.packing: real rows first, per game; a sum over only the chunks that hold one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate.procedure import losses, packing


def _rows(seed=0, games=5, slots=7, length=3):
  rng = np.random.default_rng(seed)
  active = rng.random((games, slots)) < 0.4
  active[0] = False  # a game with no rows
  active[1, -1] = True  # ... and one whose last slot is real
  mask = active[..., None] & (rng.random((games, slots, length)) < 0.7)
  mask[..., 0] |= active  # an active row has a token
  tree = {"x": jnp.asarray(rng.normal(size=(games, slots, length)), jnp.float32),
          "mask": jnp.asarray(mask), "id": jnp.arange(games * slots).reshape(games, slots)}
  return tree, jnp.asarray(active)


def test_active_first_keeps_each_games_rows_and_their_order():
  tree, active = _rows()
  out, out_active = packing.active_first(tree, active)
  for b in range(active.shape[0]):
    real = np.asarray(tree["id"][b])[np.asarray(active[b])]
    k = len(real)
    np.testing.assert_array_equal(np.asarray(out["id"][b, :k]), real)
    assert np.asarray(out_active[b, :k]).all() and not np.asarray(out_active[b, k:]).any()
    assert sorted(np.asarray(out["id"][b]).tolist()) == np.asarray(tree["id"][b]).tolist()


@pytest.mark.parametrize("width", [1, 2, 3, 7, 10])
def test_chunks_visited_are_only_those_holding_a_real_row(width):
  tree, active = _rows()
  sorted_tree, sorted_active = packing.active_first(tree, active)
  most = int(np.asarray(active).sum(1).max())
  expected = 1 if width >= active.shape[1] else -(-most // width)
  visits = jax.jit(lambda t, a: packing.chunked_sum(lambda c: jnp.ones((), jnp.int32), t, a,
                                                    width))(sorted_tree, sorted_active)
  assert int(visits) == expected
  # No real row anywhere: no chunk is scored at all (unless one chunk is the whole).
  none = jnp.zeros_like(active)
  assert int(packing.chunked_sum(lambda c: jnp.ones((), jnp.int32), tree, none, width)) == (
      1 if width >= active.shape[1] else 0)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_a_chunked_ratio_of_sums_and_its_gradient_equal_the_whole(width):
  """The distillation loss (a mean over masked tokens) over all rows equals Σ over chunks of the
  chunk's loss times its share of the token count, and so does the gradient."""
  tree, active = _rows(seed=1)
  total = tree["mask"].sum()

  def loss(scale, rows):
    logp = -jnp.square(rows["x"] * scale).reshape(-1, rows["x"].shape[-1])
    mask = rows["mask"].reshape(logp.shape)
    return losses.distillation_loss(logp, mask) * packing.weight_of(mask.sum(), total)

  whole = jax.value_and_grad(loss)(1.5, tree)
  sorted_tree, sorted_active = packing.active_first(tree, active)
  chunked = packing.chunked_sum(lambda c: jax.value_and_grad(loss)(1.5, c), sorted_tree,
                                sorted_active, width)
  np.testing.assert_allclose(chunked, whole, rtol=1e-6)
  assert float(whole[0]) > 0


def test_weight_of_an_empty_total_is_zero():
  assert float(packing.weight_of(jnp.asarray(0), jnp.asarray(0))) == 0.0
  assert float(packing.weight_of(jnp.asarray(3.0), jnp.asarray(4.0))) == 0.75
  with pytest.raises(ValueError, match="width must be >= 1"):
    packing.chunked_sum(lambda c: 0, {"x": jnp.zeros((2, 3))}, jnp.zeros((2, 3), bool), 0)


def test_pooled_rows_pack_across_games_within_each_pool():
  """``pooled`` lays consecutive games' rows side by side: after ``active_first`` the trip count
  follows the fullest pool's total of real rows, not the fullest game's, and the chunked ratio of
  sums still equals the whole."""
  tree, active = _rows(seed=2, games=6, slots=5)
  pooled_tree, pooled_active = packing.pooled(tree, active, 2)
  assert pooled_active.shape == (2, 15)
  np.testing.assert_array_equal(np.asarray(pooled_tree["id"][1]), np.arange(15, 30))
  sorted_tree, sorted_active = packing.active_first(pooled_tree, pooled_active)
  width = 3  # one slot per game of a pool of 3
  per_pool = np.asarray(active).reshape(2, -1).sum(1)
  visits = packing.chunked_sum(lambda c: jnp.ones((), jnp.int32), sorted_tree, sorted_active,
                               width)
  assert int(visits) == -(-int(per_pool.max()) // width)
  total = tree["mask"].sum()
  loss = lambda rows: losses.distillation_loss(
      -jnp.square(rows["x"]).reshape(-1, 3), rows["mask"].reshape(-1, 3)) * packing.weight_of(
          rows["mask"].sum(), total)
  np.testing.assert_allclose(packing.chunked_sum(loss, sorted_tree, sorted_active, width),
                             loss(tree), rtol=1e-6)
  with pytest.raises(ValueError, match="groups must be >= 1 and divide the 6 games"):
    packing.pooled(tree, active, 4)


def test_merge_duplicates_counts_each_set_of_identical_active_rows_once():
  """Against a dictionary over each pool's rows: the first active row of each set of identical
  rows carries the set's size, its repeats and inactive rows 0; a row differing in one column
  is its own set."""
  rng = np.random.default_rng(3)
  pools, n = 3, 40
  prompts = rng.integers(0, 2, size=(pools, n, 3))  # few distinct values: many duplicates
  tokens = rng.integers(0, 2, size=(pools, n, 2))
  mask = rng.random((pools, n, 2)) < 0.8
  active = mask.any(-1) & (rng.random((pools, n)) < 0.9)
  counts = np.asarray(jax.jit(packing.merge_duplicates)(
      [jnp.asarray(prompts), jnp.asarray(tokens), jnp.asarray(mask)], jnp.asarray(active)))
  for p in range(pools):
    seen = {}
    for i in range(n):
      if active[p, i]:
        key = (tuple(prompts[p, i]), tuple(tokens[p, i]), tuple(mask[p, i]))
        seen.setdefault(key, []).append(i)
    expected = np.zeros(n, np.int64)
    for slots in seen.values():
      expected[slots[0]] = len(slots)
    np.testing.assert_array_equal(counts[p], expected)
    assert counts[p].sum() == active[p].sum()
  assert (counts > 1).any() and (counts == 1).any()  # the draw had both kinds of set


def test_merged_rows_with_their_counts_give_the_same_distillation_loss_and_gradient():
  """Scoring each distinct row once, weighted by its multiplicity, equals scoring every row."""
  rng = np.random.default_rng(4)
  n, length = 30, 4
  base = rng.integers(0, 3, size=(n, 1))  # row identity
  tokens = jnp.asarray(np.repeat(base, length, axis=1))
  mask = jnp.asarray(np.broadcast_to(rng.random((3, length)) < 0.7, (3, length))[base[:, 0]]
                     | (np.arange(length) == 0))
  active = jnp.ones((1, n), bool)
  counts = jax.jit(packing.merge_duplicates)([tokens[None], mask[None]], active)[0]
  assert int((counts > 0).sum()) == 3

  def logp(scale, toks):
    return -jnp.square(scale * (toks.astype(jnp.float32) + 1.0))

  def every_row(scale):
    return losses.distillation_loss(logp(scale, tokens), mask)

  def merged(scale):
    return losses.distillation_loss(logp(scale, tokens), mask & (counts > 0)[:, None],
                                    counts.astype(jnp.float32))

  # Each side one jitted program (eagerly, every op compiles on its own).
  np.testing.assert_allclose(jax.jit(merged)(0.7), jax.jit(every_row)(0.7), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(jax.grad(merged))(0.7), jax.jit(jax.grad(every_row))(0.7),
                             rtol=1e-6)
