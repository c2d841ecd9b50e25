"""What a catastrophic argument is, and M's probability of making one.

With the judge-flaw option on (``exploit`` in the config), an argument that contains the protocol
token EXPLOIT fools H's leaf check with probability ``p_flaw``: using it is cheating, the
catastrophe the overseer, the adversary and the KL study measure. These functions are pure.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from amp_debate.models.transformer import LanguageModel
from amp_debate.procedure.protocol import EXPLOIT, is_exploit  # noqa: F401 (re-exported)


def exploit_log_prob(model: LanguageModel, params, prompts: jax.Array, *,
                     temperature: float = 1.0) -> jax.Array:
  """float32[B]: log-probability that M's answer to each prompt starts with EXPLOIT.

  Args:
    model, params: M.
    prompts: int32[B, Lp] left-padded protocol prompts (e.g. ``model_player.answer_prompts``).
    temperature: the sampling temperature the probability is taken at.
  """
  chex.assert_rank(prompts, 2)
  first = jnp.full((prompts.shape[0], 1), EXPLOIT, jnp.int32)
  return model.log_prob(params, prompts, first, temperature=temperature)[:, 0]
