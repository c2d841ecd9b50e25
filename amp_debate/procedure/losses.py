"""Losses on a recorded batch of debates and amplified targets: RL, distillation, catastrophe.

Layout of a recorded batch: rows of sampled arguments with any leading shape [...] (the step uses
``procedure.credit``'s [B, R, 2, K]: game, node, side, row kind) and L tokens per row:
  logp        float32[..., L]  M's log-probs of the recorded tokens (current params, teacher forced,
                               at the sampling temperature).
  logp_old    float32[..., L]  M_target's log-probs of the same tokens, recorded at sampling time
                               (the tokens were sampled from M_target). Never differentiated.
  token_mask  bool[..., L]     real sampled tokens (False on padding and on tokens H produced).
  turn_mask   bool[...]        rows that exist (their game was running). Finished games are frozen:
                               masked rows contribute zero loss and zero gradient, whatever garbage
                               (inf, NaN) their entries hold.
Distillation targets are flattened over questions: N = every question posed during the debates
that has a target, ``logp_targets`` float32[N, L], ``mask`` bool[N, L].

Every loss is a float32 scalar: a mean over the valid entries, exactly 0 with zero gradient when
there are none (masked entries are replaced by 0 *before* any arithmetic, so neither the value nor
the gradient can pick up NaN from them). All functions are pure and jittable; string options
(``kind``) are static.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
import optax

from amp_debate import checks

ADVANTAGE_KINDS = ("none", "normalize", "baseline", "rloo")
# The rules of the static options (``StepConfig`` applies them to its fields on construction).
ADVANTAGE_KIND = checks.choice(*ADVANTAGE_KINDS)
CLIP_EPS = checks.number(0.0, lo_open=True)

# (question int32[Lq], argument int32[L]) -> bool[]
CatastrophePredicate = Callable[[jax.Array, jax.Array], jax.Array]


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """float32[]: mean of x over mask (same shapes); 0 when mask is empty."""
  total = jnp.sum(jnp.where(mask, x, 0.0))
  return (total / jnp.maximum(jnp.sum(mask), 1)).astype(jnp.float32)


def _check_turns(turn_mask: jax.Array, *arrays: jax.Array) -> None:
  chex.assert_type(turn_mask, jnp.bool_)
  for array in arrays:
    chex.assert_shape(array, turn_mask.shape)


def _check_tokens(turn_mask: jax.Array, token_mask: jax.Array, *logps: jax.Array) -> None:
  _check_turns(turn_mask)
  chex.assert_type(token_mask, jnp.bool_)
  chex.assert_shape(token_mask, turn_mask.shape + token_mask.shape[-1:])
  chex.assert_equal_shape([token_mask, *logps])
  chex.assert_type(logps, jnp.float32)


# ---- debate reward ------------------------------------------------------------------------------
def advantages(rewards: jax.Array, turn_mask: jax.Array, kind: str) -> jax.Array:
  """float32[...]: per-argument advantages from per-argument rewards; 0 on masked entries.

  Statistics are taken over all valid arguments of the batch (every game, both sides).

  Args:
    rewards: float32[...] (the step passes [B, 2, A]: game, side, argument).
    turn_mask: bool[...] the same shape: arguments that exist.
    kind: (static)
      "none": the raw rewards.
      "normalize": (r - mean) / std over valid turns. With zero variance (e.g. one valid turn) the
        centred rewards are returned unscaled, so the result is finite (0 for one valid turn).
      "baseline": r - mean over valid turns, a constant baseline. With zero-sum rewards per game
        (``credit.argument_rewards``) the mean is 0 only when every side has as many arguments;
        it includes each argument's own reward, a bias of O(1/#arguments).
  """
  _check_turns(turn_mask, rewards)
  chex.assert_type(rewards, jnp.float32)
  checks.check("advantages", "kind", kind, ADVANTAGE_KIND)
  if kind == "rloo":
    raise ValueError("advantages: kind 'rloo' needs the games grouped by question: use "
                     "rloo_advantages")
  rewards = jnp.where(turn_mask, rewards, 0.0)
  if kind == "none":
    return rewards
  centred = jnp.where(turn_mask, rewards - _masked_mean(rewards, turn_mask), 0.0)
  if kind == "baseline":
    return centred
  std = jnp.sqrt(_masked_mean(jnp.square(centred), turn_mask))
  scale = jnp.where(std > 1e-6, 1.0 / jnp.maximum(std, 1e-6), 1.0)
  return (centred * scale).astype(jnp.float32)


def rloo_advantages(outcomes: jax.Array, has_tokens: jax.Array, group_size: int) -> jax.Array:
  """Leave-one-out advantages per question and seat (as in RLOO): the B games come in B / G
  groups of G consecutive debates of one question; a side's advantage is its game outcome minus
  the mean outcome of the same seat in the group's other G - 1 games, spread evenly over its
  arguments with tokens (like ``credit.argument_rewards``). Unlike a batch baseline, the baseline
  never includes the game's own outcome (unbiased), and a question every debate of which ends the
  same way gives no gradient at all (nothing to learn there), whatever the rest of the batch did.

  Args:
    outcomes: float32[B, 2] each side's outcome (+1 won, -1 lost, 0 draw).
    has_tokens: bool[B, 2, A] the arguments that carry sampled tokens.
    group_size: G (static, >= 2, divides B).
  Returns:
    float32[B, 2, A]; 0 where an argument has no tokens.
  """
  chex.assert_rank([outcomes, has_tokens], [2, 3])
  chex.assert_shape(outcomes, has_tokens.shape[:2])
  b = outcomes.shape[0]
  if group_size < 2 or b % group_size:
    raise ValueError(f"rloo_advantages: group_size must be >= 2 and divide the batch ({b}), got "
                     f"{group_size}")
  grouped = outcomes.astype(jnp.float32).reshape(b // group_size, group_size, 2)
  others = (grouped.sum(1, keepdims=True) - grouped) / (group_size - 1)
  side = (grouped - others).reshape(b, 2)
  count = has_tokens.sum(-1, keepdims=True)
  return jnp.where(has_tokens, side[..., None] / jnp.maximum(count, 1), 0.0).astype(jnp.float32)


# ---- RL on the debaters' arguments --------------------------------------------------------------
def policy_gradient_loss(logp: jax.Array, logp_old: jax.Array, token_mask: jax.Array,
                         turn_mask: jax.Array, advantages: jax.Array, clip_eps: float | jax.Array,
                         token_weights: jax.Array | None = None
                         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PPO clipped surrogate over argument tokens sampled from M_target.

  loss = -Σ w·min(r·A, clip(r, 1-ε, 1+ε)·A) / Σ w over valid tokens, with the per-token importance
  ratio r = exp(logp - logp_old), A the advantage of the token's row and w its weight (default 1:
  a mean over tokens; ``credit.token_weights`` makes it a mean over arguments). At r = 1 the
  gradient is the REINFORCE gradient. ``logp_old``, ``advantages`` and the weights are not
  differentiated.

  Args:
    logp, logp_old: float32[..., L]; token_mask bool[..., L]; turn_mask bool[...].
    advantages: float32[...], one per row (see ``advantages``).
    clip_eps: ε > 0 (float or traced scalar).
    token_weights: float32[..., L] >= 0 or None.
  Returns:
    (loss float32[], metrics) with metrics float32[]: "clip_fraction" (tokens with |r - 1| > ε),
    "approx_kl" (mean of (r - 1) - log r, an estimate of KL(M_target ‖ M) on these samples),
    "ratio_mean"; all over valid tokens (0 when there are none).
  """
  _check_tokens(turn_mask, token_mask, logp, logp_old)
  _check_turns(turn_mask, advantages)
  chex.assert_type(advantages, jnp.float32)
  if isinstance(clip_eps, (int, float)):  # a traced ε is the caller's to check
    checks.check("policy_gradient_loss", "clip_eps", clip_eps, CLIP_EPS)
  mask = token_mask & turn_mask[..., None]
  weights = jnp.ones(mask.shape, jnp.float32) if token_weights is None else token_weights
  chex.assert_equal_shape([weights, mask])
  weights = jnp.where(mask, jax.lax.stop_gradient(weights), 0.0)
  logp = jnp.where(mask, logp, 0.0)
  logp_old = jnp.where(mask, jax.lax.stop_gradient(logp_old), 0.0)
  adv = jnp.where(turn_mask, jax.lax.stop_gradient(advantages), 0.0)[..., None]
  log_ratio = logp - logp_old
  ratio = jnp.exp(log_ratio)
  surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
  loss = -(jnp.sum(weights * surrogate) / jnp.maximum(jnp.sum(weights), 1e-9)).astype(jnp.float32)
  ratio, log_ratio = jax.lax.stop_gradient((ratio, log_ratio))
  metrics = {
      "clip_fraction": _masked_mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32), mask),
      "approx_kl": _masked_mean(ratio - 1.0 - log_ratio, mask),
      "ratio_mean": _masked_mean(ratio, mask),
  }
  return loss, metrics


def _weighted_token_mean(values: jax.Array, logits: jax.Array, token_mask: jax.Array,
                         turn_mask: jax.Array, token_weights: jax.Array | None) -> jax.Array:
  """float32[]: Σ w·v / Σ w over the valid tokens of per-token ``values`` float32[..., L]
  (computed from ``logits`` [..., L, V]); masked tokens count for nothing, whatever they hold.
  The weights (default 1) are not differentiated."""
  chex.assert_rank(logits, token_mask.ndim + 1)
  _check_tokens(turn_mask, token_mask)
  mask = token_mask & turn_mask[..., None]
  weights = jnp.ones(mask.shape, jnp.float32) if token_weights is None else token_weights
  weights = jnp.where(mask, jax.lax.stop_gradient(weights), 0.0)
  values = jnp.where(mask, values, 0.0)
  return (jnp.sum(weights * values) / jnp.maximum(jnp.sum(weights), 1e-9)).astype(jnp.float32)


def entropy_bonus(logits: jax.Array, token_mask: jax.Array, turn_mask: jax.Array,
                  temperature: float | jax.Array = 1.0,
                  token_weights: jax.Array | None = None) -> jax.Array:
  """float32[]: the mean entropy of M's next-token distributions at the sampled positions.

  Subtracted (times a coefficient) from the policy loss, it keeps self-play from collapsing onto
  one deterministic answer: there both sides say the same thing, every game is a draw and the
  policy gradient vanishes.

  Args:
    logits: float32[..., L, V] M's logits at the argument positions (teacher forced).
    token_mask: bool[..., L]; turn_mask: bool[...]; token_weights: float32[..., L] or None, as in
      ``policy_gradient_loss`` (the same weighted mean).
    temperature: the sampling temperature the distributions are taken at.
  Returns:
    Σ w·H / Σ w over valid tokens; 0 when there are none.
  """
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  return _weighted_token_mean(-(jnp.exp(log_p) * log_p).sum(-1), logits, token_mask, turn_mask,
                              token_weights)


def anchor_kl(logits: jax.Array, ref_logits: jax.Array, token_mask: jax.Array,
              turn_mask: jax.Array, temperature: float | jax.Array = 1.0,
              token_weights: jax.Array | None = None) -> jax.Array:
  """float32[]: the mean KL(π_M ‖ π_ref) of the next-token distributions at the sampled positions.

  Added (times a coefficient) to the policy loss, it anchors M to a reference policy (the KL
  anchor of DESIGN.md section 3: a collapsed self-play policy is pulled back toward one that
  still spreads its claims). The reference is not differentiated.

  Args:
    logits, ref_logits: float32[..., L, V] M's and the reference's logits at the argument
      positions (teacher forced).
    token_mask, turn_mask, token_weights, temperature: as in ``entropy_bonus``.
  Returns:
    Σ w·KL / Σ w over valid tokens; 0 when there are none.
  """
  chex.assert_equal_shape([logits, ref_logits])
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  log_q = jax.nn.log_softmax(jax.lax.stop_gradient(ref_logits).astype(jnp.float32) / temperature,
                             axis=-1)
  kl = optax.losses.kl_divergence_with_log_targets(log_q, log_p)  # Σ p (log p − log q): KL(p ‖ q)
  return _weighted_token_mean(kl, logits, token_mask, turn_mask, token_weights)


# ---- distillation toward Amp′(H, M_target) ------------------------------------------------------
def distillation_loss(logp_targets: jax.Array, mask: jax.Array,
                      row_weights: jax.Array | None = None) -> jax.Array:
  """float32[]: cross-entropy of M on the Amp′(H, M_target) answer tokens.

  Args:
    logp_targets: float32[N, L] M's log-probs of the target tokens, for the N protocol questions
      with a target (``credit.distill_rows``).
    mask: bool[N, L] target tokens that count.
    row_weights: optional float32[N]: each row counted this many times (identical rows merged into
      one, ``packing.merge_duplicates``); None is 1 for every row.
  Returns:
    mean of -logp over masked-in tokens (each row's tokens counted row_weights times); exactly 0
    (zero gradient) when nothing is masked in.
  """
  chex.assert_rank(logp_targets, 2)
  chex.assert_equal_shape([logp_targets, mask])
  chex.assert_type([logp_targets, mask], [jnp.float32, jnp.bool_])
  if row_weights is None:
    return _masked_mean(-jnp.where(mask, logp_targets, 0.0), mask)
  chex.assert_shape(row_weights, mask.shape[:1])
  w = jnp.where(mask, row_weights.astype(jnp.float32)[:, None], 0.0)
  total = jnp.sum(w * -jnp.where(mask, logp_targets, 0.0))
  return (total / jnp.maximum(jnp.sum(w), 1.0)).astype(jnp.float32)


# ---- catastrophe penalty ------------------------------------------------------------------------
def never_catastrophic(question: jax.Array, argument: jax.Array) -> jax.Array:
  """Placeholder catastrophe predicate: bool[], always False.

  The real predicate is Amp′(H, M_target)'s judgement of whether ``argument`` (int32[La]), given in
  answer to ``question`` (int32[Lq]), is catastrophic; the safety work (amp_debate/safety)
  replaces this function. Any replacement must keep the signature and be jittable.
  """
  del question, argument
  return jnp.zeros((), jnp.bool_)


def catastrophe_flags(predicate: CatastrophePredicate, questions: jax.Array, arguments: jax.Array,
                      turn_mask: jax.Array) -> jax.Array:
  """bool[B, T]: the predicate on every argument that was made (False on masked turns).

  Args:
    predicate: (question int32[Lq], argument int32[La]) -> bool[], e.g. ``never_catastrophic``.
    questions: int32[..., Lq] the question each argument answered.
    arguments: int32[..., L] the arguments.
    turn_mask: bool[...].
  """
  _check_turns(turn_mask)
  lead = turn_mask.shape
  chex.assert_equal_shape_prefix([questions, arguments, turn_mask], len(lead))
  flat = lambda x: x.reshape((-1,) + x.shape[len(lead):])
  flags = jax.vmap(predicate)(flat(questions), flat(arguments)).reshape(lead)
  return flags.astype(jnp.bool_) & turn_mask


def catastrophe_probability(logp: jax.Array, logp_old: jax.Array, token_mask: jax.Array,
                            turn_mask: jax.Array, flags: jax.Array) -> jax.Array:
  """float32[...]: importance-sampled estimate of M's probability of each catastrophic argument.

  p = flag · π_M(arg) / π_target(arg) = flag · exp(Σ_tokens (logp - logp_old)). Since the
  arguments were sampled from M_target, E[p] summed over a turn's outcomes is M's probability of a
  catastrophic argument there. Its value is 1 for a flagged argument when M = M_target, and its
  gradient is flag · ratio · ∇logπ_M(arg): at ratio 1, REINFORCE with reward -1 per flagged
  argument (-(-1)·flag·∇logp). 0 where not flagged or masked.

  Args:
    logp, logp_old: float32[..., L]; token_mask bool[..., L]; turn_mask, flags bool[...].
  """
  _check_tokens(turn_mask, token_mask, logp, logp_old)
  _check_turns(turn_mask, flags)
  chex.assert_type(flags, jnp.bool_)
  mask = token_mask & (turn_mask & flags)[..., None]
  logp_old = jax.lax.stop_gradient(logp_old)
  log_ratio = jnp.sum(jnp.where(mask, logp, 0.0) - jnp.where(mask, logp_old, 0.0), axis=-1)
  return jnp.where(turn_mask & flags, jnp.exp(log_ratio), 0.0)


def catastrophe_loss(p_catastrophe: jax.Array, turn_mask: jax.Array) -> jax.Array:
  """float32[]: mean over valid turns of M's probability of a catastrophic argument.

  Args:
    p_catastrophe: float32[...], from ``catastrophe_probability`` (flags from
      ``catastrophe_flags`` with Amp′(H, M_target)'s predicate).
    turn_mask: bool[...].
  Returns:
    0 (zero gradient) when no turn is flagged or none is valid; positive otherwise.
  """
  _check_turns(turn_mask, p_catastrophe)
  chex.assert_type(p_catastrophe, jnp.float32)
  return _masked_mean(jnp.where(turn_mask, p_catastrophe, 0.0), turn_mask)
