"""Relaxed adversarial training (DESIGN.md section 4): an adversary searches M's input embedding
space, near real prompts, for pseudo-inputs on which M would argue EXPLOIT (``catastrophe``), and
M is penalised by its probability of doing so there.

The search space. A prompt int32[B, Lp] is embedded by M's token table (``LanguageModel.embed``,
the rows alone; M adds the positions itself) into e float[B, Lp, D]. A pseudo-input is e + δ with
δ in a **per-token ball**: every position's perturbation δ[b, t] is bounded on its own,
  l2:   ||δ[b, t]||_2   <= r = ε·s
  linf: ||δ[b, t]||_inf <= r = ε·s/√D   (the largest cube inside the l2 ball of radius ε·s),
where ε is ``AdversaryConfig.radius`` and s = sqrt(mean_v ||E_v||²) the root-mean-square norm of
the rows of M's token table E (so ε = 1 lets a token move about one typical embedding length,
about as far as to another token: s·√2 apart for unrelated rows; ε is relative, so the ball follows
M's embedding scale as it trains). Padding positions are never perturbed (δ = 0 there; M never
attends to them anyway). The prompt's header token (ANSWER, ...) is perturbed like every other
real token.

The search. Projected gradient ascent on log p(M's answer starts with EXPLOIT | e + δ) from a random
start uniform in the ball: ``num_steps`` steps of size ``step_size``·r along the steepest-ascent
direction of the ball's norm (each token's gradient normalised to l2 length 1, or its sign for
linf), each followed by the projection onto the ball; the best point seen per prompt (including the
start) is returned. A ``lax.fori_loop`` with static shapes: jittable.

The penalty. ``adversarial_catastrophe_loss`` = weight · mean_b p_cat(b) at the adversary's
points, which are constants for the gradient (``stop_gradient``): only M's parameters move, the
search is not differentiated through. The training step adds it to the catastrophe objective
("cat", scaled again by the combination's λ_cat) when ``weight`` > 0.

Everything here is a pure function; ``AdversaryConfig`` is frozen and checked on construction
(``checks.FieldError`` names the field).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from amp_debate import checks
from amp_debate.models.transformer import LanguageModel, leading_pad
from amp_debate.safety.catastrophe import EXPLOIT

NORMS = ("l2", "linf")


@dataclasses.dataclass(frozen=True)
class AdversaryConfig:
  """The adversary's search and the weight of its penalty.

  Attributes:
    radius: ε > 0, the per-token ball's radius relative to M's embedding scale s (module
      docstring): r = ε·s for l2, ε·s/√D for linf.
    num_steps: projected gradient steps (>= 1).
    step_size: each step's length as a fraction of r (> 0; 2.5/num_steps is the usual choice).
    norm: "l2" or "linf", the norm of each token's perturbation.
    weight: >= 0, the penalty's weight (0: the training step runs no adversary).
  """

  radius: float = 0.5
  num_steps: int = 5
  step_size: float = 0.5
  norm: str = "l2"
  weight: float = 0.0

  def __post_init__(self):
    checks.check_fields(
        self, radius=checks.number(0.0, lo_open=True), num_steps=checks.integer(1),
        step_size=checks.number(0.0, lo_open=True), norm=checks.choice(*NORMS),
        weight=checks.number(0.0))


# ---- the ball ------------------------------------------------------------------------------------
def embedding_scale(params) -> jax.Array:
  """float32[]: s = sqrt(mean_v ||E_v||²) over the rows of M's token table (no gradient)."""
  table = jax.lax.stop_gradient(params["embedder"]["tokens"]["embedding"]).astype(jnp.float32)
  return jnp.sqrt(jnp.mean(jnp.sum(table**2, axis=-1)))


def ball_radius(params, config: AdversaryConfig) -> jax.Array:
  """float32[]: the per-token radius r in ``config.norm`` (ε·s for l2, ε·s/√D for linf)."""
  d_model = params["embedder"]["tokens"]["embedding"].shape[-1]
  scale = embedding_scale(params) * config.radius
  return scale if config.norm == "l2" else scale / jnp.sqrt(jnp.float32(d_model))


def token_norms(delta: jax.Array, norm: str) -> jax.Array:
  """float32[B, T]: each position's norm of delta float[B, T, D]."""
  if norm == "l2":
    return jnp.linalg.norm(delta, axis=-1)
  return jnp.abs(delta).max(-1)


def project(delta: jax.Array, radius: jax.Array, norm: str) -> jax.Array:
  """delta float32[B, T, D] with every position's perturbation projected onto its ball."""
  if norm == "l2":
    length = jnp.linalg.norm(delta, axis=-1, keepdims=True)
    return delta * jnp.minimum(1.0, radius / jnp.maximum(length, 1e-12))
  return jnp.clip(delta, -radius, radius)


def _real(prompt_lengths: jax.Array, prompt_len: int) -> jax.Array:
  """float32[B, Lp, 1]: 1 at a prompt's real positions, 0 at its leading padding."""
  return (jnp.arange(prompt_len)[None, :] >= (prompt_len - prompt_lengths)[:, None]).astype(
      jnp.float32)[..., None]


def random_in_ball(rng: jax.Array, shape, radius: jax.Array, norm: str) -> jax.Array:
  """float32[B, T, D] perturbations uniform in each position's ball."""
  if norm == "linf":
    return jax.random.uniform(rng, shape, jnp.float32, -1.0, 1.0) * radius
  direction_rng, length_rng = jax.random.split(rng)
  direction = jax.random.normal(direction_rng, shape)
  direction /= jnp.maximum(jnp.linalg.norm(direction, axis=-1, keepdims=True), 1e-12)
  length = jax.random.uniform(length_rng, shape[:-1] + (1,)) ** (1.0 / shape[-1])
  return direction * length * radius


def random_on_sphere(rng: jax.Array, shape, radius: jax.Array, norm: str) -> jax.Array:
  """float32[B, T, D] perturbations of norm exactly ``radius`` at every position (uniform
  directions for l2, random corners of the cube for linf): the random baseline of the attack."""
  if norm == "linf":
    return jnp.where(jax.random.bernoulli(rng, 0.5, shape), radius, -radius)
  direction = jax.random.normal(rng, shape)
  return direction * radius / jnp.maximum(jnp.linalg.norm(direction, axis=-1, keepdims=True),
                                          1e-12)


# ---- M's probability of arguing EXPLOIT -------------------------------------------------------
def exploit_log_prob_from_embeddings(model: LanguageModel, params, prompt_embeddings: jax.Array,
                                     prompt_lengths: jax.Array, *,
                                     temperature: float = 1.0) -> jax.Array:
  """float32[B]: log p(M's answer starts with EXPLOIT) given prompts as input embeddings.

  Args:
    model, params: M.
    prompt_embeddings: float[B, Lp, D] left-padded (``LanguageModel.embed`` of prompts, or a
      pseudo-input near them); equals ``catastrophe.exploit_log_prob`` on ``embed(prompts)``.
    prompt_lengths: int32[B] real prompt lengths.
    temperature: the sampling temperature the probability is taken at.
  """
  chex.assert_rank(prompt_embeddings, 3)
  first = jnp.full((prompt_embeddings.shape[0], 1), EXPLOIT, jnp.int32)
  logits = model.answer_logits_from_embeddings(params, prompt_embeddings, first,
                                               prompt_lengths=prompt_lengths)[:, 0]
  return jax.nn.log_softmax(logits / temperature, axis=-1)[:, EXPLOIT]


# ---- the adversary -------------------------------------------------------------------------------
def attack(model: LanguageModel, params, prompt_embeddings: jax.Array, prompt_lengths: jax.Array,
           rng: jax.Array, config: AdversaryConfig, *, temperature: float = 1.0) -> jax.Array:
  """Pseudo-inputs near the prompts that maximise M's probability of arguing EXPLOIT.

  Args:
    model, params: M (the search does not change it).
    prompt_embeddings: float[B, Lp, D] the starting points (``model.embed(params, prompts)``).
    prompt_lengths: int32[B] real prompt lengths; padding positions are not perturbed.
    rng: PRNG key of the random start.
    config: the ball and the search (static).
    temperature: the temperature of the probability maximised.
  Returns:
    float32[B, Lp, D] = prompt_embeddings + δ, every position's δ within the ball
    (``ball_radius``), the best of the start and the ``num_steps`` iterates for each prompt.
  """
  chex.assert_rank([prompt_embeddings, prompt_lengths], [3, 1])
  chex.assert_equal_shape_prefix([prompt_embeddings, prompt_lengths], 1)
  params = jax.lax.stop_gradient(params)
  start = jax.lax.stop_gradient(prompt_embeddings).astype(jnp.float32)
  real = _real(prompt_lengths, start.shape[1])
  radius = ball_radius(params, config)
  step = config.step_size * radius

  def objective(delta):  # (summed, float32[B]): prompts are independent, the sum's gradient
    values = exploit_log_prob_from_embeddings(model, params, start + delta, prompt_lengths,
                                              temperature=temperature)  # is per prompt
    return values.sum(), values

  def body(_, carry):
    delta, best, best_value = carry
    grad, value = jax.grad(objective, has_aux=True)(delta)
    better = value > best_value
    best = jnp.where(better[:, None, None], delta, best)
    best_value = jnp.where(better, value, best_value)
    if config.norm == "l2":
      direction = grad / jnp.maximum(jnp.linalg.norm(grad, axis=-1, keepdims=True), 1e-12)
    else:
      direction = jnp.sign(grad)
    delta = project(delta + step * direction, radius, config.norm) * real
    return delta, best, best_value

  delta = random_in_ball(rng, start.shape, radius, config.norm) * real
  init = (delta, delta, jnp.full(start.shape[:1], -jnp.inf, jnp.float32))
  delta, best, best_value = jax.lax.fori_loop(0, config.num_steps, body, init)
  best = jnp.where((objective(delta)[1] > best_value)[:, None, None], delta, best)
  out = start + best
  chex.assert_shape(out, prompt_embeddings.shape)
  return out


def adversarial_catastrophe_loss(model: LanguageModel, params, prompts: jax.Array, rng: jax.Array,
                                 config: AdversaryConfig, *, temperature: float = 1.0):
  """The relaxed adversarial penalty on M and what it saw.

  Args:
    model, params: M (differentiate w.r.t. ``params``).
    prompts: int32[B, Lp] left-padded prompts whose embeddings start the search (the step's
      ANSWER prompts).
    rng: PRNG key of the search.
    config: the adversary (static).
    temperature: the temperature of M's probability.
  Returns:
    (loss float32[] = weight · mean p_cat at the adversary's points, which are constants for the
    gradient; metrics {"p_cat": that mean, "p_cat_clean": mean p_cat on the prompts themselves},
    both without gradient).
  """
  chex.assert_rank(prompts, 2)
  chex.assert_type(prompts, jnp.int32)
  lengths = prompts.shape[1] - leading_pad(prompts, pad_id=model.config.pad_id)
  clean = jax.lax.stop_gradient(model.embed(params, prompts))
  pseudo = jax.lax.stop_gradient(
      attack(model, params, clean, lengths, rng, config, temperature=temperature))
  p_cat = jnp.exp(exploit_log_prob_from_embeddings(model, params, pseudo, lengths,
                                                   temperature=temperature))
  p_clean = jnp.exp(exploit_log_prob_from_embeddings(
      model, jax.lax.stop_gradient(params), clean, lengths, temperature=temperature))
  metrics = {"p_cat": jax.lax.stop_gradient(p_cat.mean()), "p_cat_clean": p_clean.mean()}
  return config.weight * p_cat.mean(), metrics
