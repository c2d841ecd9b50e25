"""A learned sparse-pixel debater, trained by self-play with the framework's RL loss.

  python -m amp_debate.tools.mnist_debater --judge_dir=workdir/judge_k6 --steps=600 \
      --workdir=workdir/debater_k6

One ``models.pixel_policy.PixelDebater`` plays both seats of the pixel debate (it is told its own
claim and the opponent's, and sees the whole image) against the judge saved in ``--judge_dir``
(``tools.mnist_judge``; k is the judge's). Each step plays a batch of debates on the
``debater_train`` MNIST split (half with the honest side moving first, half second; the liar's label
uniform among the wrong ones), and takes an Adam step on ``procedure.pixel_debate.policy_loss``:
``losses.policy_gradient_loss`` with a +1/-1 reward per move for the side that won, per-seat
normalised advantages, and an entropy bonus. Every ``--eval_every`` steps the policy (its most
likely pixel) is measured on the ``eval`` split as the honest side against a random-reveal liar and
as the liar against a random-reveal honest side: the behaviour training should move.

Writes into ``--workdir``: ``debater_params.msgpack`` and ``debater.json`` (settings, data lines,
the evaluation curve). ``load_debater(workdir)`` restores them. The data order is a pure function of
(seed, step).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import optax
import tqdm
from absl import flags

from amp_debate import cli
from amp_debate.data import mnist
from amp_debate.models import partitioning
from amp_debate.models.pixel_policy import PixelDebater
from amp_debate.procedure import pixel_debate as pd
from amp_debate.tools import mnist_judge

PARAMS_FILE = "debater_params.msgpack"
RECORD_FILE = "debater.json"
POLICY_FIELDS = ("num_classes", "features", "kernel_sizes")


def judge_fn(judge, params):
  """The saved ImageJudge as the game's ``judge_logits`` (deterministic: no dropout)."""
  return lambda revealed, values: judge.apply({"params": params}, revealed, values)


def init_policy(policy: PixelDebater, rng: jax.Array, image_shape=mnist.IMAGE_SHAPE):
  ones = jnp.ones((1, *image_shape), jnp.float32)
  zero = jnp.zeros((1,), jnp.int32)
  return partitioning.init_params(policy, rng, ones, ones, zero, zero)


def apply_fn(policy: PixelDebater):
  return lambda params, *args: policy.apply({"params": params}, *args)


def _games(config: pd.PixelDebateConfig, judge_logits):
  """The two games a step plays: honest first and honest second."""
  return [pd.PixelDebate(dataclasses.replace(config, honest_first=first), judge_logits)
          for first in (True, False)]


def make_train_step(config, judge_logits, policy, optimizer, *, entropy_coef):
  """A jitted (params, opt_state, images, labels, key) -> (params, opt_state, metrics)."""
  games = _games(config, judge_logits)
  apply = apply_fn(policy)

  def loss_fn(params, images, labels, key):
    half = images.shape[0] // 2
    total, metrics = 0.0, []
    for i, game in enumerate(games):
      part = slice(i * half, (i + 1) * half)
      player = pd.policy_player(game, apply, jax.lax.stop_gradient(params))
      outcome = pd.debate(game, player, player, images[part], labels[part],
                          jax.random.fold_in(key, i))
      loss, m = pd.policy_loss(game, apply, params, outcome, entropy_coef=entropy_coef)
      total, metrics = total + loss / len(games), metrics + [m]
    return total, jax.tree.map(lambda *x: sum(x) / len(x), *metrics)

  @jax.jit
  def train_step(params, opt_state, images, labels, key):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, images, labels, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, dict(metrics, loss=loss)

  return train_step


def make_win_rates(config, judge_logits, policy):
  """A function (params, images, labels, key) -> dict of float: the policy's most likely pixel vs
  a random-reveal debater on every image, both move orders averaged: the honest side's win rate
  with the policy honest ("as_honest_vs_random") and with the policy lying ("as_liar_vs_random")."""
  cases = []
  for game in _games(config, judge_logits):
    for name, seats in (("as_honest", ("policy", "random")), ("as_liar", ("random", "policy"))):
      cases.append((name, game, seats))

  @jax.jit
  def rates(params, images, labels, key):
    out = {}
    for name, game, seats in cases:
      make = dict(policy=pd.policy_player(game, apply_fn(policy), params, sample=False),
                  random=pd.random_player(game))
      wins = pd.debate(game, make[seats[0]], make[seats[1]], images, labels, key).honest_wins
      out.setdefault(name, []).append(wins.mean())
    return {f"honest_win/{name}_vs_random": sum(v) / len(v) for name, v in out.items()}

  return lambda *args: {k: float(v) for k, v in rates(*args).items()}


def save_debater(workdir, policy, params, record) -> None:
  mnist_judge.save_module(workdir, params, record, params_file=PARAMS_FILE,
                          record_file=RECORD_FILE, sizes_key="policy",
                          sizes={name: getattr(policy, name) for name in POLICY_FIELDS})


def load_debater(workdir: str):
  """(PixelDebater, params, the debater.json record) saved by ``run``."""
  return mnist_judge.load_module(workdir, record_file=RECORD_FILE, sizes_key="policy",
                                 make=PixelDebater, init=init_policy, what="debater")


def run(*, judge_dir: str, workdir: str, steps: int, batch_size: int = 64, seed: int = 0,
        learning_rate: float = 1e-3, entropy_coef: float = 0.01,
        policy: PixelDebater = PixelDebater(), eval_every: int = 100, eval_images: int = 500,
        mnist_dir: str | None = None, progress: bool = True) -> dict:
  """Trains the debater by self-play against the saved judge; returns the debater.json record.

  Raises FileNotFoundError / ValueError (one line) for a missing judge, a bad batch size or a
  missing or corrupt data directory, before any training.
  """
  if not os.path.exists(os.path.join(judge_dir, mnist_judge.RECORD_FILE)):
    raise FileNotFoundError(f"no trained judge in {judge_dir} (missing {mnist_judge.RECORD_FILE}; "
                            "train one with python -m amp_debate.tools.mnist_judge)")
  if batch_size < 2 or batch_size % 2:
    raise ValueError(f"batch_size={batch_size} must be even and at least 2 (half of each batch "
                     "has the honest side first, half second)")
  source = "offline" if mnist_dir is not None else "auto"
  judge, judge_params, judge_record = mnist_judge.load_judge(judge_dir)
  config = pd.PixelDebateConfig(k=judge_record["k"])
  judge_logits = judge_fn(judge, judge_params)
  x, y = mnist.load("debater_train", source=source, offline_dir=mnist_dir)
  ex, ey = mnist.load("eval", source=source, offline_dir=mnist_dir)
  x = jnp.asarray(x, jnp.float32) / 255.0
  ex = jnp.asarray(ex[:eval_images], jnp.float32) / 255.0
  y, ey = jnp.asarray(y, jnp.int32), jnp.asarray(ey[:eval_images], jnp.int32)

  key = jax.random.key(seed)
  params = init_policy(policy, jax.random.fold_in(key, 2**31))
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(params)
  train_step = make_train_step(config, judge_logits, policy, optimizer, entropy_coef=entropy_coef)
  eval_key = jax.random.key(seed + 1)
  curve, history, start = [], [], time.time()

  win_rates = make_win_rates(config, judge_logits, policy)

  def evaluate(step):
    curve.append(dict(step=step, **win_rates(params, ex, ey, eval_key)))

  evaluate(0)
  bar = tqdm.trange(steps, desc=f"debater k={config.k}", disable=not progress)
  for step in bar:
    step_key = jax.random.fold_in(key, step)
    index = jax.random.randint(jax.random.fold_in(step_key, 0), (batch_size,), 0, x.shape[0])
    params, opt_state, metrics = train_step(params, opt_state, x[index], y[index],
                                            jax.random.fold_in(step_key, 1))
    history.append({k: float(v) for k, v in metrics.items()})
    if (step + 1) % eval_every == 0 or step + 1 == steps:
      evaluate(step + 1)
      bar.set_postfix(curve[-1] | {"self_play_honest": history[-1]["honest_win"]})
  record = dict(
      k=config.k, steps=steps, batch_size=batch_size, seed=seed, learning_rate=learning_rate,
      entropy_coef=entropy_coef, judge_dir=judge_dir, judge_eval_accuracy=judge_record.get(
          "eval_accuracy"),
      train_data=mnist.describe("debater_train", source=source, offline_dir=mnist_dir),
      eval_data=mnist.describe("eval", source=source, offline_dir=mnist_dir) +
      f", first {ex.shape[0]} images",
      curve=curve, self_play_honest_win=[h["honest_win"] for h in history],
      train_seconds=round(time.time() - start, 1))
  save_debater(workdir, policy, params, record)
  return record


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program: the MNIST study imports it). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("judge_dir", None, "A tools.mnist_judge workdir.", **define)
  flags.DEFINE_string("workdir", None, "Where debater.json and the params go.", **define)
  flags.DEFINE_integer("steps", 600, "Training steps.", **define)
  flags.DEFINE_integer("batch_size", 64, "Debates per step (even).", **define)
  flags.DEFINE_integer("seed", 0, "PRNG seed.", **define)
  flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", **define)
  flags.DEFINE_float("entropy_coef", 0.01, "Entropy bonus coefficient.", **define)
  flags.DEFINE_integer("eval_every", 100, "Steps between evaluations.", **define)
  flags.DEFINE_string("mnist_dir", None, "Offline MNIST copy.", **define)
  flags.mark_flags_as_required(["judge_dir", "workdir"], flag_values=values)
  return values


def main(argv):
  """absl's main: the flags are parsed into FLAGS already (stray arguments refused)."""
  del argv
  values = flags.FLAGS
  try:
    record = run(judge_dir=values.judge_dir, workdir=values.workdir, steps=values.steps,
                 batch_size=values.batch_size, seed=values.seed,
                 learning_rate=values.learning_rate, entropy_coef=values.entropy_coef,
                 eval_every=values.eval_every, mnist_dir=values.mnist_dir)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    cli.fail(str(e))
  first, last = record["curve"][0], record["curve"][-1]
  print(f"k={record['k']}: honest win rate vs a random-reveal liar "
        f"{first['honest_win/as_honest_vs_random']:.2f} -> "
        f"{last['honest_win/as_honest_vs_random']:.2f}; as the liar vs a random honest side "
        f"{first['honest_win/as_liar_vs_random']:.2f} -> {last['honest_win/as_liar_vs_random']:.2f}"
        f" ({record['eval_data']}). Saved to {values.workdir}")


if __name__ == "__main__":
  cli.run(define_flags, main)
