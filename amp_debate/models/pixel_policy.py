"""A learned sparse-pixel debater: (image, revealed pixels, own claim, opponent's claim) -> pixel logits.

Unlike the judge, a debater sees the whole image. Which pixels help a claim depends on where they
are and on the two claims, so each claim also selects a learned map over the image (one per class,
``map_own`` and ``map_other``, float[H, W]); the rest is fully convolutional, with the claims also
entering as a learned bias on the first layer's features, and a global summary (the mean of the last
features) added back before the 1x1 output convolution:

  x      = [image, revealed, image * revealed, map_own, map_other, image * map_own,
            image * map_other]                               float[B, H, W, 7]
  h      = relu(conv_0(x) + embed_own(own) + embed_other(other))
  h      = relu(conv_i(h))                                  for the other ``features``
  h      = h + dense(mean_hw(h))
  logits = conv_1x1(h)                                      float[B, H*W] (row-major pixels)

Legality (unrevealed, nonzero) is the caller's to mask (``procedure.pixel_debate.policy_player``).
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax.numpy as jnp

_partitioned = nn.with_logical_partitioning


def _conv(features, size, name):
  return nn.Conv(features, (size, size), padding="SAME", name=name,
                 kernel_init=_partitioned(nn.initializers.lecun_normal(),
                                          ("conv_height", "conv_width", "conv_in", "conv_out")),
                 bias_init=_partitioned(nn.initializers.zeros, ("conv_out",)))


class PixelDebater(nn.Module):
  """Per-pixel reveal logits for the side to move.

  Attributes:
    num_classes: number of labels a side can claim.
    features: channels of each conv layer (the first is ``kernel_sizes[0]`` wide, and so on).
    kernel_sizes: square kernel width of each conv layer (same length as ``features``).
  """

  num_classes: int = 10
  features: tuple[int, ...] = (16, 16)
  kernel_sizes: tuple[int, ...] = (5, 3)

  @nn.compact
  def __call__(self, image, revealed, own, other):
    """Reveal logits.

    Args:
      image: float[B, H, W] the whole image, values in [0, 1].
      revealed: bool or float[B, H, W], 1 where already revealed.
      own, other: int32[B] the mover's claim and the opponent's claim.
    Returns:
      float32[B, H*W].
    """
    if len(self.features) != len(self.kernel_sizes) or not self.features:
      raise ValueError(f"PixelDebater.features {self.features} and kernel_sizes "
                       f"{self.kernel_sizes} must be non-empty and of the same length")
    chex.assert_rank([image, revealed, own, other], [3, 3, 1, 1])
    chex.assert_equal_shape([image, revealed])
    batch, height, width = image.shape
    image = image.astype(jnp.float32)
    revealed = revealed.astype(jnp.float32)
    maps = lambda name: nn.Embed(self.num_classes, height * width, name=name,
                                 embedding_init=_partitioned(nn.initializers.normal(0.1),
                                                             ("classes", "image_features")))
    map_own = maps("map_own")(own).reshape(batch, height, width)
    map_other = maps("map_other")(other).reshape(batch, height, width)
    x = jnp.stack([image, revealed, image * revealed, map_own, map_other, image * map_own,
                   image * map_other], axis=-1)
    embed = lambda name: nn.Embed(self.num_classes, self.features[0], name=name,
                                  embedding_init=_partitioned(nn.initializers.normal(0.1),
                                                              ("classes", "conv_out")))
    bias = embed("embed_own")(own) + embed("embed_other")(other)
    h = nn.relu(_conv(self.features[0], self.kernel_sizes[0], "conv_0")(x)
                + bias[:, None, None, :])
    for i, (f, size) in enumerate(zip(self.features[1:], self.kernel_sizes[1:]), start=1):
      h = nn.relu(_conv(f, size, f"conv_{i}")(h))
    summary = nn.Dense(h.shape[-1], name="summary",
                       kernel_init=_partitioned(nn.initializers.lecun_normal(),
                                                ("conv_in", "conv_out")),
                       bias_init=_partitioned(nn.initializers.zeros, ("conv_out",)))(h.mean((1, 2)))
    h = h + summary[:, None, None, :]
    logits = _conv(1, 1, "out")(h)[..., 0].reshape(batch, height * width)
    chex.assert_shape(logits, (batch, height * width))
    return logits.astype(jnp.float32)
