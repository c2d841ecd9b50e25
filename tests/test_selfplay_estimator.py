"""The self-play policy gradient on a leaf question, in expectation (issue 28), on a tabular policy.

A leaf is decided by H's answer y: a side wins when its claim is y and the other's is not
(``credit.side_outcomes`` turns the winner into +1 / -1 / 0). The surrogate the step optimises
is Σ outcome·log π(claim) over both sides' recorded claims (log-probs of M's unconditioned
policy, as ``ModelDebater.answer_excluding`` records them). Enumerating every pair of claims gives
its exact expected gradient on the logits, which shows what BUILD_NOTES ("What limits the
estimator") states: both forms point at the truth, with a weight proportional to π(y); at a policy
sure of a wrong answer plain self-play's gradient all but vanishes (both sides say the same wrong
thing: a concession), while contest by construction keeps a gradient about fifty times larger,
because odd's claim is drawn from the rest of the distribution."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from amp_debate.procedure import credit, debate

V, Y = 8, 3  # answers; the true one


def _expected_gradient(logits, distinct: bool) -> np.ndarray:
  """float64[V]: E[Σ_side outcome·∇log π(claim)] over even a ~ π and odd b ~ π (plain) or
  b ~ π(· | · ≠ a) (distinct)."""
  return np.asarray(_jitted_expected_gradient(logits, distinct), np.float64)


@functools.partial(jax.jit, static_argnums=1)  # one program per form (eagerly: ~60 op compiles)
def _jitted_expected_gradient(logits, distinct: bool) -> jax.Array:
  pi = jax.nn.softmax(logits)
  a, b = jnp.meshgrid(jnp.arange(V), jnp.arange(V), indexing="ij")  # [V, V]
  if distinct:
    rest = jnp.where(jnp.eye(V, dtype=bool), 0.0, pi[None, :]).sum(-1)  # 1 - π(a), stably
    p_b = jnp.where(a != b, pi[b] / rest[a], 0.0)
  else:
    p_b = pi[b]
  joint = pi[a] * p_b  # P(a, b)
  winner = jnp.where((a == Y) & (b != Y), 0, jnp.where((b == Y) & (a != Y), 1, debate.DRAW))
  outcomes = credit.side_outcomes(winner.reshape(-1)).reshape(V, V, 2)

  def surrogate(z):
    logp = jax.nn.log_softmax(z)
    weights = jax.lax.stop_gradient(joint[..., None] * outcomes)
    return (weights[..., 0] * logp[a]).sum() + (weights[..., 1] * logp[b]).sum()

  return jax.grad(surrogate)(logits)


def test_both_estimators_point_at_the_truth_from_a_uniform_policy():
  for distinct in (False, True):
    grad = _expected_gradient(jnp.zeros(V), distinct)
    assert grad[Y] > 0 and (np.delete(grad, Y) < 0).all()
    # Weighted by π(y) = 1/8: far below supervised learning's e_y - π (7/8 on the truth).
    assert grad[Y] < 0.5 * (1 - 1 / V)


def test_a_policy_sure_of_a_wrong_answer_keeps_a_gradient_only_with_distinct_claims():
  logits = jnp.zeros(V).at[0].set(jnp.log(0.99 * (V - 1) / 0.01))  # π(0) = 0.99, y = 3
  assert abs(float(jax.nn.softmax(logits)[0]) - 0.99) < 1e-6
  plain = _expected_gradient(logits, distinct=False)
  contest = _expected_gradient(logits, distinct=True)
  assert plain[Y] > 0 and contest[Y] > 0
  assert contest[Y] > 40 * plain[Y]  # 50x: 0.143 against 0.0029
  assert plain[Y] < 0.01  # all but vanished: a concession in 98% of games


def test_from_a_sure_wrong_policy_distinct_claims_escape_an_order_of_magnitude_faster():
  """Following the exact expected gradient (a tabular policy, step size 1) from π(wrong) = 0.99:
  contest by construction puts more than half its mass on the truth within 20 steps, plain
  self-play takes more than 100 (in expectation it escapes too; sampled, with a few decided games
  per batch, its sharp state is all but absorbing, as the three plain seeds of the
  ``selfplay_leaf`` sweep show). From a uniform start the two are close."""
  def steps_to_half(start, distinct):
    z = start
    for step in range(1, 301):
      z = z + _expected_gradient(z, distinct)
      if float(jax.nn.softmax(z)[Y]) > 0.5:
        return step
    return 301
  sure_wrong = jnp.zeros(V).at[0].set(jnp.log(0.99 * (V - 1) / 0.01))
  assert steps_to_half(sure_wrong, True) <= 20
  assert steps_to_half(sure_wrong, False) > 100
  assert abs(steps_to_half(jnp.zeros(V), True) - steps_to_half(jnp.zeros(V), False)) <= 2
