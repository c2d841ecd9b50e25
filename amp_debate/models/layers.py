"""Transformer building blocks shared by the policy model and the transcript judge.

Shapes: B batch, T query tokens, S key tokens, D = d_model, H heads, K = head_dim, F = d_ff.
Every parameter carries logical axis names (see ``partitioning``). Parameters are created in
``config.param_dtype``; activations run in ``config.dtype``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from amp_debate.models.config import ModelConfig

_partitioned = nn.with_logical_partitioning


def norm(config: ModelConfig, name: str) -> nn.Module:
  """Pre-norm layer: LayerNorm or RMSNorm over the residual width (statistics in float32)."""
  kwargs = dict(dtype=config.compute_dtype, param_dtype=config.params_dtype, name=name,
                scale_init=_partitioned(nn.initializers.ones, ("embed",)))
  if config.norm == "rmsnorm":
    return nn.RMSNorm(**kwargs)
  return nn.LayerNorm(bias_init=_partitioned(nn.initializers.zeros, ("embed",)), **kwargs)


def rotary(x: jax.Array, positions: jax.Array, base: float = 10_000.0) -> jax.Array:
  """Rotary position embedding (RoPE, rotate-half form).

  Args:
    x: [B, T, H, K] queries or keys (K even).
    positions: int32[B, T].
  Returns:
    [B, T, H, K] in x's dtype (the rotation is computed in float32).
  """
  half = x.shape[-1] // 2
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, K/2]
  sin, cos = jnp.sin(angles)[:, :, None, :], jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Embedder(nn.Module):
  """Token embedding (+ learned positions); ``attend`` gives tied output logits."""

  config: ModelConfig

  def setup(self):
    cfg = self.config
    init = nn.initializers.normal(stddev=cfg.d_model ** -0.5)
    self.tokens = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
                           param_dtype=cfg.params_dtype,
                           embedding_init=_partitioned(init, ("vocab", "embed")))
    if cfg.positions == "learned":
      self.positions = nn.Embed(cfg.max_len, cfg.d_model, dtype=cfg.compute_dtype,
                                param_dtype=cfg.params_dtype,
                                embedding_init=_partitioned(init, ("positions", "embed")))

  def __call__(self, tokens: jax.Array | None, positions: jax.Array,
               embeddings: jax.Array | None = None) -> jax.Array:
    """int32[B, T] tokens and positions -> [B, T, D].

    ``embeddings`` [B, T, D], when given, stand in for the tokens' embeddings (``tokens`` is then
    unused): the positions are added to them as to ``embed_tokens(tokens)``, so passing
    ``embed_tokens(tokens)`` gives exactly the token path (input-space search, ``safety.adversary``).
    """
    if embeddings is None:
      x = self.tokens(tokens)
    else:
      x = embeddings.astype(self.config.compute_dtype)
    if self.config.positions == "learned":
      x = x + self.positions(positions)
    return x

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    """int32[B, T] -> [B, T, D] the tokens' embeddings alone (no positions), in the compute dtype."""
    return self.tokens(tokens)

  def attend(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> float32[B, T, vocab] logits against the token embedding table."""
    return self.tokens.attend(x).astype(jnp.float32)


class Attention(nn.Module):
  """Multi-head self-attention via ``jax.nn.dot_product_attention``, optionally over a KV cache."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, cache=None, cache_index=None):
    """Attends x's queries to x's keys, or to a cache after writing x's keys into it.

    Args:
      x: [B, T, D].
      positions: int32[B, T] position ids of x's tokens (for rotary embeddings).
      mask: bool[B, 1, T, S]; True where a query may attend to a key. Every row needs a True.
      cache: None (then S = T), or (keys, values), each [B, S, H, K] in the compute dtype.
      cache_index: int32[] where x's keys/values are written into the cache (with a cache only).
    Returns:
      (y [B, T, D], (keys, values) [B, S, H, K]: the cache with x's entries written, or x's own).
    """
    cfg = self.config
    dense = lambda name: nn.DenseGeneral(  # noqa: E731
        (cfg.num_heads, cfg.head_dim), use_bias=False, dtype=cfg.compute_dtype,
        param_dtype=cfg.params_dtype, name=name,
        kernel_init=_partitioned(nn.initializers.lecun_normal(), ("embed", "heads", "kv")))
    q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)
    if cfg.positions == "rotary":
      q, k = rotary(q, positions), rotary(k, positions)
    if cache is not None:
      k = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), cache_index, 1)
      v = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), cache_index, 1)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=cfg.attention_impl)
    y = nn.DenseGeneral(
        cfg.d_model, axis=(-2, -1), use_bias=False, dtype=cfg.compute_dtype,
        param_dtype=cfg.params_dtype, name="out",
        kernel_init=_partitioned(nn.initializers.lecun_normal(), ("heads", "kv", "embed")))(out)
    return y, (k, v)


class Mlp(nn.Module):
  """Two-layer GELU MLP, D -> F -> D."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    kwargs = dict(use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype)
    h = nn.Dense(cfg.d_ff, name="up", **kwargs,
                 kernel_init=_partitioned(nn.initializers.lecun_normal(), ("embed", "mlp")))(x)
    h = nn.gelu(h)
    return nn.Dense(cfg.d_model, name="down", **kwargs,
                    kernel_init=_partitioned(nn.initializers.lecun_normal(), ("mlp", "embed")))(h)


class Block(nn.Module):
  """Pre-norm transformer block: x + Attn(Norm(x)), then + Mlp(Norm(·)), dropout on both branches.

  Sows its output into the "intermediates" collection as ``residual`` (for representation analyses;
  free unless that collection is made mutable).
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, x, positions, mask, cache=None, cache_index=None, deterministic=True):
    """Same arguments as ``Attention`` plus ``deterministic`` (no dropout) -> (x [B, T, D], kv)."""
    drop = nn.Dropout(self.config.dropout)
    h, kv = Attention(self.config, name="attention")(
        norm(self.config, "attention_norm")(x), positions, mask, cache, cache_index)
    x = x + drop(h, deterministic=deterministic)
    h = Mlp(self.config, name="mlp")(norm(self.config, "mlp_norm")(x))
    x = x + drop(h, deterministic=deterministic)
    self.sow("intermediates", "residual", x)
    return x, kv
