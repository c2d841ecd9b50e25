"""Model configuration: a frozen, validated dataclass, named size presets, logical sharding rules.

One model M plays every role (answerer, supporter, stop, verdict, review), so one
``ModelConfig`` describes it. Sizes are chosen deeper rather than wider: a question like σ^k(x)
needs about one chained look-up per layer, so depth helps these tasks more than width.

| preset | layers | d_model | heads | d_ff | use |
|---|---|---|---|---|---|
| tiny  | 2  | 32   | 2  | 64   | unit tests (seconds on a CPU) |
| small | 6  | 128  | 4  | 512  | CPU runs |
| base  | 8  | 256  | 8  | 1024 | one accelerator |
| large | 24 | 1024 | 16 | 4096 | pod slices (sharded via ``partitioning.LOGICAL_AXIS_RULES``) |
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from amp_debate import checks

POSITIONS = ("learned", "rotary")
MASKS = ("causal", "prefix")
NORMS = ("layernorm", "rmsnorm")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = (None, "xla", "cudnn")
# The padding token id of every task tokenizer (``tasks.tokenizer.PAD``); models never import tasks,
# so the id travels in the config.
DEFAULT_PAD_ID = 0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Decoder-only transformer over a task's token language (checked on construction:
  ``checks.FieldError`` names the field).

  Attributes:
    vocab_size: number of token ids (the task tokenizer's ``vocab_size``).
    num_layers: transformer blocks.
    d_model: residual width.
    num_heads: attention heads; must divide ``d_model``.
    d_ff: hidden width of each block's MLP.
    max_len: longest sequence (prompt + answer - 1) the model is ever run on; learned position
      tables have this many rows.
    positions: "learned" (a position embedding table) or "rotary" (RoPE on queries and keys).
    tie_embeddings: output logits use the input embedding table (else a separate head).
    mask: "causal" (every token sees only earlier ones) or "prefix" (prefix-LM: bidirectional over
      the prompt, causal over the answer).
    norm: "layernorm" or "rmsnorm" (pre-norm blocks either way).
    dtype: compute dtype ("bfloat16" on accelerators); logits are returned in float32. "auto":
      bfloat16 on an accelerator, float32 on CPU (where bfloat16 matmuls are emulated, slower
      than float32), decided when the model is traced (``compute_dtype``), so that building a
      config never initialises a JAX backend (multi-host runs initialise it later).
    param_dtype: parameter dtype (keep "float32").
    dropout: dropout rate on the residual branches and embeddings (applied only when a dropout
      key is given).
    attention_impl: ``implementation`` of ``jax.nn.dot_product_attention``: None (JAX chooses),
      "xla", or "cudnn" (fused kernel on NVIDIA GPUs; needs a half-precision ``dtype``).
    pad_id: the padding token (the task tokenizer's ``PAD``); a prompt's leading run of it is
      padding (see ``transformer``).

  The sizes and ``max_len`` have no default (``preset`` gives sizes; the trainer's model is the
  config's preset, sized for the task); ``mask``, ``positions`` and ``dtype`` default to what the
  default config gives (tests/test_config.py checks they agree).
  """

  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  max_len: int
  positions: str = "learned"
  tie_embeddings: bool = True
  mask: str = "prefix"
  norm: str = "layernorm"
  dtype: str = "float32"
  param_dtype: str = "float32"
  dropout: float = 0.0
  attention_impl: str | None = None
  pad_id: int = DEFAULT_PAD_ID

  def __post_init__(self):
    checks.check_fields(
        self, vocab_size=checks.integer(2), num_layers=checks.integer(1),
        d_model=checks.integer(1), num_heads=checks.integer(1), d_ff=checks.integer(1),
        max_len=checks.integer(1), positions=checks.choice(*POSITIONS),
        tie_embeddings=checks.boolean, mask=checks.choice(*MASKS), norm=checks.choice(*NORMS),
        dtype=checks.choice(*DTYPES, "auto"), param_dtype=checks.choice(*DTYPES),
        dropout=checks.number(0.0, 1.0, hi_open=True),
        attention_impl=checks.choice(*ATTENTION_IMPLS), pad_id=checks.integer(0))
    if self.pad_id >= self.vocab_size:
      raise checks.FieldError("ModelConfig", "pad_id",
                              f"must be < vocab_size={self.vocab_size}, got {self.pad_id}")
    if self.d_model % self.num_heads:
      raise checks.FieldError("ModelConfig", "num_heads",
                              f"must divide d_model={self.d_model}, got {self.num_heads}")
    if self.positions == "rotary" and self.head_dim % 2:
      raise checks.FieldError("ModelConfig", "positions",
                              f"'rotary' needs an even head_dim (d_model / num_heads), got "
                              f"{self.head_dim}")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def compute_dtype(self) -> jnp.dtype:
    if self.dtype == "auto":
      return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> "ModelConfig":
    """A copy with ``changes`` applied (validated again)."""
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
    if unknown:
      raise ValueError(f"ModelConfig: unknown field(s) {unknown}")
    return dataclasses.replace(self, **changes)


# Sizes only; vocab_size and max_len come from the task.
PRESETS: dict[str, dict] = {
    "tiny": dict(num_layers=2, d_model=32, num_heads=2, d_ff=64),
    "small": dict(num_layers=6, d_model=128, num_heads=4, d_ff=512),
    "base": dict(num_layers=8, d_model=256, num_heads=8, d_ff=1024),
    "large": dict(num_layers=24, d_model=1024, num_heads=16, d_ff=4096, dtype="bfloat16"),
}


def preset(name: str, vocab_size: int, max_len: int, **overrides) -> ModelConfig:
  """The named size preset for a task's vocabulary and sequence length, with field overrides.

  Example: ``preset("small", task.vocab_size, task.question_len + task.answer_len, mask="causal")``.
  """
  checks.check("models", "preset", name, checks.choice(*PRESETS))
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"ModelConfig: unknown field(s) {unknown}; fields: {sorted(fields)}")
  return ModelConfig(vocab_size=vocab_size, max_len=max_len, **{**PRESETS[name], **overrides})
