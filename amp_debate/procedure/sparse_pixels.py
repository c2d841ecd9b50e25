"""Sparse-pixel MNIST: which pixels the judge sees and what it sees there (pure, jittable).

The no-debate baseline of the debate paper reveals k random NONZERO pixels of each image to the
judge and masks the rest; with debate, the debaters choose the k pixels instead. Either way the judge gets
``judge_inputs(images, mask)``: the mask and the pixel values in [0, 1], zero wherever unrevealed.
"""

from __future__ import annotations

import math
import operator

import chex
import jax
import jax.numpy as jnp


def check_k(k: int, image_shape: tuple[int, ...]) -> int:
  """Returns k as an int; raises ValueError (one line) unless 1 <= k <= pixels of one image."""
  pixels = math.prod(image_shape)
  try:
    if isinstance(k, bool):
      raise TypeError
    k = operator.index(k)
  except TypeError:
    raise ValueError(f"k={k!r} must be an integer number of pixels") from None
  if k < 1:
    raise ValueError(f"k={k} must be at least 1 (the judge must see a pixel)")
  if k > pixels:
    raise ValueError(f"k={k} is larger than the image ({pixels} pixels)")
  return k


def random_reveal_mask(rng: jax.Array, images: jax.Array, k: int) -> jax.Array:
  """k random nonzero pixels of each image, uniformly among its nonzero pixels.

  An image with fewer than k nonzero pixels reveals all of them plus random zero pixels, so every
  image reveals exactly k distinct pixels (the judge's input size never varies). Implementation:
  each pixel draws u ~ U[0, 1); nonzero pixels score 1 + u, zero pixels u; the k best are revealed.

  Args:
    rng: a PRNG key; the same key and images give the same mask.
    images: [B, H, W] pixel values of any numeric dtype (0 = background).
    k: static number of pixels to reveal, 1 <= k <= H * W.
  Returns:
    bool[B, H, W] with exactly k True entries per image.
  """
  chex.assert_rank(images, 3)
  batch, height, width = images.shape
  k = check_k(k, (height, width))
  nonzero = (images != 0).reshape(batch, height * width)
  scores = jax.random.uniform(rng, nonzero.shape) + nonzero.astype(jnp.float32)
  _, chosen = jax.lax.top_k(scores, k)  # [B, k], distinct indices per row
  mask = jnp.zeros((batch, height * width), bool).at[jnp.arange(batch)[:, None], chosen].set(True)
  return mask.reshape(batch, height, width)


def judge_inputs(images: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """What the image judge sees: (revealed, values) for ``ImageJudge.__call__``.

  Args:
    images: uint8[B, H, W] (0..255) or float[B, H, W] already in [0, 1].
    mask: bool[B, H, W], True where revealed.
  Returns:
    (revealed float32[B, H, W] in {0, 1}, values float32[B, H, W]: the pixel in [0, 1] where
    revealed, 0 elsewhere).
  """
  chex.assert_rank([images, mask], 3)
  chex.assert_equal_shape([images, mask])
  chex.assert_type(mask, bool)
  values = images.astype(jnp.float32)
  if images.dtype == jnp.uint8:
    values = values / 255.0
  return mask.astype(jnp.float32), jnp.where(mask, values, 0.0)
