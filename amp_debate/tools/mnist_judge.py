"""The sparse-pixel judge and the no-debate baseline: an ImageJudge trained on k random pixels
(the MNIST judge trainer; its own loop and checkpoint format, above ``train/``).

  python -m amp_debate.tools.mnist_judge --k=4 --steps=3000 --workdir=workdir/judge_k4

Trains ``ImageJudge`` (default sizes: the debate paper's judge) on the "judge_train" split, each
step on fresh random masks (k random nonzero pixels per image, the rest masked), then measures its
accuracy on the "eval" split from k random nonzero pixels: the no-debate baseline a debate must be
compared with. Offline the splits are disjoint parts of the official MNIST test split (see
``amp_debate.data.mnist``); with network access ``--train_split=train --source=tfds`` trains on the
60,000 training images instead.

Writes into ``--workdir``:
  judge_params.msgpack  the params, ``flax.serialization.to_bytes`` of a float32 numpy tree
  judge.json            k, the judge's sizes, the training settings, the data used (one line per
                        split, ``mnist.describe``) and ``eval_accuracy``: the no-debate baseline
``load_judge(workdir) -> (judge, params, record)`` restores both. Bad inputs (k < 1, k larger than
the image, a missing or corrupt data directory) end the CLI with one line on stderr.

The data order is a pure function of (seed, step): step t uses ``fold_in(key(seed), t)`` for its
batch indices (sampled with replacement), its masks and its dropout.
"""

from __future__ import annotations

import json
import os
import time

import chex
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import flags

from amp_debate import cli
from amp_debate.data import mnist
from amp_debate.models import partitioning
from amp_debate.models.judges import ImageJudge
from amp_debate.procedure import sparse_pixels

PARAMS_FILE = "judge_params.msgpack"
RECORD_FILE = "judge.json"
JUDGE_FIELDS = ("num_classes", "features", "kernel_size", "hidden", "dropout", "dtype")


def init_judge(judge: ImageJudge, rng: jax.Array, image_shape=mnist.IMAGE_SHAPE):
  """Fresh params for ``judge`` on images of ``image_shape`` (H, W)."""
  ones = jnp.ones((1, *image_shape), jnp.float32)
  return partitioning.init_params(judge, rng, ones, ones)


def _check_data(images, labels) -> None:
  chex.assert_rank([images, labels], [3, 1])
  chex.assert_equal_shape_prefix([images, labels], 1)
  if images.shape[0] == 0:
    raise ValueError("no images to train or evaluate the judge on")


def train_judge(images, labels, *, k: int, steps: int, batch_size: int = 128, seed: int = 0,
                judge: ImageJudge = ImageJudge(), learning_rate: float = 1e-3,
                progress: bool = False):
  """Trains ``judge`` to classify images from k random nonzero pixels (Adam, cross-entropy).

  Args:
    images: uint8[N, H, W] (or float in [0, 1]) training images.
    labels: int32[N] their classes, in [0, judge.num_classes).
    k: pixels revealed per image (1 <= k <= H * W).
    steps: optimizer steps; each draws ``batch_size`` images with replacement and fresh masks.
    batch_size: images per step.
    seed: the only source of randomness (init, batches, masks, dropout).
    judge: the module to train.
    learning_rate: Adam's learning rate.
    progress: show a tqdm bar with the running loss.
  Returns:
    The trained params (a tree of float32 arrays).
  """
  _check_data(images, labels)
  k = sparse_pixels.check_k(k, images.shape[1:])
  if steps < 0 or batch_size < 1:
    raise ValueError(f"need steps >= 0 and batch_size >= 1, got steps={steps}, "
                     f"batch_size={batch_size}")
  images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
  init_key, data_key = jax.random.split(jax.random.key(seed))
  params = init_judge(judge, init_key, images.shape[1:])
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, step, images, labels):
    index_key, mask_key, dropout_key = jax.random.split(jax.random.fold_in(data_key, step), 3)
    index = jax.random.randint(index_key, (batch_size,), 0, images.shape[0])
    batch, batch_labels = images[index], labels[index]
    revealed, values = sparse_pixels.judge_inputs(
        batch, sparse_pixels.random_reveal_mask(mask_key, batch, k))

    def loss_fn(params):
      logits = judge.apply({"params": params}, revealed, values, deterministic=False,
                           rngs={"dropout": dropout_key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  bar = tqdm.trange(steps, desc=f"judge k={k}", unit="step", disable=not progress)
  for step in bar:
    params, opt_state, loss = train_step(params, opt_state, step, images, labels)
    if progress and step % 100 == 0:
      loss = float(loss)
      if not np.isfinite(loss):
        raise FloatingPointError(f"judge loss is {loss} at step {step}")
      bar.set_postfix(loss=f"{loss:.3f}")
  return params


def judge_accuracy(params, images, labels, k: int, rng: jax.Array, *,
                   judge: ImageJudge = ImageJudge(), draws: int = 1,
                   batch_size: int = 1000) -> float:
  """Accuracy of the judge from k random nonzero pixels per image (the no-debate baseline).

  Args:
    params: the judge's params.
    images: uint8[N, H, W] held-out images; labels: int32[N].
    k: pixels revealed per image.
    rng: key for the masks; draw d of chunk c uses ``fold_in(fold_in(rng, d), c)``.
    judge: the module ``params`` belong to.
    draws: independent mask draws per image; the result averages over N * draws predictions.
    batch_size: images per evaluation chunk.
  Returns:
    The fraction of correct argmax predictions.
  """
  _check_data(images, labels)
  k = sparse_pixels.check_k(k, images.shape[1:])
  images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)

  @jax.jit
  def correct(key, batch, batch_labels):
    revealed, values = sparse_pixels.judge_inputs(
        batch, sparse_pixels.random_reveal_mask(key, batch, k))
    logits = judge.apply({"params": params}, revealed, values)
    return (logits.argmax(-1) == batch_labels).sum()

  total = 0
  for draw in range(draws):
    draw_key = jax.random.fold_in(rng, draw)
    for chunk, start in enumerate(range(0, images.shape[0], batch_size)):
      part = slice(start, start + batch_size)
      total += int(correct(jax.random.fold_in(draw_key, chunk), images[part], labels[part]))
  return total / (images.shape[0] * draws)


def save_module(workdir: str, params, record: dict, *, params_file: str, record_file: str,
                sizes_key: str, sizes: dict) -> None:
  """Writes ``params`` (msgpack) and ``record`` plus the module's ``sizes`` (JSON) to workdir."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, params_file), "wb") as f:
    f.write(flax.serialization.to_bytes(jax.device_get(params)))
  with open(os.path.join(workdir, record_file), "w") as f:
    json.dump({**record, sizes_key: sizes, "params_file": params_file}, f, indent=2)
    f.write("\n")


def load_module(workdir: str, *, record_file: str, sizes_key: str, make, init, what: str):
  """(module, params, record) written by ``save_module``: ``make(**sizes)`` rebuilds the module
  (JSON lists back to tuples), ``init(module, rng)`` gives the params' structure."""
  path = os.path.join(workdir, record_file)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no trained {what} in {workdir} (missing {record_file})")
  with open(path) as f:
    record = json.load(f)
  module = make(**{k: tuple(v) if isinstance(v, list) else v
                   for k, v in record[sizes_key].items()})
  template = jax.eval_shape(lambda r: init(module, r), jax.random.key(0))
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  with open(os.path.join(workdir, record["params_file"]), "rb") as f:
    params = flax.serialization.from_bytes(template, f.read())
  return module, params, record


def save_judge(workdir: str, judge: ImageJudge, params, record: dict) -> None:
  """Writes ``PARAMS_FILE`` and ``RECORD_FILE`` (``record`` plus the judge's sizes) to workdir."""
  save_module(workdir, params, record, params_file=PARAMS_FILE, record_file=RECORD_FILE,
              sizes_key="judge", sizes={name: getattr(judge, name) for name in JUDGE_FIELDS})


def load_judge(workdir: str) -> tuple[ImageJudge, dict, dict]:
  """The judge saved by ``save_judge``: (module, params, the judge.json record)."""
  return load_module(workdir, record_file=RECORD_FILE, sizes_key="judge", make=ImageJudge,
                     init=init_judge, what="judge")


def run(*, k: int, steps: int, workdir: str, batch_size: int = 128, seed: int = 0,
        learning_rate: float = 1e-3, judge: ImageJudge = ImageJudge(),
        train_split: str = "judge_train", eval_split: str = "eval", source: str = "auto",
        mnist_dir: str | None = None, eval_draws: int = 5, progress: bool = True) -> dict:
  """Trains the judge, measures the no-debate baseline, saves both. Returns the judge.json record.

  Raises ValueError / FileNotFoundError / RuntimeError (one-line messages) for a bad k, split or
  source and a missing or corrupt data directory, before any training. With ``mnist_dir`` given,
  source "auto" means "offline": a wrong directory is an error, not a silent switch to TFDS.
  """
  k = sparse_pixels.check_k(k, mnist.IMAGE_SHAPE)
  if mnist_dir is not None and source == "auto":
    source = "offline"
  if eval_draws < 1:
    raise ValueError(f"eval_draws={eval_draws} must be at least 1")
  data = {}
  for role, split in (("train", train_split), ("eval", eval_split)):
    images, labels = mnist.load(split, source=source, offline_dir=mnist_dir)
    data[role] = (images, labels, mnist.describe(split, source=source, offline_dir=mnist_dir))
  start = time.time()
  params = train_judge(*data["train"][:2], k=k, steps=steps, batch_size=batch_size, seed=seed,
                       judge=judge, learning_rate=learning_rate, progress=progress)
  params = jax.block_until_ready(params)
  train_seconds = time.time() - start
  accuracy = judge_accuracy(params, *data["eval"][:2], k, jax.random.key(seed + 1), judge=judge,
                            draws=eval_draws)
  record = dict(
      k=k, steps=steps, batch_size=batch_size, seed=seed, learning_rate=learning_rate,
      train_data=data["train"][2], eval_data=data["eval"][2], eval_draws=eval_draws,
      eval_accuracy=accuracy, train_seconds=round(train_seconds, 1),
      description=(f"no-debate baseline: accuracy of the judge from {k} random nonzero pixels "
                   f"per image, {eval_draws} mask draws per eval image"))
  save_judge(workdir, judge, params, record)
  return record


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program: the MNIST study imports it). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_integer("k", None, "Pixels revealed per image (1..784).", **define)
  flags.DEFINE_integer("steps", 3000, "Training steps.", **define)
  flags.DEFINE_integer("batch_size", 128, "Images per training step.", **define)
  flags.DEFINE_integer("seed", 0, "PRNG seed (init, batches, masks, dropout, eval masks).",
                       **define)
  flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.", **define)
  flags.DEFINE_list("features", ["32", "64"], "Conv channels per layer.", **define)
  flags.DEFINE_integer("hidden", 1024, "Width of the judge's dense layer.", **define)
  flags.DEFINE_string("train_split", "judge_train", "MNIST split to train on.", **define)
  flags.DEFINE_string("eval_split", "eval", "MNIST split for the baseline.", **define)
  flags.DEFINE_enum("source", "auto", list(mnist.SOURCES), "Where MNIST comes from.", **define)
  flags.DEFINE_string("mnist_dir", None, "Offline MNIST copy (default: "
                      "$AMP_DEBATE_MNIST_DIR or ../shared/data/mnist).", **define)
  flags.DEFINE_integer("eval_draws", 5, "Random mask draws per eval image.", **define)
  flags.DEFINE_string("workdir", None, "Where judge.json and the params go.", **define)
  flags.mark_flags_as_required(["k", "workdir"], flag_values=values)
  return values


def main(argv):
  """absl's main: the flags are parsed into FLAGS already (stray arguments refused)."""
  del argv
  values = flags.FLAGS
  try:
    judge = ImageJudge(features=tuple(int(f) for f in values.features), hidden=values.hidden)
    record = run(k=values.k, steps=values.steps, workdir=values.workdir,
                 batch_size=values.batch_size, seed=values.seed,
                 learning_rate=values.learning_rate, judge=judge, train_split=values.train_split,
                 eval_split=values.eval_split, source=values.source, mnist_dir=values.mnist_dir,
                 eval_draws=values.eval_draws)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    cli.fail(str(e))
  print(f"k={record['k']}: eval accuracy from {record['k']} random pixels "
        f"{record['eval_accuracy']:.1%} ({record['eval_data']}); trained {record['steps']} steps "
        f"in {record['train_seconds']} s on {record['train_data']}. Saved to {values.workdir}")


if __name__ == "__main__":
  cli.run(define_flags, main)
