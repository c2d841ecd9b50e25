"""Judges: a transcript judge J (imitates H's verdicts) and an image judge for sparse-pixel debate.

Both are plain ``flax.linen`` modules returning float32 class logits; initialise them with
``partitioning.init_params(module, rng, *example_inputs)`` and apply with
``module.apply({"params": params}, ...)`` (pass ``rngs={"dropout": key}`` with
``deterministic=False`` to train with dropout).
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax.numpy as jnp

from amp_debate.models.config import DTYPES, ModelConfig
from amp_debate.models.layers import Block, Embedder, norm

_partitioned = nn.with_logical_partitioning


class TranscriptJudge(nn.Module):
  """A small bidirectional transformer over a debate transcript -> verdict logits.

  J learns to imitate H's verdicts (e.g. classes EVEN / ODD / DRAW), so H itself need only be called
  on a random fraction of debates. Uses the sizes, positions, norm and dtypes of ``config``; its
  ``mask`` field is ignored (every valid token sees every valid token).

  Attributes:
    config: transformer sizes (``config.max_len`` >= the transcript length T).
    num_classes: number of verdicts.
  """

  config: ModelConfig
  num_classes: int = 3

  @nn.compact
  def __call__(self, tokens, valid=None, deterministic=True):
    """Verdict logits for a batch of transcripts.

    Args:
      tokens: int32[B, T] transcript tokens (PAD is an ordinary token unless masked by ``valid``).
      valid: optional bool[B, T]; False marks padding to ignore (each row needs a True).
      deterministic: no dropout when True.
    Returns:
      float32[B, num_classes].
    """
    cfg = self.config
    chex.assert_rank(tokens, 2)
    chex.assert_type(tokens, jnp.int32)
    batch, length = tokens.shape
    if length > cfg.max_len:
      raise ValueError(f"transcript length {length} exceeds ModelConfig.max_len={cfg.max_len}")
    if valid is None:
      valid = jnp.ones((batch, length), bool)
    chex.assert_shape(valid, (batch, length))
    positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    mask = (valid[:, None, :] | jnp.eye(length, dtype=bool)[None])[:, None]  # [B, 1, T, T]
    x = Embedder(cfg, name="embedder")(tokens, positions)
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    for i in range(cfg.num_layers):
      x, _ = Block(cfg, name=f"block_{i}")(x, positions, mask, deterministic=deterministic)
    x = norm(cfg, "final_norm")(x).astype(jnp.float32)
    weights = valid.astype(jnp.float32)[..., None]
    pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)  # mean over valid tokens
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=cfg.params_dtype,
                      name="head",
                      kernel_init=_partitioned(nn.initializers.lecun_normal(),
                                               ("embed", "classes")),
                      bias_init=_partitioned(nn.initializers.zeros, ("classes",)))(pooled)
    chex.assert_shape(logits, (batch, self.num_classes))
    return logits


class ImageJudge(nn.Module):
  """Sparse-pixel judge: (revealed-pixel mask, revealed values) -> class logits.

  The debate experiment's judge: conv 32@5x5, max-pool 2, conv 64@5x5, max-pool 2, dense 1024,
  dropout, dense ``num_classes`` (the defaults). Unrevealed values are zeroed, so the judge sees
  nothing of a pixel that was not revealed.

  Attributes:
    num_classes: number of labels (10 for MNIST).
    features: output channels of each conv layer.
    kernel_size: square conv kernel width.
    hidden: width of the dense layer.
    dropout: dropout rate before the output layer.
    dtype: compute dtype name; params are float32, logits float32.
  """

  num_classes: int = 10
  features: tuple[int, ...] = (32, 64)
  kernel_size: int = 5
  hidden: int = 1024
  dropout: float = 0.5
  dtype: str = "float32"

  @nn.compact
  def __call__(self, revealed, values, deterministic=True):
    """Class logits from the revealed pixels.

    Args:
      revealed: bool or float[B, H, W], 1 where a pixel was revealed.
      values: float[B, H, W] pixel values (read only where revealed).
      deterministic: no dropout when True.
    Returns:
      float32[B, num_classes].
    """
    if self.dtype not in DTYPES:
      raise ValueError(f"ImageJudge.dtype={self.dtype!r} is not one of {DTYPES}")
    chex.assert_rank([revealed, values], 3)
    chex.assert_equal_shape([revealed, values])
    dtype = jnp.dtype(self.dtype)
    revealed = revealed.astype(jnp.float32)
    x = jnp.stack([revealed, values.astype(jnp.float32) * revealed], axis=-1).astype(dtype)
    for i, features in enumerate(self.features):
      x = nn.Conv(features, (self.kernel_size, self.kernel_size), padding="SAME", dtype=dtype,
                  name=f"conv_{i}",
                  kernel_init=_partitioned(nn.initializers.lecun_normal(),
                                           ("conv_height", "conv_width", "conv_in", "conv_out")),
                  bias_init=_partitioned(nn.initializers.zeros, ("conv_out",)))(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.hidden, dtype=dtype, name="dense",
                 kernel_init=_partitioned(nn.initializers.lecun_normal(),
                                          ("image_features", "mlp")),
                 bias_init=_partitioned(nn.initializers.zeros, ("mlp",)))(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    logits = nn.Dense(self.num_classes, dtype=dtype, name="head",
                      kernel_init=_partitioned(nn.initializers.lecun_normal(), ("mlp", "classes")),
                      bias_init=_partitioned(nn.initializers.zeros, ("classes",)))(x)
    logits = logits.astype(jnp.float32)
    chex.assert_shape(logits, (revealed.shape[0], self.num_classes))
    return logits

