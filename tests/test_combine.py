"""The optax combinations of the per-objective gradients: weighted, constrained, shaped."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from amp_debate.procedure import combine

PARAMS = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(3)}


def _grad(seed):
  """A gradient tree with the params' structure and fixed random values."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), PARAMS)


def _linear(*terms):
  """Σ weight·tree over (weight, tree) pairs, in numpy float64."""
  return jax.tree.map(lambda *gs: sum(w * np.asarray(g, np.float64) for w, g in zip(
      [w for w, _ in terms], gs)), *[t for _, t in terms])


def _assert_close(tree, expected, **tol):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol), tree, expected)


G_RL, G_SUP, G_CAT = _grad(0), _grad(1), _grad(2)
ALL = {"rl": G_RL, "sup": G_SUP, "cat": G_CAT}


# --- weighted ------------------------------------------------------------------------------------


def test_weighted_is_the_weighted_sum():
  tx = combine.weighted({"rl": 0.5, "sup": 2.0, "cat": 0.25})
  out, state = tx.update(ALL, tx.init(PARAMS))
  _assert_close(out, _linear((0.5, G_RL), (2.0, G_SUP), (0.25, G_CAT)), rtol=1e-6)
  assert int(state.count) == 1
  assert {k: float(v) for k, v in combine.weights(state).items()} == {
      "rl": 0.5, "sup": 2.0, "cat": 0.25}


def test_weighted_schedule_changes_the_weight_over_steps():
  tx = combine.weighted({"rl": 1.0, "sup": optax.linear_schedule(1.0, 0.0, 10)})
  update = jax.jit(tx.update)
  state = tx.init(PARAMS)
  applied = []
  for step in range(12):
    out, state = update({"rl": G_RL, "sup": G_SUP}, state)
    applied.append(float(combine.weights(state)["sup"]))
    if step == 5:
      _assert_close(out, _linear((1.0, G_RL), (0.5, G_SUP)), rtol=1e-6)
  assert applied[0] == 1.0 and applied[5] == pytest.approx(0.5) and applied[10:] == [0.0, 0.0]
  jax.tree.map(np.testing.assert_array_equal, out, G_RL)  # λ_sup = 0: exactly g_rl


@pytest.mark.parametrize("steps", [10, 25])  # jitted, these end at -1.5e-8 and +2.2e-8
def test_weighted_schedule_annealed_to_zero_is_exactly_zero(steps):
  tx = combine.weighted({"rl": 1.0, "sup": optax.linear_schedule(1.0, 0.0, steps)})
  state = tx.init(PARAMS)._replace(count=jnp.int32(steps))
  out, state = jax.jit(tx.update)({"rl": G_RL, "sup": G_SUP}, state)
  assert float(combine.weights(state)["sup"]) == 0.0
  jax.tree.map(np.testing.assert_array_equal, out, G_RL)


@pytest.mark.parametrize("bad", [1e30, np.nan])
def test_weighted_zero_weight_contributes_exactly_zero(bad):
  g_sup = jax.tree.map(lambda g: jnp.full_like(g, bad), G_SUP)
  tx = combine.weighted({"rl": 0.3, "sup": 0.0})
  out, _ = tx.update({"rl": G_RL, "sup": g_sup}, tx.init(PARAMS))
  expected = jax.tree.map(lambda g: 0.3 * g, G_RL)
  jax.tree.map(np.testing.assert_array_equal, out, expected)


def test_weighted_missing_keys_count_as_zero_and_unknown_keys_fail():
  tx = combine.weighted({"rl": 2.0, "sup": 1.0, "cat": 1.0})
  out, _ = tx.update({"rl": G_RL}, tx.init(PARAMS))
  _assert_close(out, _linear((2.0, G_RL)), rtol=1e-6)
  with pytest.raises(ValueError, match="kl"):
    tx.update({"rl": G_RL, "kl": G_SUP}, tx.init(PARAMS))


def test_weighted_keeps_the_gradient_dtype():
  grads = jax.tree.map(lambda g: g.astype(jnp.bfloat16), ALL)
  tx = combine.weighted({"rl": 1.0, "sup": 0.1})
  out, _ = tx.update({"rl": grads["rl"], "sup": grads["sup"]}, tx.init(PARAMS))
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(out))


# --- constrained ---------------------------------------------------------------------------------


def _mu_trajectory(tx, sup_losses, grads=None):
  """μ after each update with the given L_sup values."""
  state, mus = tx.init(PARAMS), []
  for sup_loss in sup_losses:
    _, state = tx.update(grads or ALL, state, losses={"sup": jnp.float32(sup_loss)})
    mus.append(float(combine.multiplier(state)))
  return mus


def test_multiplier_rises_while_violated_then_decays_to_exactly_zero():
  tx = combine.constrained(limit=1.0, multiplier_lr=0.1)
  mus = _mu_trajectory(tx, [2.0] * 3 + [0.5] * 10)
  np.testing.assert_allclose(mus[:3], [0.1, 0.2, 0.3], rtol=1e-6)
  assert mus[3] == pytest.approx(0.25)
  assert all(a > b for a, b in zip(mus[3:8], mus[4:9]))  # decays 0.25, 0.2, ..., 0.0
  assert mus[-1] == 0.0 and min(mus) >= 0.0


def test_multiplier_is_clamped_at_max():
  tx = combine.constrained(limit=0.0, multiplier_lr=1.0, max_multiplier=2.5)
  assert _mu_trajectory(tx, [1.0] * 4) == [1.0, 2.0, 2.5, 2.5]


def test_zero_limit_gives_finite_values():
  tx = combine.constrained(limit=0.0, multiplier_lr=0.5, project=True)
  state = tx.init(PARAMS)
  for sup_loss in [0.0, 2.0, 0.0]:
    out, state = tx.update(ALL, state, losses={"sup": jnp.float32(sup_loss)})
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves((out, state)))
  assert float(combine.multiplier(state)) == 1.0  # 0 → 0 → 1.0 → 1.0 (L_sup = limit)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_sup_loss_leaves_the_multiplier_unchanged(bad):
  tx = combine.constrained(limit=1.0, multiplier_lr=0.1, init_multiplier=0.7)
  mus = _mu_trajectory(tx, [bad, 2.0])
  assert mus[0] == pytest.approx(0.7) and mus[1] == pytest.approx(0.8)


def test_gradient_uses_the_multiplier_before_its_update():
  tx = combine.constrained(limit=1.0, multiplier_lr=0.1, cat_weight=0.5, init_multiplier=0.4)
  out, state = tx.update(ALL, tx.init(PARAMS), losses={"sup": 3.0})
  _assert_close(out, _linear((1.0, G_RL), (0.5, G_CAT), (0.4, G_SUP)), rtol=1e-6)
  assert float(combine.weights(state)["sup"]) == pytest.approx(0.4)  # applied
  assert float(combine.multiplier(state)) == pytest.approx(0.6)  # next: 0.4 + 0.1·(3 − 1)
  out, _ = tx.update(ALL, state, losses={"sup": 3.0})
  _assert_close(out, _linear((1.0, G_RL), (0.5, G_CAT), (0.6, G_SUP)), rtol=1e-6)


def test_zero_multiplier_contributes_exactly_zero():
  g_sup = jax.tree.map(lambda g: jnp.full_like(g, np.nan), G_SUP)
  tx = combine.constrained(limit=1.0, multiplier_lr=0.1)
  out, _ = tx.update({"rl": G_RL, "sup": g_sup}, tx.init(PARAMS), losses={"sup": 0.0})
  jax.tree.map(np.testing.assert_array_equal, out, G_RL)


def test_constrained_needs_the_sup_loss():
  tx = combine.constrained(limit=1.0, multiplier_lr=0.1)
  with pytest.raises(ValueError, match="losses=.*'sup'"):
    tx.update(ALL, tx.init(PARAMS))
  with pytest.raises(ValueError, match="'sup'"):
    tx.update(ALL, tx.init(PARAMS), losses={"rl": 1.0})


@pytest.mark.parametrize("violated, g_rl, expected", [
    (True, [-1.0, 1.0], [0.0, 1.0]),  # descent along −g_rl raises L_sup: that part is removed
    (False, [-1.0, 1.0], [-1.0, 1.0]),  # constraint met: no projection
    (True, [1.0, 1.0], [1.0, 1.0]),  # −g_rl already lowers L_sup
])
def test_cpo_projection(violated, g_rl, expected):
  tx = combine.constrained(limit=1.0, multiplier_lr=0.1, project=True)
  grads = {"rl": jnp.array(g_rl), "sup": jnp.array([2.0, 0.0])}
  out, _ = tx.update(grads, tx.init(jnp.zeros(2)), losses={"sup": 2.0 if violated else 0.5})
  np.testing.assert_allclose(out, expected, atol=1e-7)
  unprojected = combine.constrained(limit=1.0, multiplier_lr=0.1)
  out, _ = unprojected.update(grads, unprojected.init(jnp.zeros(2)), losses={"sup": 2.0})
  np.testing.assert_allclose(out, g_rl)


def _toy_trajectory(project):
  """x and μ over 3000 steps of min (x − 3)² s.t. x² ≤ 1 under chain(constrained, clip, sgd)."""
  tx = combine.chain(combine.constrained(limit=1.0, multiplier_lr=0.05, project=project),
                     clip_norm=10.0, optimizer=optax.sgd(0.05))

  def step(carry, _):
    x, state = carry
    grads = {"rl": 2 * (x - 3), "sup": 2 * x}
    updates, state = tx.update(grads, state, x, losses={"sup": x ** 2})
    x = optax.apply_updates(x, updates)
    return (x, state), (x, combine.multiplier(state))

  x0 = jnp.float32(0.0)
  _, (xs, mus) = jax.lax.scan(step, (x0, tx.init(x0)), length=3000)
  return np.asarray(xs), np.asarray(mus)


def test_constrained_reaches_the_constrained_optimum():
  """x* = 1, μ* = 2 (2(x − 3) + 2μx = 0 at x = 1); tolerances 0.01 on x, 0.02 on μ."""
  xs, mus = _toy_trajectory(project=False)
  assert xs[-1] == pytest.approx(1.0, abs=0.01) and mus[-1] == pytest.approx(2.0, abs=0.02)
  assert xs[0] == pytest.approx(0.3)  # the first step is pure RL: μ starts at 0


def test_projected_constrained_stays_at_the_boundary():
  """With the projection (1-D: g_rl is dropped while x > 1) x chatters around x* = 1."""
  xs, _ = _toy_trajectory(project=True)
  assert xs[-500:].mean() == pytest.approx(1.0, abs=0.01)
  assert np.abs(xs[-500:] - 1.0).max() < 0.1


# --- shaped --------------------------------------------------------------------------------------


def test_shaped_ignores_the_supervised_gradient():
  tx = combine.shaped(cat_weight=0.5)
  out, state = tx.update(ALL, tx.init(PARAMS), losses={"sup": 1.0})
  _assert_close(out, _linear((1.0, G_RL), (0.5, G_CAT)), rtol=1e-6)
  assert set(combine.weights(state)) == {"rl", "cat"}
  out, _ = tx.update({"sup": G_SUP}, tx.init(PARAMS))
  jax.tree.map(lambda leaf: np.testing.assert_array_equal(leaf, 0.0), out)


def test_shape_rewards_subtracts_beta_sup_where_masked():
  rewards = jnp.array([[1.0, -1.0, 1.0], [0.0, 1.0, 1.0]])
  sup = jnp.array([[0.5, 2.0, np.nan], [1.0, 0.0, np.inf]])
  mask = jnp.array([[True, True, False], [True, True, False]])
  shaped = combine.shape_rewards(rewards, sup, 0.1, mask)
  np.testing.assert_allclose(shaped, [[0.95, -1.2, 0.0], [-0.1, 1.0, 0.0]], rtol=1e-6)
  grad = jax.grad(lambda s: combine.shape_rewards(rewards, s, 0.1, mask).sum())(sup)
  np.testing.assert_array_equal(grad, 0.0)  # L_sup is a reward: no gradient through it


# --- make ----------------------------------------------------------------------------------------


def test_make_builds_each_kind():
  for kind, options in [("weighted", {"weights": {"rl": 1.0}}),
                        ("constrained", {"limit": 0.0, "multiplier_lr": 0.1}),
                        ("shaped", {})]:
    tx = combine.make(kind, **options)
    _, state = tx.update({"rl": G_RL}, tx.init(PARAMS), losses={"sup": 0.0})
    assert int(combine.find_state(state).count) == 1


@pytest.mark.parametrize("kind, options, match", [
    ("hybrid", {}, "unknown combination kind 'hybrid'"),
    ("weighted", {"weights": {"rl": 1.0}, "lr": 1.0}, r"unknown option\(s\) \['lr'\]"),
    ("constrained", {"limit": 1.0}, r"missing required option\(s\) \['multiplier_lr'\]"),
    ("weighted", {"weights": {"rl": 1.0, "sup": -0.5}}, "combine.weights.sup must be >= 0.0, got -0.5"),
    ("weighted", {"weights": {}}, "combine.weights must name at least one objective"),
    ("weighted", {"weights": {"rl": "high"}}, "combine.weights.rl must be a finite number, got 'high'"),
    ("constrained", {"limit": -1.0, "multiplier_lr": 0.1}, "combine.limit must be >= 0.0, got -1.0"),
    ("constrained", {"limit": np.inf, "multiplier_lr": 0.1}, "combine.limit must be a finite number"),
    ("constrained", {"limit": 1.0, "multiplier_lr": 0.0}, "combine.multiplier_lr must be > 0.0"),
    ("constrained", {"limit": 1.0, "multiplier_lr": 0.1, "max_multiplier": np.inf},
     "combine.max_multiplier must be a finite number"),
    ("constrained", {"limit": 1.0, "multiplier_lr": 0.1, "init_multiplier": -1.0},
     "combine.init_multiplier must be >= 0.0"),
    ("constrained", {"limit": 1.0, "multiplier_lr": 0.1, "init_multiplier": 5.0,
                     "max_multiplier": 1.0},
     r"combine.init_multiplier must be <= max_multiplier \(1.0\), got 5.0"),
    ("constrained", {"limit": 1.0, "multiplier_lr": 0.1, "cat_weight": -1.0}, "combine.cat_weight must be >="),
    ("shaped", {"rl_weight": -1.0}, "combine.rl_weight must be >="),
])
def test_make_rejects_bad_kinds_and_options(kind, options, match):
  with pytest.raises(ValueError, match=match):
    combine.make(kind, **options)


# --- chain, jit, checkpointing, logging ----------------------------------------------------------


def _chained():
  return combine.chain(combine.constrained(limit=0.5, multiplier_lr=0.1), clip_norm=1.0,
                       optimizer=optax.adam(1e-2))


def test_chain_forwards_losses_and_clips():
  tx = _chained()
  state = tx.init(PARAMS)
  big = jax.tree.map(lambda g: 100.0 * g, ALL)
  updates, state = tx.update(big, state, PARAMS, losses={"sup": 2.5})
  assert float(combine.multiplier(state)) == pytest.approx(0.2)  # losses reached the combination
  assert float(optax.tree_utils.tree_norm(updates)) < 1.0  # adam after clipping: bounded steps
  with pytest.raises(ValueError, match="'sup'"):
    tx.update(big, state, PARAMS)
  with pytest.raises(ValueError, match="clip_norm"):
    combine.chain(combine.shaped(), clip_norm=0.0, optimizer=optax.sgd(0.1))


def test_chain_update_jits_and_the_state_round_trips_through_numpy():
  tx = _chained()
  update = jax.jit(tx.update)

  def run(state, params, steps, start):
    for i in range(start, start + steps):
      updates, state = update(ALL, state, params, losses={"sup": jnp.float32(1.0 + 0.1 * i)})
      params = optax.apply_updates(params, updates)
    return state, params

  state, params = run(tx.init(PARAMS), PARAMS, 3, 0)
  saved = jax.tree_util.tree_map(np.asarray, state)
  assert jax.tree.structure(saved) == jax.tree.structure(state)
  restored = jax.tree_util.tree_map(jnp.asarray, saved)
  continued, params_a = run(state, params, 2, 3)
  resumed, params_b = run(restored, params, 2, 3)
  jax.tree.map(np.testing.assert_array_equal, (continued, params_a), (resumed, params_b))
  assert float(combine.multiplier(saved)) == pytest.approx(0.1 * (0.5 + 0.6 + 0.7))
  assert set(combine.metrics(resumed)) == {"weight/rl", "weight/sup", "weight/cat", "multiplier"}


def test_reading_the_state_fails_clearly():
  with pytest.raises(ValueError, match="not 'constrained'"):
    combine.multiplier(combine.shaped().init(PARAMS))
  with pytest.raises(ValueError, match="found 0"):
    combine.weights(optax.adam(1e-3).init(PARAMS))


# --- hyperparameters as data ---------------------------------------------------------------------


@pytest.mark.parametrize("start, end, steps", [(1.0, 0.0, 10), (1.0, 0.0, 25), (0.3, 0.7, 4)])
def test_linear_weight_follows_optax_linear_schedule_and_anneals_to_exactly_zero(start, end, steps):
  schedule = optax.linear_schedule(start, end, steps)
  data = combine.weighted({"sup": combine.Linear(start, end, steps)})
  compiled = combine.weighted({"sup": schedule})
  update_data, update_compiled = jax.jit(data.update), jax.jit(compiled.update)
  state_data, state_compiled = data.init(PARAMS), compiled.init(PARAMS)
  for _ in range(steps + 3):
    _, state_data = update_data({"sup": G_SUP}, state_data)
    _, state_compiled = update_compiled({"sup": G_SUP}, state_compiled)
    np.testing.assert_allclose(combine.weights(state_data)["sup"],
                               combine.weights(state_compiled)["sup"], rtol=1e-6, atol=1e-7)
  assert combine.weights(state_data)["sup"] == np.float32(end)  # 0.0 exactly when annealed to 0


def test_constant_and_linear_weights_live_in_the_state():
  state = combine.weighted({"rl": 0.5, "sup": combine.Linear(1.0, 0.0, 10),
                            "cat": optax.constant_schedule(2.0)}).init(PARAMS)
  assert set(state.schedules) == {"rl", "sup"}  # the callable stays compiled in
  assert state.schedules["rl"] == (0.5, 0.5, 0) and state.schedules["sup"] == (1.0, 0.0, 10)
  assert [x.dtype for x in state.schedules["sup"]] == [jnp.float32, jnp.float32, jnp.int32]


def _counted(update):
  """jax.jit(update) and a list that grows by one each time jit traces it (compiles)."""
  traces = []

  def counted(*args, **kwargs):
    traces.append(1)
    return update(*args, **kwargs)

  return jax.jit(counted), traces


@pytest.mark.parametrize("lam", [[0.0, 0.5, 2.0]])
def test_a_weight_sweep_compiles_the_update_once_and_matches_constant_weights(lam):
  tx = combine.weighted({"rl": 1.0, "sup": 1.0})
  update, traces = _counted(tx.update)
  outs = []
  for value in lam:
    state = combine.set_hparams(tx.init(PARAMS), weights={"sup": value})
    assert float(combine.weights(state)["sup"]) == value
    out, state = update({"rl": G_RL, "sup": G_SUP}, state)
    assert float(combine.weights(state)["sup"]) == value
    # The former path: λ a Python constant compiled into the program (one compile per value).
    old = combine.weighted({"rl": lambda count: 1.0, "sup": lambda count, v=value: v})
    expected, _ = jax.jit(old.update)({"rl": G_RL, "sup": G_SUP}, old.init(PARAMS))
    _assert_close(out, expected, rtol=1e-6)
    outs.append(out)
  assert len(traces) == 1 and update._cache_size() == 1
  assert not np.allclose(outs[0]["w"], outs[1]["w"]) and not np.allclose(outs[1]["w"], outs[2]["w"])


def test_constrained_hyperparameters_are_data():
  """limit, multiplier_lr and max_multiplier set by set_hparams behave as if given to
  ``constrained``, through one compiled update."""
  update, traces = _counted(combine.constrained(limit=0.0, multiplier_lr=1.0).update)
  base = combine.constrained(limit=0.0, multiplier_lr=1.0).init(PARAMS)
  for limit, lr, top in [(0.5, 0.1, 100.0), (1.0, 0.3, 100.0), (0.0, 2.0, 0.5)]:
    state = combine.set_hparams(base, limit=limit, multiplier_lr=lr, max_multiplier=top)
    reference_tx = combine.constrained(limit=limit, multiplier_lr=lr, max_multiplier=top)
    reference = reference_tx.init(PARAMS)
    for sup in (2.5, 1.2, 0.1):
      out, state = update(ALL, state, losses={"sup": jnp.float32(sup)})
      expected, reference = jax.jit(reference_tx.update)(ALL, reference,
                                                         losses={"sup": jnp.float32(sup)})
      _assert_close(out, expected, rtol=1e-6)
      np.testing.assert_allclose(state.multiplier, reference.multiplier, rtol=1e-6)
  assert float(state.multiplier) == 0.5  # clamped at the new max_multiplier
  assert len(traces) == 1


def test_set_hparams_refuses_what_is_not_data():
  weighted = combine.chain(combine.weighted({"rl": 1.0, "sup": optax.constant_schedule(1.0)}),
                           clip_norm=None, optimizer=optax.sgd(0.1)).init(PARAMS)
  with pytest.raises(ValueError, match="'sup' is not data"):
    combine.set_hparams(weighted, weights={"sup": 0.5})
  with pytest.raises(ValueError, match="'cat' is not data"):
    combine.set_hparams(weighted, weights={"cat": 0.5})
  with pytest.raises(ValueError, match="has no option 'beta'"):
    combine.set_hparams(weighted, beta=0.5)
  with pytest.raises(ValueError, match="has no option 'limit'"):
    combine.set_hparams(combine.shaped().init(PARAMS), limit=0.5)
  with pytest.raises(ValueError, match="combine.weights.rl must be >= 0.0, got -1.0"):
    combine.set_hparams(weighted, weights={"rl": -1.0})
  with pytest.raises(ValueError, match="combine.beta must be >= 0.0, got -1.0"):
    combine.set_hparams(combine.shaped().init(PARAMS), beta=-1.0)
  chained = combine.set_hparams(weighted, weights={"rl": combine.Linear(2.0, 0.0, 5)})
  assert jax.tree.structure(chained) == jax.tree.structure(weighted)
  assert float(combine.weights(chained)["rl"]) == 2.0
  shaped = combine.set_hparams(combine.shaped(beta=0.5).init(PARAMS), beta=2.0)
  assert float(combine.beta(shaped)) == 2.0
  with pytest.raises(ValueError, match="not 'shaped'"):
    combine.beta(weighted)


def test_hyperparameters_vmap_over_settings():
  """A batch of settings (arrays, unchecked) runs as one vmapped update."""
  tx = combine.weighted({"rl": 1.0, "sup": 1.0})
  lams = jnp.array([0.0, 0.5, 2.0])
  states = jax.vmap(lambda lam: combine.set_hparams(tx.init(PARAMS), weights={"sup": lam}))(lams)
  outs, _ = jax.vmap(lambda s: tx.update({"rl": G_RL, "sup": G_SUP}, s))(states)
  for i, lam in enumerate(lams):
    _assert_close(jax.tree.map(lambda x: x[i], outs),
                  _linear((1.0, G_RL), (float(lam), G_SUP)), rtol=1e-6)
