"""One jitted training step: sample D, debate with M_target, amplified targets, losses, update.

  state, metrics = train_step(state, rng)

1. questions ~ D at the curriculum's level (``task.sample(..., max_difficulty=level)``);
2. a batch of debates between copies of M_target (``debate.rollout``), each argument sampled from
   M_target answering a protocol question;
3. distillation targets Amp′(H, M_target)(q′) for every node q′ argued about (the root and each
   supported node) and, with ``distill_subquestions``, for every subquestion H posed inside those
   Amp′ computations (one more Amp′ pass over them);
4. losses with M (not M_target): PPO-clipped debate RL on every argument, cross-entropy toward the
   amplified targets, catastrophe penalty; one gradient per objective (``jax.jacrev``);
5. the optax combination (weighted / constrained / shaped) reduces the gradients to one update;
6. the target network and the curriculum are updated.
Everything is a pure function of (state, rng): ``build_train_step`` returns it unjitted (the
trainer jits it with mesh shardings), ``make_train_step`` returns it jitted on one device.

Questions are generated per example from ``fold_in(rng, example_index)`` (``sample_batch``), so a
batch is the same whatever the device layout, and under a sharded jit each device generates the
questions of its own shard.

``build_supervised_step`` is the upper-bound baseline (``mode=supervised``): cross-entropy toward
the ground-truth answers of the same question distribution (all levels; no H, no debate).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from amp_debate.models.transformer import LanguageModel
from amp_debate.procedure import combine, curriculum, debate, losses, protocol, target
from amp_debate.procedure.amplify import amplify
from amp_debate.procedure.model_player import ModelDebater
from amp_debate.tasks.base import Batch, Task
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
  distill_subquestions: bool = True
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


def sample_batch(task: Task, rng: jax.Array, batch_size: int, max_difficulty) -> Batch:
  """``batch_size`` questions, example i from ``fold_in(rng, i)`` with a level uniform in
  [0, max_difficulty] (traced). Independent of how the batch is laid out over devices.

  Returns Batch(questions int32[B, Lq], answers int32[B, La], difficulty int32[B]).
  """
  top = jnp.clip(jnp.asarray(max_difficulty, jnp.int32), 0, task.max_difficulty)

  def one(i):
    level_rng, question_rng = jax.random.split(jax.random.fold_in(rng, i))
    level = jax.random.randint(level_rng, (), 0, top + 1)
    question, answer = task.sample_one(question_rng, level)
    return question, answer, level

  questions, answers, levels = jax.vmap(one)(jnp.arange(batch_size))
  chex.assert_shape(questions, (batch_size, task.question_len))
  return Batch(questions=questions, answers=answers, difficulty=levels)


def _update(tx, config: StepConfig, state: TrainState, grads, values):
  """The optimiser and target-network update: (params, opt_state, step, target_params)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params, losses=values)
  params = optax.apply_updates(state.params, updates)
  step = state.step + 1
  target_params = target.update_target(params, state.target_params, step,
                                        period=config.target_period, ema=config.target_ema)
  return params, opt_state, step, target_params


def _greedy_answers(task: Task, model: LanguageModel, params, questions, rng):
  """M's greedy answers int32[B, La] to questions int32[B, Lq] (curriculum signal, accuracy)."""
  m_greedy = ModelDebater(model=model, params=params, task=task, temperature=1.0, greedy=True)
  return m_greedy.answer(questions, rng).tokens


def target_turns(t_max: int) -> list[int]:
  """Turns whose node is new: the root's CLAIM (t = 0) and the SUPPORT turns t = 4, 6, ... (the
  SUPPORT at t = 2 argues about the root again)."""
  return [0] + list(range(4, t_max, 2))


def node_of_turn(t_max: int) -> list[int]:
  """For each turn t < t_max, the index into ``target_turns`` of the node it argues about."""
  return [0 if t < 4 else (t - 2) // 2 for t in range(t_max)]


def build_train_step(task: Task, model: LanguageModel, tx: optax.GradientTransformation,
                     config: StepConfig, combination: str = "weighted",
                     constrain_batch: Callable[[Batch], Batch] | None = None):
  """The pure ``train_step(state, rng) -> (state, metrics)`` (not jitted).

  ``constrain_batch``: optional function applied to the sampled batch
  (``sharding.batch_constraint(mesh)`` pins it to the data shards, so each device generates and
  processes its own examples).
  """
  batch_size, t_max = config.batch_size, config.debate.t_max

  def train_step(state: TrainState, rng: jax.Array):
    sample_rng, debate_rng, target_rng, eval_rng = jax.random.split(rng, 4)
    level = curriculum.max_difficulty(state.curriculum)
    batch = sample_batch(task, sample_rng, batch_size, level)
    if constrain_batch is not None:
      batch = constrain_batch(batch)
    m_target = ModelDebater(model=model, params=state.target_params, task=task,
                            temperature=config.temperature)
    game, transcript = debate.rollout(task, m_target, m_target, batch.questions, debate_rng,
                                      config.debate)

    # Amplified targets for every node argued about (the root at t = 0, each supported node).
    # The distinct nodes argued about: the root (claimed at t = 0; the SUPPORT at t = 2 supports
    # it again) and the node of each later SUPPORT (t = 4, 6, ...). Turn t argues about node
    # node_of_turn[t]. Targets are computed for these columns only (static selection).
    node_turns = target_turns(t_max)
    num_nodes = len(node_turns)
    nodes = transcript.nodes[:, node_turns].reshape(batch_size * num_nodes, -1)
    posed = transcript.active[:, node_turns].reshape(-1)
    node_rng, sub_rng = jax.random.split(target_rng)
    amp = amplify(task, m_target.answer_fn(), nodes, node_rng,
                  call_prob=config.debate.call_prob,
                  confidence_threshold=config.debate.confidence_threshold)
    target_questions, target_answers, target_posed = nodes, amp.answers, posed
    if config.distill_subquestions:
      # Every subquestion H posed inside those Amp′ computations, with its own Amp′ target.
      subquestions = amp.subquestions.reshape(-1, task.question_len)
      sub_posed = (amp.sub_valid & (posed & amp.called)[:, None]).reshape(-1)
      sub_amp = amplify(task, m_target.answer_fn(), subquestions, sub_rng,
                        call_prob=config.debate.call_prob,
                        confidence_threshold=config.debate.confidence_threshold)
      target_questions = jnp.concatenate([nodes, subquestions])
      target_answers = jnp.concatenate([amp.answers, sub_amp.answers])
      target_posed = jnp.concatenate([posed, sub_posed])
    answer_prompts = jax.vmap(lambda n: protocol.answer_prompt(task, n))(target_questions)
    target_mask = jnp.broadcast_to(target_posed[:, None], target_answers.shape)

    prompts = _safe_prompts(transcript.prompts.reshape(batch_size * t_max, -1))
    tokens = transcript.tokens.reshape(batch_size * t_max, -1)
    token_mask = transcript.token_mask.reshape(tokens.shape)
    shape3 = transcript.tokens.shape
    logp_old = jax.lax.stop_gradient(
        model.log_prob(state.target_params, prompts, tokens, answer_mask=token_mask)).reshape(shape3)

    rewards = losses.debate_rewards(game.winner, transcript.side, transcript.active)

    def objective_losses(params):
      logp = model.log_prob(params, prompts, tokens, answer_mask=token_mask).reshape(shape3)
      logp_targets = model.log_prob(params, answer_prompts, target_answers,
                                    answer_mask=target_mask)
      node_logp = logp_targets[:batch_size * num_nodes]
      sup_per_node = -(node_logp.sum(-1) / task.answer_len).reshape(batch_size, num_nodes)
      sup_per_turn = sup_per_node[:, node_of_turn(t_max)]
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
      values = {"rl": rl, "sup": sup, "cat": cat}
      return values, (pg_metrics, values)  # the values again as aux: no second forward pass

    grads, (pg_metrics, values) = jax.jacrev(objective_losses, has_aux=True)(state.params)
    params, opt_state, step, target_params = _update(tx, config, state, grads, values)

    # Curriculum signal: M's greedy root answers against Amp′(H, M_target) where H was called.
    root_answers = _greedy_answers(task, model, state.params, batch.questions, eval_rng)
    root_amp = amp.amplified.reshape(batch_size, num_nodes, -1)[:, 0]
    root_called = amp.called.reshape(batch_size, num_nodes)[:, 0]
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
        "human_calls/targets": (amp.called & posed).sum() + (
            sub_amp.called & sub_posed).sum() if config.distill_subquestions else (
                amp.called & posed).sum(),
        "distill/targets": target_posed.sum(),
        "grad_norm/rl": optax.tree.norm(grads["rl"]),
        "grad_norm/sup": optax.tree.norm(grads["sup"]),
        "grad_norm/cat": optax.tree.norm(grads["cat"]),
    }
    new_state = TrainState(step=step, params=params, target_params=target_params,
                           opt_state=opt_state, curriculum=curriculum_state)
    return new_state, metrics

  return train_step


def make_train_step(task: Task, model: LanguageModel, tx: optax.GradientTransformation,
                    config: StepConfig, combination: str = "weighted"):
  """Returns the jitted ``train_step(state, rng) -> (state, metrics)`` (state donated)."""
  return jax.jit(build_train_step(task, model, tx, config, combination), donate_argnums=0)


def build_supervised_step(task: Task, model: LanguageModel, tx: optax.GradientTransformation,
                          config: StepConfig,
                          constrain_batch: Callable[[Batch], Batch] | None = None):
  """The pure supervised ``train_step(state, rng) -> (state, metrics)``: cross-entropy toward
  ``task.solve`` on a batch at the curriculum's level (the ground-truth upper bound; the
  gradient is passed to the combination as the "sup" objective)."""
  batch_size = config.batch_size

  def train_step(state: TrainState, rng: jax.Array):
    sample_rng, eval_rng = jax.random.split(rng)
    level = curriculum.max_difficulty(state.curriculum)
    batch = sample_batch(task, sample_rng, batch_size, level)
    if constrain_batch is not None:
      batch = constrain_batch(batch)
    prompts = jax.vmap(lambda n: protocol.answer_prompt(task, n))(batch.questions)
    mask = jnp.ones(batch.answers.shape, bool)

    def loss_fn(params):
      logp = model.log_prob(params, prompts, batch.answers, answer_mask=mask)
      return losses.distillation_loss(logp, mask)

    sup, grad = jax.value_and_grad(loss_fn)(state.params)
    grads = {"sup": grad}
    params, opt_state, step, target_params = _update(tx, config, state, grads, {"sup": sup})
    root_answers = _greedy_answers(task, model, state.params, batch.questions, eval_rng)
    correct = (root_answers == batch.answers).all(-1)
    curriculum_state = curriculum.update(
        state.curriculum, step, correct.mean(), kind=config.curriculum,
        max_level=task.max_difficulty, steps_per_level=config.steps_per_level,
        threshold=config.curriculum_threshold, ema=config.curriculum_ema,
        min_steps=config.curriculum_min_steps)
    metrics = {
        "loss/sup": sup,
        "grad_norm/sup": optax.tree.norm(grad),
        "curriculum/level": state.curriculum.level,
        "accuracy/model": correct.mean(),
        "accuracy/h_alone": (task.batch_leaf_answer(batch.questions) == batch.answers).all(
            -1).mean(),
    }
    new_state = TrainState(step=step, params=params, target_params=target_params,
                           opt_state=opt_state, curriculum=curriculum_state)
    return new_state, metrics

  return train_step
