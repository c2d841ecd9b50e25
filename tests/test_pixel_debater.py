"""The learned sparse-pixel debater: replaying a rollout, the RL loss's gradient direction, a short
self-play run that makes the policy beat a random-reveal debater on both sides, the greedy
debater's candidate cap, and the trainer's one-line errors. Synthetic 8x8 images and a template
judge (as in test_pixel_debate.py) keep it to seconds."""

import functools
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from amp_debate.models.pixel_policy import PixelDebater
from amp_debate.procedure import game as game_lib
from amp_debate.procedure import pixel_debate as pd
from amp_debate.tools import mnist_debater

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8)
POLICY = PixelDebater(features=(16, 16), kernel_sizes=(3, 3))


def _synthetic(seed, num):
  """Noisy copies of 10 binary 8x8 prototypes and the template judge that knows them."""
  images, labels, protos = _synthetic_arrays(jax.random.key(seed), num)
  return images, labels, pd.template_judge(protos * 0.75 * 0.7)


@functools.partial(jax.jit, static_argnums=1)
def _synthetic_arrays(key, num):
  """(images, labels, prototypes) of ``_synthetic``, as one program (eagerly, each op compiles)."""
  base_key, flip_key, label_key, scale_key, keep_key = jax.random.split(key, 5)
  base = jax.random.bernoulli(jax.random.key(42), 0.4, SHAPE)
  protos = (base ^ jax.random.bernoulli(jax.random.key(43), 0.1, (10,) + SHAPE)).astype(
      jnp.float32)
  labels = jax.random.randint(label_key, (num,), 0, 10).astype(jnp.int32)
  scale = jax.random.uniform(scale_key, (num,) + SHAPE, minval=0.5, maxval=1.0)
  keep = jax.random.bernoulli(keep_key, 0.7, (num,) + SHAPE)
  del base_key, flip_key
  return protos[labels] * scale * keep, labels, protos


def _params(seed=0):
  return mnist_debater.init_policy(POLICY, jax.random.key(seed), SHAPE)


def test_replay_rebuilds_the_states_before_each_move():
  images, labels, judge = _synthetic(0, 16)
  game = pd.PixelDebate(pd.PixelDebateConfig(k=5, image_shape=SHAPE), judge)

  @jax.jit  # the debate, its replay and the checks' game steps as one program
  def replayed(params, images, labels, key):
    player = pd.policy_player(game, mnist_debater.apply_fn(POLICY), params)
    out = pd.debate(game, player, pd.random_player(game), images, labels, key)
    start = out.state.replace(revealed=jnp.zeros_like(out.state.revealed),
                              moves=jnp.zeros_like(out.state.moves))
    before = game_lib.replay(game, start, out.record)
    after = game.step(jax.tree.map(lambda x: x[-1], before), out.record.actions[-1])
    flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), before)
    legal = game.legal(flat)[jnp.arange(5 * 16), out.record.actions.reshape(-1)]
    return out, before, after, legal

  out, before, after, legal = replayed(_params(), images, labels, jax.random.key(1))
  np.testing.assert_array_equal(before.moves[:, 0], np.arange(5))
  np.testing.assert_array_equal(before.revealed.sum(axis=(2, 3))[:, 0], np.arange(5))
  chex.assert_trees_all_equal(after, out.state)
  # Every move the policy made was legal in the state it was made in.
  assert legal.all()


def test_policy_gradient_raises_the_winners_moves():
  """One SGD step on the loss makes the moves of the side that won more likely, the loser's less."""
  images, labels, judge = _synthetic(1, 32)
  game = pd.PixelDebate(pd.PixelDebateConfig(k=4, image_shape=SHAPE), judge)
  apply = mnist_debater.apply_fn(POLICY)
  params = _params()

  @jax.jit
  def self_play(params, images, labels, key):
    player = pd.policy_player(game, apply, params)
    return pd.debate(game, player, player, images, labels, key)

  out = self_play(params, images, labels, jax.random.key(2))

  @jax.jit
  def sgd_step(params, out):
    grads = jax.grad(lambda p: pd.policy_loss(game, apply, p, out, entropy_coef=0.0)[0])(params)
    return jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)

  stepped = sgd_step(params, out)

  @jax.jit
  def move_logp(p, out):
    start = out.state.replace(revealed=jnp.zeros_like(out.state.revealed),
                              moves=jnp.zeros_like(out.state.moves))
    before = game_lib.replay(game, start, out.record)
    flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), before)
    logits, _ = pd._policy_logits(game, apply, p, flat)  # pylint: disable=protected-access
    logp = jax.nn.log_softmax(logits)[jnp.arange(flat.moves.shape[0]),
                                      out.record.actions.reshape(-1)]
    return logp.reshape(out.record.actions.shape)

  delta = move_logp(stepped, out) - move_logp(params, out)
  honest_won = jax.jit(game.margin_for)(out.state, jnp.zeros(32, jnp.int32)) > 0
  winner_moved = (out.record.to_play == 0) == honest_won[None, :]
  assert 0.1 < float(honest_won.mean()) < 0.95
  assert float(delta[winner_moved].mean()) > 0 > float(delta[~winner_moved].mean())


@pytest.mark.study
def test_self_play_training_beats_random_reveal_on_both_sides():
  images, labels, judge = _synthetic(2, 2048)
  eval_images, eval_labels, _ = _synthetic(3, 512)
  config = pd.PixelDebateConfig(k=4, image_shape=SHAPE)
  optimizer = optax.adam(3e-3)
  params = _params()
  opt_state = optimizer.init(params)
  step = mnist_debater.make_train_step(config, judge, POLICY, optimizer, entropy_coef=0.01)
  rates = mnist_debater.make_win_rates(config, judge, POLICY)
  before = rates(params, eval_images, eval_labels, jax.random.key(9))
  for t in range(150):
    index = jax.random.randint(jax.random.key(t), (64,), 0, 2048)
    params, opt_state, _ = step(params, opt_state, images[index], labels[index],
                                jax.random.key(1000 + t))
  after = rates(params, eval_images, eval_labels, jax.random.key(9))
  # Honest: the trained policy wins more against a random liar; lying, it wins more often too.
  assert after["honest_win/as_honest_vs_random"] >= before["honest_win/as_honest_vs_random"] + 0.1
  assert after["honest_win/as_liar_vs_random"] <= before["honest_win/as_liar_vs_random"] - 0.1


def test_greedy_candidate_cap_is_exact_when_it_covers_every_legal_pixel():
  images, labels, judge = _synthetic(4, 32)
  game = pd.PixelDebate(pd.PixelDebateConfig(k=5, image_shape=SHAPE), judge)
  most = int((images != 0).sum(axis=(1, 2)).max())
  play = lambda cap: jax.jit(lambda i, l, k: pd.debate(
      game, pd.greedy_player(game, cap), pd.greedy_player(game, cap), i, l, k))(
          images, labels, jax.random.key(0))
  full, capped = play(None), play(most)
  chex.assert_trees_all_equal(full, capped)
  # A cap below the legal count changes some choices but every move stays legal.
  short = play(3)
  assert (short.state.revealed.sum(axis=(1, 2)) == 5).all()


def test_trainer_errors_are_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="no trained judge"):
    mnist_debater.run(judge_dir=str(tmp_path / "nope"), workdir=str(tmp_path / "w"), steps=1)
  with pytest.raises(FileNotFoundError, match="no trained debater"):
    mnist_debater.load_debater(str(tmp_path))
  result = subprocess.run(
      [sys.executable, "-m", "amp_debate.tools.mnist_debater", f"--judge_dir={tmp_path}/nope",
       f"--workdir={tmp_path}/w", "--steps=1"], capture_output=True, text=True, cwd=REPO,
      check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f"error: no trained judge in {tmp_path}/nope (missing judge.json; train one with python -m "
      "amp_debate.tools.mnist_judge)"]
  assert not os.path.exists(tmp_path / "w")


def test_mcts_follows_a_peaked_prior():
  """With ``prior_fn`` the search samples its root candidates from the prior: a prior that puts all
  its mass on one legal pixel makes that pixel the move, where the uniform prior spreads out."""
  images, labels, judge = _synthetic(5, 16)
  game = pd.PixelDebate(pd.PixelDebateConfig(k=4, image_shape=SHAPE), judge)
  state = game.init(None, (images, jnp.stack([labels, (labels + 1) % 10], axis=1)))
  legal = game.legal(state)
  target = jnp.argmax(legal, axis=1)  # each image's first legal pixel
  peaked = lambda s: 50.0 * jax.nn.one_hot(target, 64)
  with_prior = jax.jit(pd.mcts_player(game, 4, max_num_considered_actions=4, prior_fn=peaked))
  uniform = jax.jit(pd.mcts_player(game, 4, max_num_considered_actions=4))
  np.testing.assert_array_equal(with_prior(state, jax.random.key(0)), target)
  assert (uniform(state, jax.random.key(0)) != target).mean() > 0.5


def test_training_is_deterministic_given_the_seed():
  images, labels, judge = _synthetic(6, 64)
  config = pd.PixelDebateConfig(k=4, image_shape=SHAPE)
  optimizer = optax.adam(3e-3)
  step = mnist_debater.make_train_step(config, judge, POLICY, optimizer, entropy_coef=0.01)

  def train(seed):
    params = _params()
    opt_state = optimizer.init(params)
    for t in range(3):
      params, opt_state, _ = step(params, opt_state, images, labels,
                                  jax.random.fold_in(jax.random.key(seed), t))
    return params

  chex.assert_trees_all_equal(train(0), train(0))
  assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), train(0),
                                              train(1))))


def test_saved_debater_loads_back(tmp_path):
  params = _params(3)
  mnist_debater.save_debater(str(tmp_path), POLICY, params, {"k": 4})
  policy, loaded, record = mnist_debater.load_debater(str(tmp_path))
  assert policy == POLICY and record["k"] == 4 and record["policy"]["features"] == [16, 16]
  chex.assert_trees_all_equal(jax.device_get(params), loaded)
