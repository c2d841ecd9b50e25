"""The sparse-pixel debate game (procedure.pixel_debate) and the game engine it plays on
(procedure.game), with cheap training-free judges: class templates on synthetic 8x8 images (a judge
that sees every pixel is then almost always right), and on a few real MNIST images."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate import checks
from amp_debate.procedure import game as game_lib
from amp_debate.procedure import pixel_debate as pd

SHAPE = (8, 8)
NUM_GAMES = 64


@pytest.fixture(scope="module")
def synthetic():
  """(images float[N, 8, 8], labels int32[N], template judge): noisy copies of 10 binary prototypes
  (a shared random pattern with 10% of its pixels flipped per class; each pixel scaled by U(0.5, 1)
  and dropped with probability 0.3); the judge's templates are the prototypes' expected values."""
  base_key, flip_key, label_key, scale_key, keep_key = jax.random.split(jax.random.key(42), 5)
  base = jax.random.bernoulli(base_key, 0.4, SHAPE)
  protos = (base ^ jax.random.bernoulli(flip_key, 0.1, (10,) + SHAPE)).astype(jnp.float32)
  labels = jax.random.randint(label_key, (NUM_GAMES,), 0, 10)
  scale = jax.random.uniform(scale_key, (NUM_GAMES,) + SHAPE, minval=0.5, maxval=1.0)
  keep = jax.random.bernoulli(keep_key, 0.7, (NUM_GAMES,) + SHAPE)
  images = protos[labels] * scale * keep
  return images, labels.astype(jnp.int32), pd.template_judge(protos * 0.75 * 0.7)


def _run(config, judge, honest, liar, images, labels, seed=0):
  """Honest win rate and the outcome; honest/liar name a debater ("random", "greedy", "mcts")."""
  game = pd.PixelDebate(config, judge)
  make = dict(random=pd.random_player, greedy=pd.greedy_player,
              mcts=lambda g: pd.mcts_player(g, num_simulations=16))
  fn = jax.jit(lambda i, l, r: pd.debate(game, make[honest](game), make[liar](game), i, l, r))
  out = fn(images, labels, jax.random.key(seed))
  return float(out.honest_wins.mean()), out


def test_k_larger_than_image_fails_with_a_message():
  with pytest.raises(checks.FieldError, match=r"k=1000 is larger than the image \(784 pixels\)"):
    pd.PixelDebateConfig(k=1000)
  with pytest.raises(checks.FieldError, match="k must be >= 1"):
    pd.PixelDebateConfig(k=0)
  with pytest.raises(checks.FieldError, match=r"k=65 is larger than the image \(64 pixels\)"):
    pd.PixelDebateConfig(k=65, image_shape=SHAPE)
  with pytest.raises(checks.FieldError, match="num_simulations must be >= 1"):
    pd.mcts_player(pd.PixelDebate(pd.PixelDebateConfig(), None), 0)


def test_revealed_values_are_the_images(synthetic):
  images, labels, judge = synthetic
  config = pd.PixelDebateConfig(k=6, image_shape=SHAPE)
  _, out = _run(config, judge, "greedy", "random", images, labels)
  state, record = out.state, out.record
  chex.assert_shape(record.actions, (6, NUM_GAMES))
  # Exactly the pixels played are revealed, all legal (nonzero), one per move.
  played = jax.nn.one_hot(record.actions, 64, dtype=bool).any(axis=0).reshape(state.revealed.shape)
  np.testing.assert_array_equal(played, state.revealed)
  assert (state.revealed.sum(axis=(1, 2)) == 6).all()
  assert (np.asarray(state.image)[np.asarray(state.revealed)] != 0).all()
  np.testing.assert_array_equal(state.image, images)
  # The judge sees the image's values at revealed pixels and zero elsewhere, nothing else.
  seen = []
  game = pd.PixelDebate(config, lambda r, v: seen.append((r, v)) or jnp.zeros((r.shape[0], 10)))
  game.margin_for(state, jnp.zeros(NUM_GAMES, jnp.int32))
  revealed, values = seen[0]
  np.testing.assert_array_equal(values, jnp.where(state.revealed, images, 0.0))
  np.testing.assert_array_equal(revealed, state.revealed)


def test_judge_that_sees_all_pixels_makes_honest_win(synthetic):
  images, labels, judge = synthetic
  config = pd.PixelDebateConfig(k=64, image_shape=SHAPE, nonzero_only=False)
  rate, out = _run(config, judge, "random", "random", images, labels)
  assert out.state.revealed.all()
  assert rate >= 0.95, rate


def test_search_debaters_beat_random_reveal(synthetic):
  images, labels, judge = synthetic
  config = pd.PixelDebateConfig(k=4, image_shape=SHAPE)
  base, _ = _run(config, judge, "random", "random", images, labels)
  greedy, _ = _run(config, judge, "greedy", "random", images, labels)
  mcts, _ = _run(config, judge, "mcts", "random", images, labels)
  assert greedy >= base + 0.15, (base, greedy)
  assert mcts >= base + 0.15, (base, mcts)
  # And searching liars beat a random-reveal honest debater.
  liar_greedy, _ = _run(config, judge, "random", "greedy", images, labels)
  assert liar_greedy <= base - 0.15, (base, liar_greedy)


def test_mcts_beats_random_on_mnist():
  from amp_debate.data import mnist  # pylint: disable=import-outside-toplevel
  x, y = mnist.load("eval")
  x = x.astype(np.float32) / 255.0
  means = jnp.stack([x[:500][y[:500] == c].mean(axis=0) for c in range(10)])
  images, labels = jnp.asarray(x[500:532]), jnp.asarray(y[500:532])
  config = pd.PixelDebateConfig(k=6)
  base, _ = _run(config, pd.template_judge(means), "random", "random", images, labels)
  mcts, out = _run(config, pd.template_judge(means), "mcts", "random", images, labels)
  assert mcts >= base + 0.1, (base, mcts)
  np.testing.assert_array_equal(out.state.image, images)


def test_deterministic_given_a_seed_and_early_exit_identical(synthetic):
  images, labels, judge = synthetic
  config = pd.PixelDebateConfig(k=5, image_shape=SHAPE, honest_first=False)
  _, first = _run(config, judge, "mcts", "random", images, labels, seed=3)
  _, again = _run(config, judge, "mcts", "random", images, labels, seed=3)
  chex.assert_trees_all_equal(first, again)
  _, other = _run(config, judge, "mcts", "random", images, labels, seed=4)
  assert (other.record.actions != first.record.actions).any()
  # The liar moves first: seats alternate 1, 0, 1, ...
  np.testing.assert_array_equal(first.record.to_play[:, 0], [1, 0, 1, 0, 1])
  import dataclasses  # pylint: disable=import-outside-toplevel
  _, loop = _run(dataclasses.replace(config, early_exit=True), judge, "mcts", "random", images,
                 labels, seed=3)
  chex.assert_trees_all_equal(first, loop)


def test_precommit_makes_the_liar_stronger(synthetic):
  images, labels, judge = synthetic
  config = pd.PixelDebateConfig(k=4, image_shape=SHAPE)
  single_rate, single = _run(config, judge, "greedy", "greedy", images, labels)
  import dataclasses  # pylint: disable=import-outside-toplevel
  pre_rate, pre = _run(dataclasses.replace(config, precommit=True), judge, "greedy", "greedy",
                       images, labels)
  chex.assert_shape(pre.liar_claims, (NUM_GAMES, 9))
  assert (pre.liar_claims != labels[:, None]).all()
  assert (single.liar_claims != labels[:, None]).all()
  # Greedy debaters are deterministic, so the single lie's game is one of the nine: per image, an
  # honest win against all nine lies implies one against the single lie.
  assert (~pre.honest_wins | single.honest_wins).all()
  assert pre_rate < single_rate, (pre_rate, single_rate)


# ---- the engine on a toy game whose games end at different moves ------------------------------
class _Countdown:
  """Each game counts up to its own limit; the action is added to a running sum."""

  def init(self, rng, limits):
    del rng
    zeros = jnp.zeros_like(limits)
    return dict(count=zeros, limit=limits, total=zeros)

  def legal(self, state):
    return jnp.ones(state["count"].shape + (3,), bool)

  def step(self, state, actions):
    return dict(state, count=state["count"] + 1, total=state["total"] + actions)

  def done(self, state):
    return state["count"] >= state["limit"]

  def to_play(self, state):
    return state["count"] % 2


def test_engine_masks_finished_games_and_early_exit_is_identical():
  toy = _Countdown()
  players = (lambda s, k: jax.random.randint(k, s["count"].shape, 0, 3),
             lambda s, k: jnp.full(s["count"].shape, 10))
  state = toy.init(None, jnp.array([0, 1, 3, 5]))
  results = [jax.jit(lambda s, r, e=e: game_lib.play(toy, players, s, r, 6, early_exit=e))(
      state, jax.random.key(0)) for e in (False, True)]
  chex.assert_trees_all_equal(*results)
  final, record = results[0]
  np.testing.assert_array_equal(final["count"], [0, 1, 3, 5])
  np.testing.assert_array_equal(record.active.sum(axis=0), [0, 1, 3, 5])
  assert (record.actions[~record.active] == game_lib.NO_ACTION).all()
  # Seat 1 (the constant 10) moved at odd counts only.
  np.testing.assert_array_equal(record.actions[1, 2:], [10, 10])
  np.testing.assert_array_equal(final["total"], record.actions.clip(0).sum(axis=0))
