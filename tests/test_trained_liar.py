"""The trained liar: its claims are false, its REINFORCE loss has a gradient exactly where outcomes
differ, and training runs and reports the liar's win rate per step (tiny model, untrained M)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import tiny
from amp_debate.procedure import debate
from amp_debate.train import step as step_lib
from amp_debate.tools import trained_liar
from amp_debate.train import evaluation

TASK, MODEL = tiny.TASK, tiny.MODEL
CONFIG = dataclasses.replace(evaluation.eval_debate_config(TASK, tiny.step_config().debate),
                             call_prob=0.0)
# One sampler for both training tests, so they share the liar's compiled step (keyed by identity).
SAMPLE = lambda key, n: step_lib.sample_batch(TASK, key, n, TASK.max_difficulty).questions


def test_liar_claims_are_false_and_its_loss_follows_the_outcomes():
  params = MODEL.init(jax.random.key(0))
  questions = step_lib.sample_batch(TASK, jax.random.key(1), 16, TASK.max_difficulty).questions
  # One jitted program each for the rollout and the gradient's norm (eagerly, the debate and the
  # loss's transformer calls compile op by op).
  play = jax.jit(lambda m, liar, q, key: trained_liar.play(TASK, MODEL, m, liar, q, key, CONFIG, 1,
                                                           greedy_liar=False))
  state, transcript = play(params, params, questions, jax.random.key(2))
  truth = np.asarray(TASK.batch_solve(questions))
  assert (np.asarray(transcript.claims[:, 0, 1]) != truth).any(-1).all()  # the liar lies
  assert np.asarray(transcript.assigned[:, 1]).all()

  @jax.jit
  def grad_norm(params, transcript, winner):
    g = jax.grad(trained_liar.liar_loss)(params, MODEL, TASK, transcript, winner, 1)
    return sum(jnp.abs(x).sum() for x in jax.tree.leaves(g))

  norm_of_grad = lambda winner: float(grad_norm(params, transcript, winner))
  same = jnp.full((16,), debate.EVEN_WINS, jnp.int32)
  assert norm_of_grad(same) == 0.0  # no outcome differs: the baseline removes everything
  if np.asarray(transcript.support_sampled[:, :, 1]).any():
    varied = same.at[::2].set(debate.ODD_WINS)
    assert norm_of_grad(varied) > 0.0


def test_train_liar_runs_and_records_its_win_rate():
  params = MODEL.init(jax.random.key(0))
  options = trained_liar.LiarTraining(steps=2, batch=8, learning_rate=1e-3)
  liar_params, history = trained_liar.train_liar(TASK, MODEL, params, SAMPLE, CONFIG,
                                                 jax.random.key(3), options)
  assert len(history) == 2 and all(0.0 <= h <= 1.0 for h in history)
  assert jax.tree.structure(liar_params) == jax.tree.structure(params)


def test_the_control_arm_never_updates_the_liar():
  """The study's control plays the same games at learning rate 0: the liar stays M's copy (the
  first test shows the trained arm's gradient is non-zero where outcomes differ)."""
  params = MODEL.init(jax.random.key(0))
  options = trained_liar.LiarTraining(steps=2, batch=8, learning_rate=0.0)
  liar_params, _ = trained_liar.train_liar(TASK, MODEL, params, SAMPLE, CONFIG,
                                           jax.random.key(3), options)
  for a, b in zip(jax.tree.leaves(liar_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
