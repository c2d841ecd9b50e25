"""One jitted training step: sample D, debate with M_target, amplified targets, losses, update.

  state, metrics = train_step(state, rng)

1. questions ~ D at the curriculum's level (``task.sample(..., max_difficulty=level)``);
2. a batch of debates between copies of M_target (``debate.rollout``), each argument sampled from
   M_target answering a protocol question;
3. distillation targets Amp′(H, M_target)(q′) for every node q′ argued about (the root and each
   supported node);
4. losses with M (not M_target): PPO-clipped debate RL on every argument, cross-entropy toward the
   amplified targets, catastrophe penalty; one gradient per objective (``jax.jacrev``);
5. the optax combination (weighted / constrained / shaped) reduces the gradients to one update;
6. the target network and the curriculum are updated.
Everything is a pure function of (state, rng); the caller jits it (``make_train_step`` does).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from amp_debate.models.transformer import LanguageModel
from amp_debate.procedure import combine, curriculum, debate, losses, protocol, target
from amp_debate.procedure.amplify import amplify
from amp_debate.procedure.model_player import ModelDebater
from amp_debate.tasks.base import Task
from amp_debate.tasks.tokenizer import SEP


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static options of the training step (validated on construction)."""

  batch_size: int = 32
  debate: debate.DebateConfig = debate.DebateConfig()
  temperature: float = 1.0
  clip_eps: float = 0.2
  advantage: str = "normalize"
  target_period: int | None = None
  target_ema: float | None = 0.9
  curriculum: str = "adaptive"
  curriculum_threshold: float = 0.9
  curriculum_ema: float = 0.9
  curriculum_min_steps: int = 10
  steps_per_level: int = 100
  shaped_beta: float = 0.0  # only used by the "shaped" combination
  catastrophe: Any = losses.never_catastrophic

  def __post_init__(self):
    if not isinstance(self.batch_size, int) or self.batch_size < 1:
      raise ValueError(f"step: batch_size must be a positive integer, got {self.batch_size!r}")
    if not self.temperature > 0:
      raise ValueError(f"step: temperature must be > 0, got {self.temperature!r}")
    if not self.clip_eps > 0:
      raise ValueError(f"step: clip_eps must be > 0, got {self.clip_eps!r}")
    if self.advantage not in losses.ADVANTAGE_KINDS:
      raise ValueError(f"step: advantage must be one of {losses.ADVANTAGE_KINDS}, "
                       f"got {self.advantage!r}")
    target.check_target_options(self.target_period, self.target_ema)


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint needs (besides the config): step, M, M_target, optimiser, curriculum."""

  step: jax.Array
  params: Any
  target_params: Any
  opt_state: Any
  curriculum: curriculum.CurriculumState


def init_state(task: Task, model: LanguageModel, tx: optax.GradientTransformation,
               config: StepConfig, rng: jax.Array) -> TrainState:
  params = model.init(rng)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    target_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                    curriculum=curriculum.init(config.curriculum, task.max_difficulty))


def _safe_prompts(prompts):
  """All-PAD prompts (inactive turns) get one real token so the model never sees an empty row."""
  empty = (prompts == 0).all(-1)
  return prompts.at[..., -1].set(jnp.where(empty, SEP, prompts[..., -1]))


def make_train_step(task: Task, model: LanguageModel, tx: optax.GradientTransformation,
                    config: StepConfig, combination: str = "weighted"):
  """Returns the jitted ``train_step(state, rng) -> (state, metrics)``."""
  batch_size, t_max = config.batch_size, config.debate.t_max

  def train_step(state: TrainState, rng: jax.Array):
    sample_rng, debate_rng, target_rng, eval_rng = jax.random.split(rng, 4)
    level = curriculum.max_difficulty(state.curriculum)
    batch = task.sample(sample_rng, batch_size, max_difficulty=level)
    m_target = ModelDebater(model=model, params=state.target_params, task=task,
                            temperature=config.temperature)
    game, transcript = debate.rollout(task, m_target, m_target, batch.questions, debate_rng,
                                      config.debate)

    # Amplified targets for every node argued about (the root at t = 0, each supported node).
    nodes = transcript.nodes.reshape(batch_size * t_max, -1)
    posed = (transcript.active & ((transcript.kind == debate.CLAIM) |
                                  (transcript.kind == debate.SUPPORT))).reshape(-1)
    amp = amplify(task, m_target.answer_fn(), nodes, target_rng,
                  call_prob=config.debate.call_prob)
    answer_prompts = jax.vmap(lambda n: protocol.answer_prompt(task, n))(nodes)
    target_mask = jnp.broadcast_to(posed[:, None], amp.answers.shape)

    prompts = _safe_prompts(transcript.prompts.reshape(batch_size * t_max, -1))
    tokens = transcript.tokens.reshape(batch_size * t_max, -1)
    token_mask = transcript.token_mask.reshape(tokens.shape)
    shape3 = transcript.tokens.shape
    logp_old = jax.lax.stop_gradient(
        model.log_prob(state.target_params, prompts, tokens, answer_mask=token_mask)).reshape(shape3)

    rewards = losses.debate_rewards(game.winner, transcript.side, transcript.active)

    def objective_losses(params):
      logp = model.log_prob(params, prompts, tokens, answer_mask=token_mask).reshape(shape3)
      logp_targets = model.log_prob(params, answer_prompts, amp.answers, answer_mask=target_mask)
      sup_per_turn = -(logp_targets.sum(-1) / task.answer_len).reshape(batch_size, t_max)
      shaped_rewards = combine.shape_rewards(rewards, sup_per_turn, config.shaped_beta,
                                             transcript.active) if combination == "shaped" else rewards
      adv = losses.advantages(shaped_rewards, transcript.active, config.advantage)
      rl, pg_metrics = losses.policy_gradient_loss(logp, logp_old, transcript.token_mask,
                                                   transcript.active, adv, config.clip_eps)
      sup = losses.distillation_loss(logp_targets, target_mask)
      flags = losses.catastrophe_flags(config.catastrophe, transcript.nodes, transcript.tokens,
                                       transcript.active)
      p_cat = losses.catastrophe_probability(logp, logp_old, transcript.token_mask,
                                             transcript.active, flags)
      cat = losses.catastrophe_loss(p_cat, transcript.active)
      return {"rl": rl, "sup": sup, "cat": cat}, pg_metrics

    grads, pg_metrics = jax.jacrev(objective_losses, has_aux=True)(state.params)
    values, _ = objective_losses(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, losses=values)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    target_params = target.update_target(params, state.target_params, step,
                                          period=config.target_period, ema=config.target_ema)

    # Curriculum signal: M's greedy root answers against Amp′(H, M_target) where H was called.
    m_greedy = ModelDebater(model=model, params=state.params, task=task, temperature=1.0,
                            greedy=True)
    root_answers = m_greedy.answer(batch.questions, eval_rng).tokens
    root_amp = amp.amplified.reshape(batch_size, t_max, -1)[:, 0]
    root_called = amp.called.reshape(batch_size, t_max)[:, 0]
    agreement = curriculum.amplified_agreement(root_answers, root_amp, valid=root_called)
    curriculum_state = curriculum.update(
        state.curriculum, step, agreement, kind=config.curriculum, max_level=task.max_difficulty,
        steps_per_level=config.steps_per_level, threshold=config.curriculum_threshold,
        ema=config.curriculum_ema, min_steps=config.curriculum_min_steps)

    exact = lambda answers: (answers == batch.answers).all(-1).mean()
    metrics = {
        **debate.metrics(game, transcript, t_max),
        **{f"loss/{k}": v for k, v in values.items()},
        **{f"pg/{k}": v for k, v in pg_metrics.items()},
        **combine.metrics(opt_state),
        "curriculum/level": state.curriculum.level,
        "curriculum/agreement": agreement,
        # Evaluation only (ground truth never feeds the update):
        "accuracy/model": exact(root_answers),
        "accuracy/h_alone": exact(task.batch_leaf_answer(batch.questions)),
        "human_calls/targets": (amp.called & posed).sum(),
        "grad_norm/rl": optax.tree.norm(grads["rl"]),
        "grad_norm/sup": optax.tree.norm(grads["sup"]),
        "grad_norm/cat": optax.tree.norm(grads["cat"]),
    }
    new_state = TrainState(step=step, params=params, target_params=target_params,
                           opt_state=opt_state, curriculum=curriculum_state)
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=0)
