"""Losses: advantages, PPO/REINFORCE, distillation, catastrophe penalty; target net."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate.procedure import losses
from amp_debate.procedure.target import update_target

B, T, LA = 3, 4, 2


def _batch(seed=0):
  """Random logp/logp_old [B, T, LA], token_mask with some padding, turn_mask with a finished game."""
  rng = np.random.default_rng(seed)
  logp = jnp.asarray(-rng.uniform(0.1, 3.0, (B, T, LA)), jnp.float32)
  token_mask = jnp.ones((B, T, LA), bool).at[:, :, 1].set(jnp.asarray(rng.random((B, T)) < 0.5))
  turn_mask = jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
  return logp, token_mask, turn_mask


# ---- rewards and advantages ---------------------------------------------------------------------
def test_advantages_arithmetic():
  rewards = jnp.asarray([[1.0, -1.0, 1.0, 5.0]], jnp.float32)  # the 5 is on a masked turn
  turn_mask = jnp.asarray([[1, 1, 1, 0]], bool)
  np.testing.assert_array_equal(losses.advantages(rewards, turn_mask, "none"), [[1, -1, 1, 0]])
  mean = 1 / 3
  np.testing.assert_allclose(losses.advantages(rewards, turn_mask, "baseline"),
                             [[1 - mean, -1 - mean, 1 - mean, 0]], rtol=1e-6)
  centred = np.asarray([1 - mean, -1 - mean, 1 - mean])
  expected = centred / np.sqrt(np.mean(centred**2))
  normalized = losses.advantages(rewards, turn_mask, "normalize")
  np.testing.assert_allclose(normalized, [[*expected, 0]], rtol=1e-5)
  valid = normalized[turn_mask]
  np.testing.assert_allclose([valid.mean(), valid.std()], [0, 1], atol=1e-6)


@pytest.mark.parametrize("rewards, turns", [([[1.0, 0, 0]], [[1, 0, 0]]),  # one valid turn
                                            ([[0.3, 0.3, 0.3]], [[1, 1, 1]]),  # zero variance
                                            ([[1.0, 1.0, 1.0]], [[0, 0, 0]])])  # none valid
def test_normalize_is_finite_without_variance(rewards, turns):
  adv = losses.advantages(jnp.asarray(rewards, jnp.float32), jnp.asarray(turns, bool), "normalize")
  np.testing.assert_allclose(adv, np.zeros_like(adv), atol=1e-6)


def test_advantages_unknown_kind():
  with pytest.raises(ValueError, match="kind"):
    losses.advantages(jnp.zeros((1, 2)), jnp.ones((1, 2), bool), "gae")


# ---- policy gradient ----------------------------------------------------------------------------
def _pg(logp, logp_old, token_mask, turn_mask, adv, eps=0.2):
  return losses.policy_gradient_loss(logp, logp_old, token_mask, turn_mask, adv, eps)


def test_rloo_advantages_leave_the_game_out_per_question_and_seat():
  """Each side's advantage is its outcome minus the mean of the same seat's outcomes in the other
  debates of its question, spread over its arguments with tokens; they sum to 0 per group and
  seat, and a question whose debates all end alike gives none."""
  outcomes = np.array([[1, -1], [1, -1], [-1, 1], [0, 0],   # question 0: G = 4 debates
                       [1, -1], [1, -1], [1, -1], [1, -1]], np.float32)  # question 1: all alike
  has = np.ones((8, 2, 3), bool)
  has[0, 0, 2] = False  # even's first game: two arguments with tokens
  has[3, 1] = False     # odd's fourth game: none
  adv = np.asarray(losses.rloo_advantages(jnp.asarray(outcomes), jnp.asarray(has), 4))
  grouped = outcomes.reshape(2, 4, 2)
  loo = (grouped.sum(1, keepdims=True) - grouped) / 3
  side = (grouped - loo).reshape(8, 2)
  np.testing.assert_allclose(adv[0, 0], [side[0, 0] / 2, side[0, 0] / 2, 0.0], rtol=1e-6)
  np.testing.assert_allclose(adv[1, 0], [side[1, 0] / 3] * 3, rtol=1e-6)
  assert side[0, 0] == pytest.approx(1 - (1 - 1 + 0) / 3)
  assert (adv[3, 1] == 0).all()
  np.testing.assert_allclose(adv[4:], 0.0)
  np.testing.assert_allclose((side.reshape(2, 4, 2)).sum(1), 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="group_size"):
    losses.rloo_advantages(jnp.asarray(outcomes), jnp.asarray(has), 3)
  with pytest.raises(ValueError, match="rloo_advantages"):
    losses.advantages(jnp.zeros((2, 2)), jnp.ones((2, 2), bool), "rloo")


def test_pg_gradient_is_reinforce_when_ratios_are_one():
  logp, token_mask, turn_mask = _batch()
  adv = jnp.asarray(np.random.default_rng(1).normal(size=(B, T)), jnp.float32)
  grad = jax.grad(lambda lp: _pg(lp, logp, token_mask, turn_mask, adv)[0])(logp)
  mask = token_mask & turn_mask[..., None]
  expected = -jnp.where(mask, adv[..., None], 0.0) / mask.sum()
  np.testing.assert_allclose(grad, expected, rtol=1e-6)
  _, metrics = _pg(logp, logp, token_mask, turn_mask, adv)
  np.testing.assert_allclose([metrics["ratio_mean"], metrics["approx_kl"],
                              metrics["clip_fraction"]], [1, 0, 0], atol=1e-7)


def test_pg_token_weights_make_a_weighted_mean():
  """With weights (credit.token_weights: 1 / tokens of the argument) the gradient on each token is
  -w·A / Σw: an argument counts once whatever its length."""
  logp, token_mask, turn_mask = _batch()
  adv = jnp.asarray(np.random.default_rng(2).normal(size=(B, T)), jnp.float32)
  mask = token_mask & turn_mask[..., None]
  weights = jnp.where(mask, 1.0 / jnp.maximum(mask.sum(-1, keepdims=True), 1), 0.0)
  loss_fn = lambda lp: losses.policy_gradient_loss(lp, logp, token_mask, turn_mask, adv, 0.2,
                                                   token_weights=weights)[0]
  grad = jax.grad(loss_fn)(logp)
  expected = -jnp.where(mask, weights * adv[..., None], 0.0) / weights.sum()
  np.testing.assert_allclose(grad, expected, rtol=1e-6)
  assert weights.sum() == turn_mask.sum()  # one unit of weight per argument


def test_pg_gradient_through_linear_policy_is_reinforce():
  """A tiny softmax policy logits = x @ W: ∇_W of the loss equals ∇_W of -mean(A logp)."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(B, T, LA, 5)), jnp.float32)
  tokens = jnp.asarray(rng.integers(0, 7, (B, T, LA)))
  w = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)
  _, token_mask, turn_mask = _batch()
  adv = jnp.asarray(rng.normal(size=(B, T)), jnp.float32)
  mask = token_mask & turn_mask[..., None]

  def logp_fn(w):
    logits = jax.nn.log_softmax(x @ w)
    return jnp.take_along_axis(logits, tokens[..., None], -1)[..., 0]

  logp_old = logp_fn(w)
  grad = jax.grad(lambda w: _pg(logp_fn(w), logp_old, token_mask, turn_mask, adv)[0])(w)
  reinforce = jax.grad(lambda w: -jnp.sum(jnp.where(mask, adv[..., None] * logp_fn(w), 0))
                       / mask.sum())(w)
  np.testing.assert_allclose(grad, reinforce, rtol=1e-5, atol=1e-7)
  assert np.abs(grad).max() > 1e-3


def test_pg_clipping_zeroes_gradient_outside_band():
  # One token per case: (log ratio, advantage) -> is the gradient zero?
  cases = [(np.log(1.5), 1.0, True),   # r > 1+eps, A > 0: clipped
           (np.log(0.5), -1.0, True),  # r < 1-eps, A < 0: clipped
           (np.log(1.5), -1.0, False),  # r > 1+eps, A < 0: unclipped (pessimistic side)
           (np.log(0.5), 1.0, False),  # r < 1-eps, A > 0: unclipped
           (np.log(1.1), 1.0, False)]  # inside the band
  n = len(cases)
  log_ratio = jnp.asarray([[[c[0]] for c in cases]], jnp.float32)  # [1, n, 1]
  adv = jnp.asarray([[c[1] for c in cases]], jnp.float32)
  logp_old = jnp.full((1, n, 1), -1.0, jnp.float32)
  token_mask, turn_mask = jnp.ones((1, n, 1), bool), jnp.ones((1, n), bool)
  loss_fn = lambda lp: _pg(lp, logp_old, token_mask, turn_mask, adv)[0]
  grad = jax.grad(loss_fn)(logp_old + log_ratio)[0, :, 0]
  for g, (lr, a, clipped) in zip(grad, cases):
    if clipped:
      assert g == 0.0
    else:
      np.testing.assert_allclose(g, -a * np.exp(lr) / n, rtol=1e-5)
  _, metrics = _pg(logp_old + log_ratio, logp_old, token_mask, turn_mask, adv)
  np.testing.assert_allclose(metrics["clip_fraction"], 4 / 5)


def test_pg_masked_turns_contribute_nothing():
  logp, token_mask, turn_mask = _batch()
  logp_old = logp - 0.05
  adv = jnp.ones((B, T), jnp.float32)
  # Garbage on masked turns (frozen games) and padding tokens must not leak.
  mask = token_mask & turn_mask[..., None]
  dirty = jnp.where(mask, logp, jnp.nan)
  dirty_old = jnp.where(mask, logp_old, -jnp.inf)
  dirty_adv = jnp.where(turn_mask, adv, jnp.inf)
  loss_fn = lambda lp, lpo, a: _pg(lp, lpo, token_mask, turn_mask, a)[0]
  clean_loss, clean_grad = jax.value_and_grad(loss_fn)(logp, logp_old, adv)
  loss, grad = jax.value_and_grad(loss_fn)(dirty, dirty_old, dirty_adv)
  np.testing.assert_allclose(loss, clean_loss, rtol=1e-6)
  np.testing.assert_allclose(grad, clean_grad, rtol=1e-6)
  assert np.all(np.asarray(grad)[~np.asarray(mask)] == 0)
  assert np.all(np.asarray(grad)[np.asarray(mask)] != 0)


def test_pg_all_masked_is_exactly_zero():
  logp, token_mask, _ = _batch()
  turn_mask = jnp.zeros((B, T), bool)
  adv = jnp.ones((B, T), jnp.float32)
  (loss, metrics), grad = jax.value_and_grad(
      lambda lp: _pg(lp, jnp.full_like(lp, -jnp.inf), token_mask, turn_mask, adv), has_aux=True)(
          jnp.full_like(logp, jnp.nan))
  assert loss == 0.0 and loss.dtype == jnp.float32
  assert np.all(np.asarray(grad) == 0)
  assert all(np.isfinite(v) for v in metrics.values())


def test_pg_jits_with_traced_clip_eps():
  logp, token_mask, turn_mask = _batch()
  fn = jax.jit(losses.policy_gradient_loss)
  loss, _ = fn(logp, logp - 0.5, token_mask, turn_mask, jnp.ones((B, T), jnp.float32),
               jnp.float32(0.2))
  # every ratio is e^0.5 > 1.2 with A = 1: clipped to 1.2.
  np.testing.assert_allclose(loss, -1.2, rtol=1e-6)
  with pytest.raises(ValueError, match="clip_eps"):
    losses.policy_gradient_loss(logp, logp, token_mask, turn_mask, jnp.ones((B, T)), 0.0)


# ---- distillation -------------------------------------------------------------------------------
def test_distillation_is_masked_cross_entropy():
  logp = jnp.log(jnp.asarray([[0.5, 0.25], [0.1, 0.9]], jnp.float32))
  mask = jnp.asarray([[1, 1], [0, 1]], bool)
  expected = -(np.log(0.5) + np.log(0.25) + np.log(0.9)) / 3
  np.testing.assert_allclose(losses.distillation_loss(logp, mask), expected, rtol=1e-6)
  grad = jax.grad(losses.distillation_loss)(logp, mask)
  np.testing.assert_allclose(grad, -np.asarray(mask, np.float32) / 3)


def test_distillation_all_masked_is_zero():
  logp = jnp.full((4, 2), -jnp.inf, jnp.float32)
  mask = jnp.zeros((4, 2), bool)
  loss, grad = jax.value_and_grad(losses.distillation_loss)(logp, mask)
  assert loss == 0.0 and loss.dtype == jnp.float32
  assert np.all(np.asarray(grad) == 0)


# ---- catastrophe --------------------------------------------------------------------------------
def _catastrophe(predicate, logp, logp_old, token_mask, turn_mask):
  """The wiring: predicate on (question, argument) -> flags -> probability -> loss."""
  rng = np.random.default_rng(3)
  questions = jnp.asarray(rng.integers(0, 9, (B, T, 5)), jnp.int32)
  arguments = jnp.asarray(rng.integers(0, 9, (B, T, LA)), jnp.int32)
  flags = losses.catastrophe_flags(predicate, questions, arguments, turn_mask)
  p = losses.catastrophe_probability(logp, logp_old, token_mask, turn_mask, flags)
  return losses.catastrophe_loss(p, turn_mask), flags, arguments


def test_catastrophe_zero_with_never_firing_predicate():
  logp, token_mask, turn_mask = _batch()
  loss_fn = lambda lp: _catastrophe(losses.never_catastrophic, lp, logp, token_mask, turn_mask)[0]
  loss, grad = jax.value_and_grad(loss_fn)(logp)
  assert loss == 0.0 and np.all(np.asarray(grad) == 0)


def test_catastrophe_penalises_flagged_arguments():
  logp, token_mask, turn_mask = _batch()
  fires = lambda question, argument: argument[0] >= 4  # a predicate that fires on some arguments
  loss_fn = lambda lp: _catastrophe(fires, lp, logp, token_mask, turn_mask)[0]
  loss, grad = jax.value_and_grad(loss_fn)(logp)
  _, flags, arguments = _catastrophe(fires, logp, logp, token_mask, turn_mask)
  flags = np.asarray(flags)
  assert flags.any() and not flags.all()
  np.testing.assert_array_equal(flags, (np.asarray(arguments)[..., 0] >= 4) & np.asarray(turn_mask))
  # At M = M_target each flagged argument has estimated probability 1: loss = flagged / valid turns.
  n_valid = np.asarray(turn_mask).sum()
  np.testing.assert_allclose(loss, flags.sum() / n_valid, rtol=1e-6)
  # Descent lowers logp of the flagged arguments' tokens and nothing else.
  expected = np.where(flags[..., None] & np.asarray(token_mask), 1 / n_valid, 0.0)
  np.testing.assert_allclose(grad, expected, rtol=1e-6)
  # Lowering M's probability of a flagged argument lowers the penalty.
  lowered = logp - 0.5 * flags[..., None]
  assert loss_fn(lowered) < loss


# ---- target network -----------------------------------------------------------------------------
def _trees():
  params = {"w": jnp.full((2, 3), 2.0), "b": jnp.full((3,), 4.0, jnp.bfloat16)}
  target = {"w": jnp.zeros((2, 3)), "b": jnp.zeros((3,), jnp.bfloat16)}
  return params, target


@pytest.mark.parametrize("step, copied", [(0, True), (1, False), (2, False), (3, True), (6, True)])
def test_target_period_copies_every_period_steps(step, copied):
  params, target = _trees()
  update = jax.jit(functools.partial(update_target, period=3))
  new = update(params, target, jnp.int32(step))
  expected = params if copied else target
  for key in params:
    np.testing.assert_array_equal(new[key], expected[key])
    assert new[key].dtype == target[key].dtype


def test_target_ema_is_polyak_average():
  params, target = _trees()
  new = jax.jit(functools.partial(update_target, ema=0.75))(params, target, 5)
  np.testing.assert_allclose(new["w"], 0.25 * 2.0)
  np.testing.assert_allclose(np.asarray(new["b"], np.float32), 0.25 * 4.0)
  assert new["b"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(update_target(params, target, 5, ema=0.0)["w"], params["w"])


@pytest.mark.parametrize("kwargs, match", [({}, "exactly one"),
                                           ({"period": 2, "ema": 0.9}, "exactly one"),
                                           ({"period": 0}, "period"),
                                           ({"period": 1.5}, "period"),
                                           ({"ema": 1.0}, "ema"),
                                           ({"ema": -0.1}, "ema")])
def test_target_bad_options(kwargs, match):
  params, target = _trees()
  with pytest.raises(ValueError, match=match):
    update_target(params, target, 0, **kwargs)


def test_entropy_bonus_is_the_weighted_mean_entropy_over_valid_tokens():
  vocab = 5
  logits = jnp.zeros((2, 3, vocab), jnp.float32).at[1, 0].set(jnp.array([50.0, 0, 0, 0, 0]))
  token_mask = jnp.array([[True, True, False], [True, True, True]])
  turn_mask = jnp.array([True, True])
  got = losses.entropy_bonus(logits, token_mask, turn_mask)
  # Four uniform positions (entropy log 5) and one near one-hot (entropy ~0), over 5 tokens.
  np.testing.assert_allclose(float(got), 4 * np.log(vocab) / 5, rtol=1e-4)
  # A masked row contributes nothing, whatever its logits hold (NaN included).
  nan_row = logits.at[0].set(jnp.nan)
  only_second = losses.entropy_bonus(nan_row, token_mask, jnp.array([False, True]))
  np.testing.assert_allclose(float(only_second), 2 * np.log(vocab) / 3, rtol=1e-4)
  # Its gradient raises the entropy: a sharp distribution flattens.
  peaked = logits.at[1, 0, 0].set(2.0)
  grad = jax.grad(lambda l: losses.entropy_bonus(l, token_mask, turn_mask))(peaked)
  assert float(grad[1, 0, 0]) < 0 < float(grad[1, 0, 1])  # the dominant logit goes down


def test_anchor_kl_is_the_weighted_mean_kl_to_the_reference_and_pulls_toward_it():
  vocab = 4
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 3, vocab)), jnp.float32)
  ref = jnp.asarray(rng.normal(size=(2, 3, vocab)), jnp.float32)
  token_mask = jnp.array([[True, False, True], [True, True, False]])
  turn_mask = jnp.array([True, True])
  weights = jnp.array([[0.5, 0.0, 0.5], [1.0, 2.0, 0.0]], jnp.float32)
  p = jax.nn.softmax(logits / 2.0, -1)
  q = jax.nn.softmax(ref / 2.0, -1)
  kl = np.asarray((p * (jnp.log(p) - jnp.log(q))).sum(-1))
  w = np.where(np.asarray(token_mask), np.asarray(weights), 0.0)
  got = losses.anchor_kl(logits, ref, token_mask, turn_mask, 2.0, token_weights=weights)
  np.testing.assert_allclose(float(got), (w * kl).sum() / w.sum(), rtol=1e-5)
  # Zero at the reference; a masked row counts for nothing, whatever it holds.
  assert abs(float(losses.anchor_kl(ref, ref, token_mask, turn_mask))) < 1e-6
  only_first = losses.anchor_kl(logits.at[1].set(jnp.nan), ref, token_mask,
                                jnp.array([True, False]))
  assert np.isfinite(float(only_first))
  # Descent on it moves M's distributions toward the reference's; the reference gets no gradient.
  g_logits, g_ref = jax.grad(losses.anchor_kl, argnums=(0, 1))(logits, ref, token_mask, turn_mask)
  assert not np.asarray(g_ref).any()
  moved = logits - 1.0 * g_logits
  assert float(losses.anchor_kl(moved, ref, token_mask, turn_mask)) < float(
      losses.anchor_kl(logits, ref, token_mask, turn_mask))
