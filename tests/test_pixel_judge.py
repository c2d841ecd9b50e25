"""Sparse-pixel judge: the random reveal mask, what the judge sees, training, the CLI's errors."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from amp_debate.data import mnist
from amp_debate.models.judges import ImageJudge
from amp_debate.procedure import sparse_pixels
from amp_debate.tools import mnist_judge

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ImageJudge(features=(4, 8), hidden=32)


def _images(rng, batch, density):
  """uint8[batch, 28, 28]: each pixel nonzero (1..255) with probability ``density``."""
  on = rng.random((batch, 28, 28)) < density
  return np.where(on, rng.integers(1, 256, (batch, 28, 28)), 0).astype(np.uint8)


def test_reveal_mask_shows_k_nonzero_pixels_and_is_deterministic():
  images = _images(np.random.default_rng(0), 16, 0.2)
  mask_fn = jax.jit(sparse_pixels.random_reveal_mask, static_argnums=2)
  mask = np.asarray(mask_fn(jax.random.key(0), images, 6))
  assert mask.shape == (16, 28, 28) and mask.dtype == bool
  assert (mask.sum((1, 2)) == 6).all()
  assert (images[mask] != 0).all()
  np.testing.assert_array_equal(mask_fn(jax.random.key(0), images, 6), mask)
  assert (np.asarray(mask_fn(jax.random.key(1), images, 6)) != mask).any()
  # Uniform among the nonzero pixels: over many keys every nonzero pixel of an image shows up.
  seen = sum(np.asarray(mask_fn(jax.random.key(s), images, 6))[0] for s in range(200))
  assert (seen[images[0] != 0] > 0).all() and (seen[images[0] == 0] == 0).all()


def test_reveal_mask_pads_sparse_images_with_zero_pixels():
  images = np.zeros((3, 28, 28), np.uint8)
  images[0, 3, 4], images[0, 10, 10] = 7, 200  # two nonzero pixels
  images[2] = 9  # all nonzero
  mask = np.asarray(sparse_pixels.random_reveal_mask(jax.random.key(0), images, 4))
  assert (mask.sum((1, 2)) == 4).all()
  assert mask[0, 3, 4] and mask[0, 10, 10]  # every nonzero pixel, then zeros
  full = sparse_pixels.random_reveal_mask(jax.random.key(0), images, 784)
  assert np.asarray(full).all()


@pytest.mark.parametrize("k, message", [(0, "k=0 must be at least 1"),
                                        (1000, r"k=1000 is larger than the image \(784 pixels\)"),
                                        (2.5, "k=2.5 must be an integer")])
def test_bad_k_is_refused(k, message):
  with pytest.raises(ValueError, match=message):
    sparse_pixels.random_reveal_mask(jax.random.key(0), jnp.zeros((1, 28, 28)), k)


def test_judge_inputs_are_the_image_at_revealed_pixels_and_zero_elsewhere():
  images = _images(np.random.default_rng(1), 4, 0.5)
  mask = np.asarray(sparse_pixels.random_reveal_mask(jax.random.key(2), images, 10))
  revealed, values = map(np.asarray, sparse_pixels.judge_inputs(images, mask))
  assert revealed.dtype == values.dtype == np.float32
  np.testing.assert_array_equal(revealed, mask.astype(np.float32))
  np.testing.assert_allclose(values[mask], images[mask] / 255.0, rtol=1e-6)
  assert (values[~mask] == 0).all()
  floats = images / 255.0  # float images are taken as already in [0, 1]
  np.testing.assert_allclose(sparse_pixels.judge_inputs(floats, mask)[1], values, rtol=1e-6)


def _quadrant_data(seed, n):
  """Synthetic easy task: label = the quadrant (0..3) holding all of the image's nonzero pixels."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 4, n).astype(np.int32)
  images = np.zeros((n, 28, 28), np.uint8)
  for i, label in enumerate(labels):
    row, col = 14 * (label // 2), 14 * (label % 2)
    images[i, row:row + 14, col:col + 14] = _images(rng, 1, 0.3)[0, :14, :14]
  return images, labels


def test_a_briefly_trained_judge_beats_chance():
  images, labels = _quadrant_data(0, 512)
  params = mnist_judge.train_judge(images, labels, k=2, steps=40, batch_size=32, seed=0,
                                   judge=TINY, learning_rate=3e-3)
  test_images, test_labels = _quadrant_data(1, 256)
  accuracy = mnist_judge.judge_accuracy(params, test_images, test_labels, 2, jax.random.key(0),
                                        judge=TINY, batch_size=128)
  assert accuracy > 0.6, accuracy  # chance: 0.25
  assert mnist_judge.judge_accuracy(params, test_images, test_labels, 2, jax.random.key(0),
                                    judge=TINY, batch_size=128) == accuracy  # deterministic


def test_run_saves_the_judge_and_names_the_data(tmp_path):
  record = mnist_judge.run(k=4, steps=3, batch_size=8, judge=TINY, workdir=str(tmp_path),
                           source="offline", eval_draws=1, progress=False)
  saved = json.loads((tmp_path / mnist_judge.RECORD_FILE).read_text())
  assert saved["train_data"] == mnist.describe("judge_train", source="offline")
  assert saved["eval_data"].startswith("MNIST official test split [8000, 10000)")
  assert saved["k"] == 4 and 0 <= saved["eval_accuracy"] == record["eval_accuracy"] <= 1
  judge, params, _ = mnist_judge.load_judge(str(tmp_path))
  assert judge == TINY
  images, labels = mnist.load("eval", source="offline")
  assert mnist_judge.judge_accuracy(params, images, labels, 4, jax.random.key(1), judge=judge,
                                    draws=1) == record["eval_accuracy"]


def test_cli_with_k_larger_than_the_image_ends_with_one_line(tmp_path):
  result = subprocess.run([sys.executable, "-m", "amp_debate.tools.mnist_judge", "--k=1000",
                           f"--workdir={tmp_path / 'work'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr == "error: k=1000 is larger than the image (784 pixels)\n", result.stderr
  assert not (tmp_path / "work").exists()


def test_a_wrong_data_directory_is_a_one_line_error(tmp_path):
  # The CLI turns these errors into "error: <message>" (checked for k above, in a subprocess).
  with pytest.raises(FileNotFoundError, match="MNIST offline directory .*nowhere does not exist"
                     ) as error:
    mnist_judge.run(k=4, steps=1, workdir=str(tmp_path / "work"), judge=TINY,
                    mnist_dir=str(tmp_path / "nowhere"))  # mnist_dir given: no fallback to TFDS
  assert "\n" not in str(error.value)
  assert not (tmp_path / "work").exists()
