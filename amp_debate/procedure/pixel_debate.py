"""Sparse-pixel debate (the original MNIST debate experiment) as a game on ``procedure.game``.

Two debaters claim labels for an image: seat 0 (honest) the true label, seat 1 (liar) a wrong one.
They alternate revealing one pixel each until k pixels are revealed; the judge, a pure function
``judge_logits(revealed bool[B, H, W], values float[B, H, W]) -> float[B, C]`` that sees only the
revealed pixels (``values`` is the image with every hidden pixel zeroed), decides between the two
claimed labels: the honest side wins iff the judge's logit of its claim is strictly higher than the
liar's (a tie goes to the liar).

  state    image float[B, H, W], revealed bool[B, H, W], claims int32[B, 2], moves int32[B]
  action   a pixel index in [0, H*W) (row-major)
  legal    not yet revealed and, with ``nonzero_only`` (the default, as in the original
           experiment), nonzero in the image. An illegal action is a pass: the move counts and
           reveals nothing, so every game stays in lockstep (all games of a batch have the same
           seat to move, which lets ``game.play`` run only the player to move). An image with fewer
           legal pixels than k simply passes its remaining moves.
  values   revealed values are read from the image by ``step``: a debater chooses where, never what,
           so no value can be faked.

Precommit variant: the liar plays every wrong label (the batch is expanded C - 1 times, one game per
wrong label) and counts as winning if any of them wins. Otherwise the liar's single wrong label is
drawn uniformly from the wrong labels with the rollout's key.

Debaters (all ``game.Player``s, pure and jittable, built from the game they play):
  ``random_player``  a uniformly random legal pixel.
  ``greedy_player``  the legal pixel that, once revealed, most increases the judge's margin
                     logit(own claim) - logit(opponent's claim); all H*W candidates are judged in
                     one batch of B*H*W judge calls.
  ``mcts_player``    mctx's Gumbel MuZero search with the judge as the model (see its docstring).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp
import mctx

from amp_debate import checks
from amp_debate.procedure import game as game_lib
from amp_debate.procedure import losses

HONEST, LIAR = 0, 1
JudgeFn = Callable[[jax.Array, jax.Array], jax.Array]


def _k_fits(image_shape):
  pixels = image_shape[0] * image_shape[1]

  def check_k(value):
    problem = checks.integer(1)(value)
    if problem:
      return problem
    if value > pixels:
      return f"must fit in the image: k={value} is larger than the image ({pixels} pixels)"
    return None

  return check_k


def _shape(value):
  ok = (isinstance(value, tuple) and len(value) == 2
        and all(checks.is_integer(v) and v >= 1 for v in value))
  return None if ok else f"must be a (height, width) tuple of positive integers, got {value!r}"


@dataclasses.dataclass(frozen=True)
class PixelDebateConfig:
  """Static options of the pixel debate (checked on construction; ``checks.FieldError``).

  Attributes:
    k: pixels revealed in all (1 <= k <= H*W); the debaters alternate, so the first mover reveals
      ceil(k/2).
    honest_first: the honest debater reveals the first pixel (else the liar does).
    precommit: the liar plays every wrong label and wins if any wins.
    nonzero_only: only nonzero pixels are legal (the original experiment).
    num_classes: C, the judge's number of classes (10 for MNIST).
    image_shape: (H, W).
    early_exit: ``lax.while_loop`` rollout instead of ``lax.scan`` (identical results).
  """

  k: int = 6
  honest_first: bool = True
  precommit: bool = False
  nonzero_only: bool = True
  num_classes: int = 10
  image_shape: tuple[int, int] = (28, 28)
  early_exit: bool = False

  def __post_init__(self):
    checks.check_fields(self, image_shape=_shape)
    checks.check_fields(
        self, k=_k_fits(self.image_shape), honest_first=checks.boolean,
        precommit=checks.boolean, nonzero_only=checks.boolean,
        num_classes=checks.integer(2), early_exit=checks.boolean)

  @property
  def num_pixels(self) -> int:
    """A: the number of actions."""
    return self.image_shape[0] * self.image_shape[1]


@flax.struct.dataclass
class PixelState:
  """A batch of pixel debates.

  Attributes:
    image: float32[B, H, W] the images (never shown to the judge except where revealed).
    revealed: bool[B, H, W] the pixels revealed so far.
    claims: int32[B, 2] the labels claimed by seat 0 (honest) and seat 1 (liar).
    moves: int32[B] moves made so far (passes included).
  """

  image: jax.Array
  revealed: jax.Array
  claims: jax.Array
  moves: jax.Array


@flax.struct.dataclass
class PixelDebateOutcome:
  """The result of ``debate`` on B images.

  Attributes:
    state: the final PixelState (batch B * L: L = C - 1 with precommit, else 1; game b * L + j is
      image b against wrong label j).
    record: game.MoveRecord over the k moves (same batch as ``state``).
    honest_wins: bool[B] per image: the honest side beat the liar (every liar, with precommit).
    liar_claims: int32[B, L] the liar's label(s).
  """

  state: PixelState
  record: game_lib.MoveRecord
  honest_wins: jax.Array
  liar_claims: jax.Array


class PixelDebate:
  """The game's pure functions (``procedure.game.Game``) for one config and judge."""

  def __init__(self, config: PixelDebateConfig, judge_logits: JudgeFn):
    self.config = config
    self.judge_logits = judge_logits

  def init(self, rng: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> PixelState:
    """inputs: (images float[B, H, W], claims int32[B, 2]). Nothing is random at the start."""
    del rng
    images, claims = inputs
    chex.assert_shape(images, (None,) + self.config.image_shape)
    chex.assert_shape(claims, (images.shape[0], 2))
    return PixelState(image=images.astype(jnp.float32), revealed=jnp.zeros(images.shape, bool),
                      claims=claims.astype(jnp.int32),
                      moves=jnp.zeros(images.shape[:1], jnp.int32))

  def legal(self, state: PixelState) -> jax.Array:
    """bool[B, A]."""
    ok = ~state.revealed
    if self.config.nonzero_only:
      ok &= state.image != 0
    return ok.reshape(ok.shape[0], -1)

  def step(self, state: PixelState, actions: jax.Array) -> PixelState:
    """Reveals pixel ``actions`` (int32[B]) where legal (else passes); one move either way."""
    chex.assert_shape(actions, state.moves.shape)
    legal = jnp.take_along_axis(self.legal(state), actions[:, None], axis=1)[:, 0]
    onehot = jax.nn.one_hot(actions, self.config.num_pixels, dtype=bool) & legal[:, None]
    revealed = state.revealed | onehot.reshape(state.revealed.shape)
    return state.replace(revealed=revealed, moves=state.moves + 1)

  def done(self, state: PixelState) -> jax.Array:
    return state.moves >= self.config.k

  def to_play(self, state: PixelState) -> jax.Array:
    first = HONEST if self.config.honest_first else LIAR
    return ((state.moves + first) % 2).astype(jnp.int32)

  def logits(self, revealed: jax.Array, image: jax.Array) -> jax.Array:
    """float[N, C]: the judge on the revealed pixels only.

    revealed: bool[N, H, W]; image: float[N, H, W] (hidden pixels are zeroed before the judge).
    """
    out = self.judge_logits(revealed, jnp.where(revealed, image, 0.0))
    chex.assert_shape(out, (revealed.shape[0], self.config.num_classes))
    return out

  def margin_for(self, state: PixelState, seat: jax.Array) -> jax.Array:
    """float[B]: logit(seat's claim) - logit(other's claim) on the current revealed set."""
    logits = self.logits(state.revealed, state.image)
    own = jnp.take_along_axis(state.claims, seat[:, None], axis=1)
    other = jnp.take_along_axis(state.claims, 1 - seat[:, None], axis=1)
    return (jnp.take_along_axis(logits, own, axis=1)
            - jnp.take_along_axis(logits, other, axis=1))[:, 0]


def debate(game: PixelDebate, honest: game_lib.Player, liar: game_lib.Player, images: jax.Array,
           labels: jax.Array, rng: jax.Array) -> PixelDebateOutcome:
  """Plays the pixel debate on B images.

  Args:
    game: the PixelDebate (config and judge).
    honest, liar: the debaters (seat 0 and seat 1).
    images: float[B, H, W] (any scale; 0 is "off" for ``nonzero_only``).
    labels: int32[B] the true labels (the honest claims).
    rng: PRNG key (the liar's label without precommit, and the players' keys).
  Returns:
    PixelDebateOutcome.
  """
  config = game.config
  chex.assert_shape(labels, images.shape[:1])
  batch, num_classes = labels.shape[0], config.num_classes
  label_rng, play_rng = jax.random.split(rng)
  if config.precommit:
    offsets = jnp.arange(1, num_classes)[None, :]
    liar_claims = (labels[:, None] + offsets) % num_classes
  else:
    offsets = jax.random.randint(label_rng, (batch, 1), 1, num_classes)
    liar_claims = (labels[:, None] + offsets) % num_classes
  lies = liar_claims.shape[1]
  claims = jnp.stack([jnp.repeat(labels, lies), liar_claims.reshape(-1)], axis=1)
  state = game.init(play_rng, (jnp.repeat(images, lies, axis=0), claims))
  state, record = game_lib.play(game, (honest, liar), state, play_rng, config.k,
                                early_exit=config.early_exit, uniform_turns=True)
  honest_margin = game.margin_for(state, jnp.full(state.moves.shape, HONEST, jnp.int32))
  honest_wins = (honest_margin > 0).reshape(batch, lies).all(axis=1)
  return PixelDebateOutcome(state=state, record=record, honest_wins=honest_wins,
                            liar_claims=liar_claims.astype(jnp.int32))


# ---- judges ------------------------------------------------------------------------------------
def template_judge(means: jax.Array) -> JudgeFn:
  """A cheap, training-free judge: logits_c = -sum over revealed pixels of (value - means_c)^2.

  means: float[C, H, W] per-class mean images (e.g. from a few MNIST images).
  """

  def judge(revealed, values):
    # sum_revealed (v - m_c)^2 = sum r v^2 - 2 sum r v m_c + sum r m_c^2, without a [N, C, H, W]
    # intermediate (the greedy debater judges B*H*W candidate sets at once).
    mask = revealed.astype(values.dtype)
    squares = (mask * values ** 2).sum(axis=(1, 2))[:, None]
    cross = jnp.einsum("nhw,chw->nc", mask * values, means)
    norms = jnp.einsum("nhw,chw->nc", mask, means ** 2)
    return -(squares - 2 * cross + norms)

  return judge


# ---- debaters ----------------------------------------------------------------------------------
def random_player(game: PixelDebate) -> game_lib.Player:
  """A uniformly random legal pixel (pixel 0, a pass, where none is legal)."""

  def act(state, key):
    legal = game.legal(state)
    return jax.random.categorical(key, jnp.where(legal, 0.0, -jnp.inf)).astype(jnp.int32)

  return act


def greedy_player(game: PixelDebate, max_candidates: int | None = None) -> game_lib.Player:
  """The legal pixel that maximises the mover's judge margin once revealed (ties: lowest index).

  Judges all candidates of a move in one batch. ``max_candidates=None``: every one of the A = H*W
  pixels (B*A judge calls; memory B*A*A for the candidate masks), right for cheap judges. With
  ``max_candidates=N`` only the N lowest-index legal pixels are judged (B*N calls): exact whenever
  no image has more than N legal pixels (``experiments/mnist_debate.py`` sets N to the largest
  count of nonzero pixels among the debated images, so nothing is dropped). The key is unused.
  """
  shape = game.config.image_shape
  num_pixels = game.config.num_pixels
  if max_candidates is not None:
    checks.check("greedy_player", "max_candidates", max_candidates, checks.integer(1))
    max_candidates = min(max_candidates, num_pixels)

  def act(state, key):
    del key
    batch = state.moves.shape[0]
    seat = game.to_play(state)
    legal = game.legal(state)
    if max_candidates is None:
      pixels = jnp.broadcast_to(jnp.arange(num_pixels), (batch, num_pixels))
    else:  # the lowest-index legal pixels first (illegal ones rank below every legal one)
      rank = jnp.where(legal, num_pixels - jnp.arange(num_pixels), -jnp.arange(num_pixels))
      pixels = jax.lax.top_k(rank, max_candidates)[1]
    count = pixels.shape[1]
    flat = state.revealed.reshape(batch, 1, num_pixels)
    candidates = (flat | jax.nn.one_hot(pixels, num_pixels, dtype=bool)).reshape((-1,) + shape)
    expanded = jax.tree.map(lambda x: jnp.repeat(x, count, axis=0), state)
    expanded = expanded.replace(revealed=candidates)
    margins = game.margin_for(expanded, jnp.repeat(seat, count)).reshape(batch, count)
    ok = jnp.take_along_axis(legal, pixels, axis=1)
    best = jnp.argmax(jnp.where(ok, margins, -jnp.inf), axis=1)
    return jnp.take_along_axis(pixels, best[:, None], axis=1)[:, 0].astype(jnp.int32)

  return act


def mcts_player(game: PixelDebate, num_simulations: int, *, max_num_considered_actions: int = 16,
                value_scale: float = 1.0,
                prior_fn: Callable[[PixelState], jax.Array] | None = None) -> game_lib.Player:
  """Gumbel MuZero tree search (mctx) with the judge as the model, ``num_simulations`` per move.

  The search's "model" is the game itself: an edge reveals a pixel (``step``; a pixel already
  revealed or zero is a pass), so no dynamics are learned. Node values are from the point of view
  of the seat to move there: tanh(margin / value_scale) on the current revealed set at a running
  node, the outcome sign(margin) (+1 win, -1 loss) once all k pixels are revealed. Turns alternate,
  so every edge has discount -1 (mctx's convention for zero-sum two-player games: the parent's
  value is reward - child's value). Expanding below a finished node returns that node's value as
  the reward with discount 0 and value 0, so the search never looks past the end of the debate.
  Priors are uniform over legal pixels (illegal ones get -1e9), or ``prior_fn(state) -> float[B,
  A]`` logits over pixels (e.g. a learned debater's: ``policy_prior``), masked the same way; Gumbel
  MuZero then samples the considered root actions from the prior. The root action is Gumbel
  MuZero's (mctx: sequential halving over ``max_num_considered_actions`` Gumbel-sampled actions),
  which suits small simulation budgets and is deterministic given the key.
  """
  checks.check("mcts_player", "num_simulations", num_simulations, checks.integer(1))
  checks.check("mcts_player", "max_num_considered_actions", max_num_considered_actions,
               checks.integer(1))
  checks.check("mcts_player", "value_scale", value_scale, checks.number(0.0, lo_open=True))

  def value(state):
    margin = game.margin_for(state, game.to_play(state))
    return jnp.where(game.done(state), jnp.sign(margin), jnp.tanh(margin / value_scale))

  def prior(state):
    logits = 0.0 if prior_fn is None else prior_fn(state)
    return jnp.where(game.legal(state), logits, -1e9)

  def recurrent_fn(params, rng, action, state):
    del params, rng
    was_done = game.done(state)
    new = game_lib.select(was_done, state, game.step(state, action))
    out = mctx.RecurrentFnOutput(
        reward=jnp.where(was_done, value(state), 0.0),
        discount=jnp.where(was_done, 0.0, -1.0),
        prior_logits=prior(new),
        value=jnp.where(was_done, 0.0, value(new)))
    return out, new

  def act(state, key):
    root = mctx.RootFnOutput(prior_logits=prior(state), value=value(state), embedding=state)
    out = mctx.gumbel_muzero_policy(
        params=None, rng_key=key, root=root, recurrent_fn=recurrent_fn,
        num_simulations=num_simulations, invalid_actions=~game.legal(state),
        max_num_considered_actions=max_num_considered_actions)
    return out.action.astype(jnp.int32)

  return act


# ---- a learned debater -------------------------------------------------------------------------
# PolicyFn: (params, image float[N, H, W], revealed bool[N, H, W], own int32[N], other int32[N])
#           -> float32[N, H*W] reveal logits (e.g. ``models.pixel_policy.PixelDebater``'s apply).
PolicyFn = Callable[..., jax.Array]


def _policy_logits(game: PixelDebate, apply_fn: PolicyFn, params, state: PixelState):
  """(masked logits float32[N, A], legal bool[N, A]) of the side to move in each game."""
  seat = game.to_play(state)
  own = jnp.take_along_axis(state.claims, seat[:, None], axis=1)[:, 0]
  other = jnp.take_along_axis(state.claims, 1 - seat[:, None], axis=1)[:, 0]
  logits = apply_fn(params, state.image, state.revealed, own, other)
  chex.assert_shape(logits, (state.moves.shape[0], game.config.num_pixels))
  legal = game.legal(state)
  return jnp.where(legal, logits, -1e9), legal


def policy_player(game: PixelDebate, apply_fn: PolicyFn, params, *,
                  sample: bool = True) -> game_lib.Player:
  """A learned debater: samples a legal pixel from ``apply_fn``'s logits (``sample=False``: the
  most likely legal pixel). With no legal pixel left it passes (pixel 0)."""

  def act(state, key):
    logits, legal = _policy_logits(game, apply_fn, params, state)
    if sample:
      action = jax.random.categorical(key, logits)
    else:
      action = jnp.argmax(logits, axis=1)
    return jnp.where(legal.any(axis=1), action, 0).astype(jnp.int32)

  return act


def policy_prior(game: PixelDebate, apply_fn: PolicyFn, params) -> Callable[[PixelState], jax.Array]:
  """The learned debater's reveal logits for the side to move, as ``mcts_player``'s ``prior_fn``."""
  return lambda state: _policy_logits(game, apply_fn, params, state)[0]


def policy_loss(game: PixelDebate, apply_fn: PolicyFn, params, outcome: PixelDebateOutcome, *,
                entropy_coef: float = 0.01, advantage: str = "normalize",
                clip_eps: float = 0.2) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The framework's RL loss (``procedure.losses``) on a batch of pixel debates in which the policy
  played both seats (self-play).

  Each move is one "argument" of one token: the reward of every move of a game is +1 for the side
  that won and -1 for the other (zero-sum; the judge's verdict on the final reveal set), the
  advantages are ``losses.advantages(kind=advantage)`` taken per seat (the honest side wins more
  often, so each seat gets its own baseline), and the loss is ``losses.policy_gradient_loss`` (at
  ratio 1: REINFORCE; ``logp_old`` is the same policy's log-prob, the rollout having been sampled
  from these params) minus ``entropy_coef`` times ``losses.entropy_bonus`` over legal pixels. The
  states before each move are recomputed with ``game.replay``.

  Args:
    game, apply_fn, params: the game and the policy (its params are differentiated).
    outcome: ``debate``'s result for games where the policy played both seats.
  Returns:
    (loss float32[], metrics: "pg_loss", "entropy", "honest_win", "approx_kl").
  """
  final, record = outcome.state, outcome.record
  start = final.replace(revealed=jnp.zeros_like(final.revealed), moves=jnp.zeros_like(final.moves))
  before = game_lib.replay(game, start, record)  # [T, N, ...]
  steps, games = record.actions.shape
  flat = jax.tree.map(lambda x: x.reshape((steps * games,) + x.shape[2:]), before)
  logits, legal = _policy_logits(game, apply_fn, params, flat)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  actions = jnp.maximum(record.actions.reshape(-1), 0)
  logp = jnp.take_along_axis(log_p, actions[:, None], axis=1).reshape(steps, games)
  turn = record.active & legal.any(axis=1).reshape(steps, games)
  honest_won = game.margin_for(final, jnp.full((games,), HONEST, jnp.int32)) > 0
  seat = jnp.maximum(record.to_play, 0)
  sign = jnp.where(honest_won, 1.0, -1.0)[None, :]
  rewards = jnp.where(seat == HONEST, sign, -sign).astype(jnp.float32)
  adv = sum(losses.advantages(rewards, turn & (seat == s), advantage) for s in (HONEST, LIAR))
  ones = jnp.ones((steps, games, 1), bool)
  pg, pg_metrics = losses.policy_gradient_loss(
      logp[..., None], jax.lax.stop_gradient(logp)[..., None], ones, turn, adv, clip_eps)
  entropy = losses.entropy_bonus(logits.reshape(steps, games, 1, -1), ones, turn)
  metrics = dict(pg_loss=pg, entropy=entropy, honest_win=honest_won.mean(),
                 approx_kl=pg_metrics["approx_kl"])
  return pg - entropy_coef * entropy, metrics
