"""The policy model M: a decoder-only transformer over the task's tokens, with KV-cache sampling.

One model plays every role (answerer, supporter, stop, verdict, review): each role is a
prompt (a protocol question) and M answers it with ``answer_len`` tokens.

Conventions (all functions are pure and jittable; shapes are static):
  prompts   int32[B, Lp]  LEFT-padded with PAD (``config.pad_id``, by default the tasks' PAD = 0):
                          a prompt's real tokens are right-aligned, so the answer always starts
                          at index Lp. Only the leading run of PAD tokens is padding (a PAD
                          inside a prompt is an ordinary token); pass
                          ``prompt_lengths`` int32[B] to state the real lengths explicitly instead.
                          Padding keys are never attended to and position ids start at 0 on the
                          first real token, so the amount of padding does not change answers.
                          Every prompt needs at least one real token.
  answers   int32[B, La]  fixed length La (static); ``answer_mask`` bool[B, La] marks scored tokens.
  sequence  prompts ++ answers[:, :-1], length Lp + La - 1 <= config.max_len.
  mask      "causal": token i sees real tokens j <= i. "prefix": prompt tokens see the whole (real)
            prompt; answer tokens see the prompt and earlier answer tokens.
  KV cache  ``KVCache``: per layer (keys, values), each [B, Lp + La - 1, H, K] in the compute dtype,
            the leading pad count per row and the next write index. ``prefill`` runs the prompt in
            one pass; ``decode_step`` appends one token. ``sample`` = prefill + ``lax.scan``.

Entry point: ``LanguageModel(config)``, a frozen (hashable) description whose methods are pure
functions of ``params``: ``init``, ``logical_axes``, ``answer_logits``, ``log_prob``, ``prefill``,
``decode_step``, ``sample`` and the reference ``greedy_full_recompute``; ``embed`` and
``answer_logits_from_embeddings`` take the prompts as input embeddings instead of tokens (a search
in input space, ``safety.adversary``).
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from amp_debate.models import partitioning
from amp_debate.models.config import DEFAULT_PAD_ID, ModelConfig
from amp_debate.models.layers import Block, Embedder, norm


class Transformer(nn.Module):
  """Embedder, ``num_layers`` pre-norm blocks, final norm, tied or untied output head."""

  config: ModelConfig

  @nn.compact
  def __call__(self, tokens, positions, mask, cache=None, cache_index=None, deterministic=True,
               logits_from: int = 0, embeddings=None):
    """Logits for a token sequence, optionally appending it to a KV cache.

    Args:
      tokens: int32[B, T] (unused, and may be None, when ``embeddings`` are given).
      positions: int32[B, T] position ids.
      mask: bool[B, 1, T, S] attention mask (S = T without a cache, else the cache length).
      cache: None or a tuple over layers of (keys, values), each [B, S, H, K].
      cache_index: int32[] where the T new entries are written (with a cache only).
      deterministic: no dropout when True.
      logits_from: static; logits are computed for tokens[:, logits_from:] only.
      embeddings: optional [B, T, D] input embeddings that replace the tokens' embeddings
        (``Embedder``: positions are still added); the token embedding table still gives the
        tied output logits.
    Returns:
      (logits float32[B, T - logits_from, vocab], tuple over layers of (keys, values)).
    """
    cfg = self.config
    embedder = Embedder(cfg, name="embedder")
    x = nn.Dropout(cfg.dropout)(embedder(tokens, positions, embeddings),
                                deterministic=deterministic)
    kvs = []
    for i in range(cfg.num_layers):
      x, kv = Block(cfg, name=f"block_{i}")(
          x, positions, mask, None if cache is None else cache[i], cache_index, deterministic)
      kvs.append(kv)
    x = norm(cfg, "final_norm")(x[:, logits_from:])
    if cfg.tie_embeddings:
      logits = embedder.attend(x)
    else:
      logits = nn.Dense(
          cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
          name="head", kernel_init=nn.with_logical_partitioning(
              nn.initializers.lecun_normal(), ("embed", "vocab")))(x)
    return logits.astype(jnp.float32), tuple(kvs)


@functools.partial(jax.jit, static_argnames=("config", "deterministic", "logits_from"), inline=True)
def _apply(config: ModelConfig, params, tokens, positions, mask, *, cache=None, cache_index=None,
           embeddings=None, rngs=None, deterministic: bool = True, logits_from: int = 0):
  """``Transformer(config).apply`` as a jitted function inlined into its caller: within a traced
  program, calls with the same shapes reuse one trace of the module (a train step applies M about
  24 times at a few shapes; flax's Python ran at every call); the program is unchanged."""
  return Transformer(config).apply({"params": params}, tokens, positions, mask, cache=cache,
                                   cache_index=cache_index, deterministic=deterministic,
                                   logits_from=logits_from, rngs=rngs or {},
                                   embeddings=embeddings)


@flax.struct.dataclass
class KVCache:
  """Keys and values of every token run so far.

  Attributes:
    layers: tuple over layers of (keys, values), each [B, S, H, K] (S = Lp + La - 1).
    pad: int32[B] leading pad tokens of each prompt (their keys are never attended to).
    index: int32[] index of the next token to write (Lp after prefill).
  """

  layers: tuple
  pad: jax.Array
  index: jax.Array


@flax.struct.dataclass
class Sample:
  """Sampled answers.

  Attributes:
    tokens: int32[B, La].
    log_probs: float32[B, La] log-probability of each token under softmax(logits / temperature),
      equal to ``log_prob(params, prompts, tokens, temperature=temperature)``.
  """

  tokens: jax.Array
  log_probs: jax.Array


def leading_pad(prompts: jax.Array, prompt_lengths: jax.Array | None = None, *,
                pad_id: int = DEFAULT_PAD_ID) -> jax.Array:
  """int32[B]: number of leading ``pad_id`` tokens of each prompt (Lp - prompt_lengths if given)."""
  if prompt_lengths is not None:
    chex.assert_shape(prompt_lengths, prompts.shape[:1])
    return (prompts.shape[1] - prompt_lengths).astype(jnp.int32)
  leading = jnp.cumprod((prompts == pad_id).astype(jnp.int32), axis=1)
  return leading.sum(axis=1).astype(jnp.int32)


def attention_mask(query_index, key_index, pad, prefix_len: int | None = None) -> jax.Array:
  """bool[B, 1, T, S]: which keys each query may attend to.

  Args:
    query_index: int32[T] sequence indices of the queries.
    key_index: int32[S] sequence indices of the keys.
    pad: int32[B] leading pad tokens per row; keys at indices < pad are hidden.
    prefix_len: None for a causal mask; Lp for prefix-LM (keys < Lp visible to every query).
  A query always sees its own key, so padding rows (whose outputs are never used) stay finite.
  """
  q, k = query_index[:, None], key_index[None, :]
  visible = k <= q
  if prefix_len is not None:
    visible = visible | (k < prefix_len)
  mask = visible[None] & (key_index[None, None, :] >= pad[:, None, None])
  mask = mask | (k == q)[None]
  return mask[:, None]


def position_ids(index: jax.Array, pad: jax.Array) -> jax.Array:
  """int32[B, T]: position of each sequence index, counted from the first real token (pads: 0)."""
  return jnp.maximum(index[None, :] - pad[:, None], 0).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class LanguageModel:
  """M as pure functions of its parameters (see the module docstring for conventions)."""

  config: ModelConfig

  @property
  def module(self) -> Transformer:
    return Transformer(self.config)

  # ---- parameters ----------------------------------------------------------------------------
  def _init_inputs(self):
    tokens = jnp.zeros((1, 1), jnp.int32)
    return tokens, tokens, jnp.ones((1, 1, 1, 1), bool)

  def init(self, rng: jax.Array):
    """Parameters (a dict of float arrays in ``param_dtype``), without partitioning boxes."""
    return partitioning.init_params(self.module, rng, *self._init_inputs())

  def logical_axes(self):
    """PartitionSpecs of logical axis names, shaped like ``init``'s result (computed abstractly)."""
    return partitioning.logical_axes(self.module, *self._init_inputs())

  # ---- teacher forcing ----------------------------------------------------------------------
  def _check_lengths(self, prompt_len: int, answer_len: int):
    if prompt_len < 1 or answer_len < 1:
      raise ValueError(f"prompt and answer lengths must be >= 1, got {prompt_len}, {answer_len}")
    if prompt_len + answer_len - 1 > self.config.max_len:
      raise ValueError(f"prompt length {prompt_len} + answer length {answer_len} - 1 exceeds "
                       f"ModelConfig.max_len={self.config.max_len}")

  def answer_logits(self, params, prompts, answers, *, prompt_lengths=None, dropout_rng=None):
    """Teacher-forced logits predicting each answer token, in one parallel pass.

    Args:
      params: from ``init``.
      prompts: int32[B, Lp] left-padded prompts.
      answers: int32[B, La].
      prompt_lengths: optional int32[B] real prompt lengths (default: leading PADs are padding).
      dropout_rng: optional key; dropout is applied only when given (and config.dropout > 0).
    Returns:
      float32[B, La, vocab]: row t scores answers[:, t] given the prompt and answers[:, :t].
    """
    chex.assert_rank([prompts, answers], 2)
    chex.assert_type([prompts, answers], jnp.int32)
    chex.assert_equal_shape_prefix([prompts, answers], 1)
    tokens = jnp.concatenate([prompts, answers[:, :-1]], axis=1)
    pad = leading_pad(prompts, prompt_lengths, pad_id=self.config.pad_id)
    return self._teacher_forced(params, pad, prompts.shape[1], answers.shape[1], dropout_rng,
                                tokens=tokens)

  def embed(self, params, tokens):
    """int32[B, T] tokens -> [B, T, D] their input embeddings, in the compute dtype: the token
    table's rows alone (``Embedder`` adds the positions inside the model). What
    ``answer_logits_from_embeddings`` takes in place of the prompts' tokens."""
    chex.assert_type(tokens, jnp.int32)
    return Embedder(self.config).apply({"params": params["embedder"]}, tokens,
                                       method=Embedder.embed_tokens)

  def answer_logits_from_embeddings(self, params, prompt_embeddings, answers, *, prompt_lengths,
                                    dropout_rng=None):
    """``answer_logits`` with the prompts given as input embeddings (a search in input space).

    ``answer_logits_from_embeddings(params, embed(params, prompts), answers,
    prompt_lengths=lengths)`` equals ``answer_logits(params, prompts, answers,
    prompt_lengths=lengths)`` exactly.

    Args:
      params: from ``init``.
      prompt_embeddings: float[B, Lp, D] left-padded like prompts: the first
        Lp - prompt_lengths positions are padding, never attended to.
      answers: int32[B, La], embedded by the token table.
      prompt_lengths: int32[B] the real prompt lengths (padding cannot be read off embeddings).
      dropout_rng: as in ``answer_logits``.
    Returns:
      float32[B, La, vocab].
    """
    chex.assert_rank([prompt_embeddings, answers], [3, 2])
    chex.assert_type(answers, jnp.int32)
    chex.assert_shape(prompt_embeddings, (answers.shape[0], None, self.config.d_model))
    embeddings = jnp.concatenate([prompt_embeddings.astype(self.config.compute_dtype),
                                  self.embed(params, answers[:, :-1])], axis=1)
    prompt_len = prompt_embeddings.shape[1]
    pad = (prompt_len - prompt_lengths).astype(jnp.int32)
    return self._teacher_forced(params, pad, prompt_len, answers.shape[1], dropout_rng,
                                embeddings=embeddings)

  def _teacher_forced(self, params, pad, prompt_len: int, answer_len: int, dropout_rng, *,
                      tokens=None, embeddings=None):
    """Logits float32[B, La, vocab] of a prompt ++ answers[:, :-1] sequence given as tokens
    int32[B, Lp + La - 1] or as embeddings [B, Lp + La - 1, D], pad int32[B] leading pads."""
    self._check_lengths(prompt_len, answer_len)
    inputs = tokens if embeddings is None else embeddings
    batch = inputs.shape[0]
    index = jnp.arange(inputs.shape[1])
    prefix = prompt_len if self.config.mask == "prefix" else None
    rngs = {} if dropout_rng is None else {"dropout": dropout_rng}
    logits, _ = _apply(
        self.config, params, tokens, position_ids(index, pad),
        attention_mask(index, index, pad, prefix), deterministic=dropout_rng is None,
        logits_from=prompt_len - 1, rngs=rngs, embeddings=embeddings)
    chex.assert_shape(logits, (batch, answer_len, self.config.vocab_size))
    return logits

  def log_prob(self, params, prompts, answers, *, answer_mask=None, prompt_lengths=None,
               temperature=1.0, dropout_rng=None):
    """Per-token log-probabilities of given answers (teacher forcing, one parallel pass).

    Args:
      params, prompts, answers, prompt_lengths, dropout_rng: as in ``answer_logits``.
      answer_mask: optional bool[B, La]; False positions get log-prob 0.
      temperature: positive float; log-probs under softmax(logits / temperature).
    Returns:
      float32[B, La].
    """
    logits = self.answer_logits(params, prompts, answers, prompt_lengths=prompt_lengths,
                                dropout_rng=dropout_rng)
    log_probs = token_log_probs(logits, answers, temperature)
    if answer_mask is not None:
      chex.assert_equal_shape([answer_mask, answers])
      log_probs = jnp.where(answer_mask, log_probs, 0.0)
    return log_probs

  # ---- KV-cache decoding ----------------------------------------------------------------------
  def prefill(self, params, prompts, *, answer_len: int, prompt_lengths=None):
    """Runs the prompts in one pass and caches their keys/values.

    Args:
      params: from ``init``.
      prompts: int32[B, Lp] left-padded prompts.
      answer_len: static La; the cache holds Lp + La - 1 entries.
      prompt_lengths: optional int32[B] real prompt lengths.
    Returns:
      (logits float32[B, vocab] for the first answer token, KVCache with index Lp).
    """
    chex.assert_rank(prompts, 2)
    chex.assert_type(prompts, jnp.int32)
    cfg = self.config
    batch, prompt_len = prompts.shape
    self._check_lengths(prompt_len, answer_len)
    cache_len = prompt_len + answer_len - 1
    empty = jnp.zeros((batch, cache_len, cfg.num_heads, cfg.head_dim), cfg.compute_dtype)
    pad = leading_pad(prompts, prompt_lengths, pad_id=self.config.pad_id)
    index = jnp.arange(prompt_len)
    prefix = prompt_len if cfg.mask == "prefix" else None
    logits, layers = _apply(
        self.config, params, prompts, position_ids(index, pad),
        attention_mask(index, jnp.arange(cache_len), pad, prefix),
        cache=tuple((empty, empty) for _ in range(cfg.num_layers)),
        cache_index=jnp.asarray(0, jnp.int32), logits_from=prompt_len - 1)
    chex.assert_shape(logits, (batch, 1, cfg.vocab_size))
    return logits[:, 0], KVCache(layers=layers, pad=pad, index=jnp.asarray(prompt_len, jnp.int32))

  def decode_step(self, params, cache: KVCache, tokens):
    """Appends one token per row to the cache.

    Args:
      params: from ``init``.
      cache: KVCache whose next index is still free.
      tokens: int32[B] the latest answer tokens.
    Returns:
      (logits float32[B, vocab] for the next token, KVCache with index + 1).
    """
    chex.assert_rank(tokens, 1)
    chex.assert_type(tokens, jnp.int32)
    index = cache.index[None]
    cache_len = cache.layers[0][0].shape[1]
    logits, layers = _apply(
        self.config, params, tokens[:, None], position_ids(index, cache.pad),
        attention_mask(index, jnp.arange(cache_len), cache.pad), cache=cache.layers,
        cache_index=cache.index)
    chex.assert_shape(logits, (tokens.shape[0], 1, self.config.vocab_size))
    return logits[:, 0], cache.replace(layers=layers, index=cache.index + 1)

  def sample(self, params, prompts, rng, *, answer_len: int, temperature=1.0, greedy=False,
             prompt_lengths=None) -> Sample:
    """Autoregressive answers with a KV cache: prefill once, then one token per ``lax.scan`` step.

    Args:
      params: from ``init``.
      prompts: int32[B, Lp] left-padded prompts.
      rng: PRNG key (unused when greedy).
      answer_len: static La.
      temperature: positive float (may be traced); tokens ~ softmax(logits / temperature).
      greedy: bool (may be traced): take the argmax token instead of sampling.
      prompt_lengths: optional int32[B] real prompt lengths.
    Returns:
      Sample(tokens int32[B, La], log_probs float32[B, La]).
    """
    logits, cache = self.prefill(params, prompts, answer_len=answer_len,
                                 prompt_lengths=prompt_lengths)

    def choose(logits, key):
      token = jnp.where(greedy, jnp.argmax(logits, axis=-1),
                        jax.random.categorical(key, logits / temperature, axis=-1))
      token = token.astype(jnp.int32)
      return token, token_log_probs(logits, token, temperature)

    keys = jax.random.split(rng, answer_len)
    first = choose(logits, keys[0])

    def step(carry, key):
      cache, token = carry
      logits, cache = self.decode_step(params, cache, token)
      token, log_prob = choose(logits, key)
      return (cache, token), (token, log_prob)

    _, (tokens, log_probs) = jax.lax.scan(step, (cache, first[0]), keys[1:])
    tokens = jnp.concatenate([first[0][:, None], tokens.T], axis=1)
    log_probs = jnp.concatenate([first[1][:, None], log_probs.T], axis=1)
    chex.assert_shape([tokens, log_probs], (prompts.shape[0], answer_len))
    return Sample(tokens=tokens, log_probs=log_probs)

  def greedy_full_recompute(self, params, prompts, *, answer_len: int, prompt_lengths=None):
    """Reference greedy decoding without a cache: one full forward pass per answer token.

    Returns int32[B, La]; equals ``sample(..., greedy=True).tokens`` (tests check this).
    """
    answers = jnp.zeros((prompts.shape[0], answer_len), jnp.int32)

    def body(t, answers):
      logits = self.answer_logits(params, prompts, answers, prompt_lengths=prompt_lengths)
      token = jnp.argmax(logits[:, t], axis=-1).astype(jnp.int32)
      return answers.at[:, t].set(token)

    return jax.lax.fori_loop(0, answer_len, body, answers)


def token_log_probs(logits, tokens, temperature):
  """float32[..., V] logits, int32[...] tokens -> float32[...] log softmax(logits / T)[token]."""
  log_probs = jax.nn.log_softmax(logits / temperature, axis=-1)
  return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
