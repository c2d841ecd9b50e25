"""Parameter counts and FLOPs per token of the policy transformer (for utilisation figures).

FLOPs count multiply-adds as 2 and cover the matrix products only (norms, softmax, GELU and rotary
are a few percent at these sizes). Model FLOPs utilisation = tokens/s x FLOPs per token / peak.
"""

from __future__ import annotations

import jax
import numpy as np

from amp_debate.models.config import ModelConfig


def param_count(config: ModelConfig) -> int:
  """Number of parameters of ``LanguageModel(config)`` (equals ``count_params(init(...))``)."""
  d, layers = config.d_model, config.num_layers
  norm = 2 * d if config.norm == "layernorm" else d
  block = 4 * d * d + 2 * d * config.d_ff + 2 * norm
  embed = config.vocab_size * d + (config.max_len * d if config.positions == "learned" else 0)
  head = 0 if config.tie_embeddings else d * config.vocab_size
  return embed + layers * block + norm + head


def count_params(params) -> int:
  """Number of scalars in a parameter tree."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def matmul_params(config: ModelConfig) -> int:
  """Parameters used in matrix products per token: blocks plus the output head."""
  d = config.d_model
  return config.num_layers * (4 * d * d + 2 * d * config.d_ff) + d * config.vocab_size


def flops_per_token(config: ModelConfig, attended_len: int, *, training: bool = False) -> float:
  """FLOPs of one token's forward pass (x3 with ``training``: forward + backward).

  Args:
    config: the model.
    attended_len: keys each query attends to. The masked dense kernels compute every key of the
      sequence, so pass the full sequence length L for a teacher-forced pass over L tokens, and the
      cache length for a KV-cache decode step.
    training: count forward and backward (backward = 2 x forward).
  Returns:
    2 * matmul_params + 4 * num_layers * d_model * attended_len (times 3 when training).
  """
  forward = 2 * matmul_params(config) + 4 * config.num_layers * config.d_model * attended_len
  return float(3 * forward if training else forward)
