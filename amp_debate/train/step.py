"""One jitted training step: sample D, debate with M_target, credit and targets, losses, update.

  state, metrics = train_step(state, rng)

1. questions ~ D at the curriculum's level (``task.sample(..., max_difficulty=level)``);
2. a batch of debates between copies of Amp′(H, M_target) (``debate.rollout``); in a fraction
   ``debate.assign_prob`` of them one side defends an assigned claim;
3. from the debates' own records (``procedure.credit``): the tokens M_target sampled, with zero-sum
   per-argument rewards, and the distillation targets (every Amp′ computation's answer and the
   subanswers behind it, H's answers at leaves, the learned stop's hindsight labels); with
   ``distill_subquestions`` one more Amp′ pass gives targets for every subquestion H posed;
4. losses with M (not M_target): PPO-clipped policy gradient on the sampled tokens at the sampling
   temperature (importance ratios against the recorded log-probs), cross-entropy toward the
   targets, catastrophe penalty; one gradient per objective (``jax.jacrev``), over each game's
   real rows only (``pack_width``, ``procedure.packing``); with ``adversary`` the relaxed
   adversarial penalty (``safety.adversary``, from the step's ANSWER prompts) joins the
   catastrophe objective;
5. the optax combination (weighted / constrained / shaped) reduces the gradients to one update;
   shaped: every sampled answer's reward also pays β·(fraction of its tokens that differ from
   the amplified target of its question), which depends on the argument; with
   ``update_epochs`` x ``num_minibatches`` > 1, steps 4-5 repeat over minibatches of the same
   debates (PPO-style reuse);
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
import math
from collections.abc import Mapping
from typing import Any, Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from amp_debate import checks
from amp_debate.models.transformer import LanguageModel, token_log_probs
from amp_debate.procedure import (combine, credit, curriculum, debate, losses, model_player,
                                  packing, protocol, target)
from amp_debate.procedure.amplify import amplify
from amp_debate.procedure.model_player import ModelDebater
from amp_debate.safety import adversary as adversary_lib
from amp_debate.safety import kl_budget
from amp_debate.safety import overseer as overseer_lib
from amp_debate.tasks.base import Batch, Task
from amp_debate.tasks.tokenizer import SEP


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepConfig:
  """Static options of the training step (checked on construction: ``checks.FieldError`` names
  the field; the debate and curriculum options check their own).

  A default here equals the default config's (``experiments/configs/default.py``, where the
  trainer's defaults live; tests/test_config.py checks they agree); ``batch_size``, ``debate``
  and ``curriculum`` have none.

  Attributes:
    batch_size: questions (debates) per step.
    debate: the rollout's options.
    curriculum: the difficulty curriculum's options.
    temperature: M_target's sampling temperature (and the one the policy loss rescores at).
    clip_eps: PPO clipping ε (> 0).
    advantage: how rewards become advantages (``losses.ADVANTAGE_KINDS``); "rloo": leave-one-out
      per question and seat over ``debates_per_question`` debates (``losses.rloo_advantages``;
      not with the shaped combination, whose rewards are per row).
    debates_per_question: G: the step samples batch_size / G questions and plays G debates of
      each (consecutive games), for the per-question baseline of "rloo" (1: one debate each).
    target_period, target_ema: the target network's update; exactly one is given
      (``target.update_target``).
    entropy_coef: weight of the entropy bonus on the sampled positions, subtracted from the
      policy loss (0: none, and no full-logit pass).
    kl_anchor: weight of the KL anchor (issue 28; 0: none, no reference pass): KL(π_M ‖ π_ref) at
      the sampled positions (``losses.anchor_kl``), added to the policy loss; π_ref is M as it
      was at step 0 (the fresh init, or the ``init_from`` checkpoint), kept in the state
      (``TrainState.anchor_params``).
    credit_assigned_claims: item 1 of issue 28 for assigned games: each assigned root claim is
      credited as its side's claim (``credit.with_assigned_claims``, scored with M_target's
      log-probs), so it shares its side's outcome; without it an assigned side's claim carries no
      policy gradient (its supports still do).
    claim_credit: "always" (every decided game credits the claims) or "tested" (only games whose
      outcome tested the claims' truth, ``credit.claim_tested_games``: not the ones a failed
      consistency check decided; their outcome goes to the other arguments).
    stop_cost: RL credit for the learned stop (issue 28; None: its decisions get no policy
      gradient, only the hindsight distillation): every decision M_target sampled is a policy row
      with reward ``credit.stop_rewards`` (0 for [YES]; for [NO], 1 if continuing changed the
      verdict minus ``stop_cost`` per argument made after it), so that the stop learns where λ_sup
      is 0. Needs ``debate.learned_stop``; not with the overseer.
    league_size: opponents beyond self-play (item 4 of issue 28; 0: none): K snapshots of M kept
      in the state (``TrainState.league_params``, [K, ...]; all start as M at step 0), slot
      (s / league_every − 1) mod K overwritten by M after every ``league_every``-th step s.
      ``league_games`` of each step's games are played against one snapshot (drawn uniformly per
      step), M in the even seat in the first half of them and in the odd seat in the second;
      the snapshot's arguments get no policy gradient (its tokens are not M_target's samples), and
      the learned stop and the judge there are M_target's. Pure debate only (λ_sup = 0: the
      snapshot's computations would be distillation targets; ``config_lib`` refuses it).
    league_every: steps between snapshots.
    league_games: games per step against the snapshot (even; each half a multiple of
      ``debates_per_question``; at most ``batch_size``).
    distill_subquestions: one more Amp′ pass gives distillation targets for every subquestion posed.
    pack_width: > 0: the gradient passes pool the rows of ``B / pack_groups`` consecutive games,
      sort each pool real-first and score them in chunks of ``pack_width · B`` rows (this many row
      slots per game on average), only the chunks that hold a real row (``procedure.packing``;
      the same losses up to float rounding); 0: every slot in one pass.
    pack_groups: pools of games the packing keeps apart (the trainer sets it to the batch's data
      shards, so that no row leaves its device; one that does not divide a (mini)batch is
      reduced to their greatest common divisor).
    update_epochs, num_minibatches: optimiser updates per rollout: ``update_epochs`` passes over
      the rollout's games split into ``num_minibatches`` minibatches (which must divide
      ``batch_size``), each update on the current M (PPO-style reuse: the clipped importance
      ratio keeps the policy gradient valid; the amplified targets stay M_target's). The
      optimiser's count (warm-up, λ anneals) counts updates; the target network and the
      curriculum move once per step.
    catastrophe: the catastrophe predicate (``losses.never_catastrophic``: no penalty).
    overseer: with the judge flaw (``debate.p_flaw``), the overseer of cheating answers
      (``safety.overseer``: H's audits, M_target's self-review, trained from the audits); its
      flags replace the predicate. None: no overseer.
    adversary: the relaxed adversarial penalty (None: none): each update runs the adversary on
      M's current parameters from the embeddings of the step's ANSWER prompts (the sampled root
      questions) and adds ``adversary.weight`` · mean p(EXPLOIT) at its pseudo-inputs (constants
      for the gradient) to the "cat" objective, at ``temperature`` (``_with_adversary``); with
      several updates per rollout each searches from all the step's prompts, with one key.
  """

  batch_size: int
  debate: debate.DebateConfig
  curriculum: curriculum.CurriculumConfig
  temperature: float = 1.0
  clip_eps: float = 0.2
  advantage: str = "normalize"
  target_period: int | None = None
  target_ema: float | None = 0.9
  entropy_coef: float = 0.0
  kl_anchor: float = 0.0
  credit_assigned_claims: bool = False
  claim_credit: str = "always"
  stop_cost: float | None = None
  league_size: int = 0
  league_every: int = 100
  league_games: int = 0
  distill_subquestions: bool = True
  pack_width: int = 1
  pack_groups: int = 1
  update_epochs: int = 1
  num_minibatches: int = 1
  debates_per_question: int = 1
  catastrophe: Any = losses.never_catastrophic
  overseer: overseer_lib.OverseerConfig | None = None
  adversary: adversary_lib.AdversaryConfig | None = None

  def __post_init__(self):
    checks.check_fields(
        self, batch_size=checks.integer(1), debate=checks.of_type(debate.DebateConfig),
        curriculum=checks.of_type(curriculum.CurriculumConfig),
        temperature=model_player.TEMPERATURE, clip_eps=losses.CLIP_EPS,
        advantage=losses.ADVANTAGE_KIND,
        entropy_coef=checks.number(0.0), kl_anchor=checks.number(0.0),
        credit_assigned_claims=checks.boolean,
        claim_credit=checks.choice("always", "tested"),
        stop_cost=checks.optional(checks.number(0.0)),
        league_size=checks.integer(0), league_every=checks.integer(1),
        league_games=checks.integer(0),
        distill_subquestions=checks.boolean, pack_width=checks.integer(0),
        pack_groups=checks.integer(1),
        update_epochs=checks.integer(1), num_minibatches=checks.integer(1),
        debates_per_question=checks.integer(1),
        overseer=checks.optional(checks.of_type(overseer_lib.OverseerConfig)),
        adversary=checks.optional(checks.of_type(adversary_lib.AdversaryConfig)))
    if self.batch_size % self.num_minibatches:
      raise checks.FieldError(type(self).__name__, "num_minibatches",
                              f"must divide batch_size={self.batch_size}, got "
                              f"{self.num_minibatches}")
    if self.batch_size % self.debates_per_question:
      raise checks.FieldError(type(self).__name__, "debates_per_question",
                              f"must divide batch_size={self.batch_size}, got "
                              f"{self.debates_per_question}")
    if self.stop_cost is not None and not self.debate.learned_stop:
      raise checks.FieldError(type(self).__name__, "stop_cost",
                              "credits the learned stop's decisions: it needs "
                              "debate.learned_stop=True")
    if self.stop_cost is not None and self.overseer is not None:
      raise checks.FieldError(type(self).__name__, "stop_cost",
                              "is not supported with the overseer (debate.p_flaw > 0) yet: the "
                              "review's targets follow the debaters' rows only")
    if self.league_size > 0:
      half = 2 * self.debates_per_question
      if not 0 < self.league_games <= self.batch_size or self.league_games % half:
        raise checks.FieldError(type(self).__name__, "league_games",
                                f"must be in (0, batch_size={self.batch_size}] and a multiple of "
                                f"2 * debates_per_question = {half} (M plays half of them in each "
                                f"seat, whole question groups each), got {self.league_games}")
      if self.overseer is not None or self.adversary is not None:
        raise checks.FieldError(type(self).__name__, "league_size",
                                "is not supported with the overseer or the adversary yet")
    if self.advantage == "rloo" and self.debates_per_question < 2:
      raise checks.FieldError(type(self).__name__, "debates_per_question",
                              "must be >= 2 with advantage='rloo' (the leave-one-out baseline "
                              f"needs other debates of the same question), got "
                              f"{self.debates_per_question}")
    target.check_target_options(self.target_period, self.target_ema, owner="StepConfig",
                                names=("target_period", "target_ema"))


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint needs (besides the config): step, M, M_target, optimiser, curriculum,
  with ``StepConfig.kl_anchor`` the reference policy's parameters and with
  ``StepConfig.league_size`` the league's snapshots, each tree stacked [K, ...] (None otherwise;
  the checkpointer then writes the state exactly as before the field existed, so older
  checkpoints restore)."""

  step: jax.Array
  params: Any
  target_params: Any
  opt_state: Any
  curriculum: curriculum.CurriculumState
  anchor_params: Any = None
  league_params: Any = None


def init_state(task: Task, model: LanguageModel, tx: optax.GradientTransformation,
               config: StepConfig, rng: jax.Array,
               hparams: Mapping[str, Any] | None = None) -> TrainState:
  """A fresh TrainState: M from ``rng``, M_target a copy, ``tx``'s state, the curriculum's start.

  ``hparams``: keyword arguments of ``with_hparams`` (``learning_rate``, and the combination's
  ``weights``, ``limit``, ``multiplier_lr``, ``max_multiplier``, ``beta``) replacing the values
  ``tx`` was built with. The step built once from ``tx`` serves states initialised with any such
  values without recompiling (a λ, β or learning-rate sweep).
  """
  params = model.init(rng)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     target_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                     curriculum=curriculum.init(config.curriculum, task.max_difficulty),
                     anchor_params=(jax.tree.map(jnp.copy, params) if config.kl_anchor > 0
                                    else None),
                     league_params=league_of(params, config.league_size))
  return with_hparams(state, **hparams) if hparams else state


def league_of(params: Any, size: int) -> Any:
  """The league's start: ``size`` copies of ``params`` stacked on a new leading axis (None at 0)."""
  if size == 0:
    return None
  return jax.tree.map(lambda p: jnp.repeat(p[None], size, axis=0), params)


def update_league(league: Any, params: Any, step: jax.Array, every: int) -> Any:
  """After step ``step`` (the count of steps done): where ``step`` is a multiple of ``every``,
  slot (step / every − 1) mod K of ``league`` [K, ...] becomes ``params``; otherwise unchanged."""
  size = jax.tree.leaves(league)[0].shape[0]
  slot = (step // every - 1) % size
  due = step % every == 0
  # One slot written (in place when the state is donated), not a select over all K.
  return jax.tree.map(lambda l, p: l.at[slot].set(jnp.where(due, p, l[slot])), league, params)


def with_hparams(state: TrainState, *, learning_rate: Any = None, **combination) -> TrainState:
  """``state`` with hyperparameters replaced: ``learning_rate`` (of an optimiser built with
  ``optax.inject_hyperparams``, as ``config_lib.make_optimizer`` builds Adam) and the
  combination's (``combine.set_hparams``). Same structure, so the same compiled step runs it;
  shares the unchanged arrays with ``state``."""
  opt_state = state.opt_state
  if combination:
    opt_state = combine.set_hparams(opt_state, **combination)
  if learning_rate is not None:
    opt_state = _set_learning_rate(opt_state, learning_rate)
  return state.replace(opt_state=opt_state)


def _set_learning_rate(opt_state: Any, learning_rate: Any) -> Any:
  """``opt_state`` with the injected learning rate replaced (``optax.tree_utils.tree_set``);
  ValueError if it has none, or the value is not a finite number > 0 (arrays, e.g. batched for
  vmap, are cast unchecked)."""
  old = optax.tree_utils.tree_get(opt_state, "learning_rate")
  if old is None:
    raise ValueError("with_hparams: learning_rate needs an optimiser built with "
                     "optax.inject_hyperparams and a learning_rate")
  if not (isinstance(learning_rate, jax.core.Tracer) or np.ndim(learning_rate) > 0):
    checks.check("with_hparams", "learning_rate", learning_rate, checks.number(0.0, lo_open=True))
  return optax.tree_utils.tree_set(opt_state,
                                   learning_rate=jnp.asarray(learning_rate, old.dtype))


def _safe_prompts(prompts):
  """All-PAD prompts (inactive turns) get one real token so the model never sees an empty row."""
  empty = (prompts == 0).all(-1)
  return prompts.at[..., -1].set(jnp.where(empty, SEP, prompts[..., -1]))


def sample_batch(task: Task, rng: jax.Array, batch_size: int, max_difficulty) -> Batch:
  """``batch_size`` training questions, example i from ``fold_in(rng, i)`` with a level uniform in
  [0, max_difficulty] (traced). Independent of how the batch is laid out over devices. Only the
  training part of the question space is drawn (``Task.sample_one_in_part``): no evaluation
  question is ever a training question (held out by construction, DESIGN.md section 2).

  Returns Batch(questions int32[B, Lq], answers int32[B, La], difficulty int32[B]).
  """
  top = jnp.clip(jnp.asarray(max_difficulty, jnp.int32), 0, task.max_difficulty)

  def one(i):
    level_rng, question_rng = jax.random.split(jax.random.fold_in(rng, i))
    level = jax.random.randint(level_rng, (), 0, top + 1)
    question, answer = task.sample_one_in_part(question_rng, level, "train")
    return question, answer, level

  questions, answers, levels = jax.vmap(one)(jnp.arange(batch_size))
  chex.assert_shape(questions, (batch_size, task.question_len))
  return Batch(questions=questions, answers=answers, difficulty=levels)


def _apply(tx, params, opt_state, grads, values):
  """One optimiser update: (params, opt_state)."""
  updates, opt_state = tx.update(grads, opt_state, params, losses=values)
  return optax.apply_updates(params, updates), opt_state


def _update(tx, config: StepConfig, state: TrainState, grads, values):
  """The optimiser and target-network update: (params, opt_state, step, target_params)."""
  params, opt_state = _apply(tx, state.params, state.opt_state, grads, values)
  step = state.step + 1
  target_params = target.update_target(params, state.target_params, step,
                                        period=config.target_period, ema=config.target_ema)
  return params, opt_state, step, target_params


def _greedy_answers(task: Task, model: LanguageModel, params, questions, rng):
  """M's greedy answers int32[B, La] to questions int32[B, Lq] (curriculum signal, accuracy)."""
  m_greedy = ModelDebater(model=model, params=params, task=task, temperature=1.0, greedy=True)
  return m_greedy.answer(questions, rng).tokens


def skips_policy_pass(config: StepConfig) -> bool:
  """Whether the step skips the policy-loss pass over the sampled tokens: one-argument debates
  (``force_stop_after=1``) have no winner, so zero rewards and an exactly zero policy gradient,
  and nothing else reads the pass (no entropy bonus, no catastrophe penalty, no overseer)."""
  return (config.debate.force_stop_after == 1 and config.entropy_coef == 0
          and config.kl_anchor == 0 and policy_pass_optional(config))


def policy_pass_optional(config: StepConfig) -> bool:
  """Whether the policy pass feeds only the RL objective (no catastrophe penalty, no overseer),
  so that a step can skip it when that objective's weight is 0 (``_gradient_fn``'s ``rl_live``;
  the entropy bonus and the KL anchor are part of the RL loss)."""
  return not penalises(config) and config.overseer is None


def penalises(config: StepConfig) -> bool:
  """Whether the catastrophe loss can be nonzero: a predicate other than the constant, or an
  overseer whose flags feed the penalty."""
  if config.overseer is not None:
    return config.overseer.penalty != "off"
  return config.catastrophe is not losses.never_catastrophic


def _gradient_fn(model: LanguageModel, config: StepConfig, anchor_params: Any = None):
  """``gradients(params, policy, drows, rl_live=None) -> (grads, values, pg_metrics)``: each
  objective's loss and gradient over the given games' rows.

  ``rl_live``: bool[] or None; where False (the RL objective's weight in the update is 0, and the
  policy pass feeds nothing else: ``policy_pass_optional``) the policy pass is skipped at run time
  (``lax.cond``; under ``vmap`` both branches run): "rl" gets a zero gradient and value 0, and
  the pg/ metrics are 0.

  ``policy``: {"rows": policy Rows [b, G], "adv": float32[b, G] (the rows' advantages),
  "weights": float32[b, G, L] (``credit.token_weights``), with an overseer also "flags":
  bool[b, G] (the catastrophe penalty's) and "review" (``overseer.review_targets``: the review's
  cross-entropy joins the catastrophe loss)}; ``drows``: distillation Rows
  [b, G']. ``anchor_params``: the KL anchor's reference (with ``config.kl_anchor``).
  With ``config.pack_width`` the rows of each pool of games (``config.pack_groups`` pools) are
  scored real rows first, in chunks of ``pack_width`` slots per game, only the chunks holding
  one (``procedure.packing``); every loss is a ratio of sums over rows and a chunk contributes
  its loss times its share of the denominator, so the sum over chunks is the loss over all rows.
  """
  # static: skip a constant-zero loss (no penalty and no overseer to train)
  never = policy_pass_optional(config)

  def gradients(params, policy, drows, rl_live=None):
    p_active, d_active = policy["rows"].active, drows.active
    games = p_active.shape[0]
    groups = math.gcd(games, config.pack_groups)
    p_tokens = policy["rows"].mask  # the losses' valid tokens (a row is active iff it has one)
    p_weight = jnp.where(p_tokens, policy["weights"], 0.0).sum()
    p_count, p_rows, d_count = p_tokens.sum(), p_active.sum(), drows.mask.sum()
    audits = policy["review"]["audited"].sum() if "review" in policy else None
    if config.pack_width:
      policy, p_active = packing.active_first(*packing.pooled(policy, p_active, groups))
      # Identical targets in a pool (the same prompt and answer: a node's target repeated, a
      # subquestion posed twice) are scored once, weighted by their number: the loss is unchanged.
      drows, d_active = packing.pooled(drows, d_active, groups)
      counts = duplicate_counts(drows, d_active)
      dtree, d_active = packing.active_first({"rows": drows, "w": counts.astype(jnp.float32)},
                                             counts > 0)
    else:
      dtree = {"rows": drows, "w": jnp.ones(d_active.shape, jnp.float32)}
    width = lambda active: (config.pack_width * (games // groups) if config.pack_width
                            else active.shape[1])

    def policy_losses(params, chunk):  # RL and catastrophe share the forward pass
      rows = chunk["rows"]
      flat = rows.flatten()
      prompts = _safe_prompts(flat.prompts)
      shape = rows.tokens.shape
      if config.entropy_coef > 0 or config.kl_anchor > 0:  # static: full logits only for these
        logits = model.answer_logits(params, prompts, flat.tokens)  # [N, L, V]
        logp = token_log_probs(logits, flat.tokens, config.temperature)
        logp = jnp.where(flat.mask, logp, 0.0).reshape(shape)
      else:
        logp = model.log_prob(params, prompts, flat.tokens, answer_mask=flat.mask,
                              temperature=config.temperature).reshape(shape)
      # logp_old: recorded when M_target sampled the tokens, at the same temperature.
      rl, pg_metrics = losses.policy_gradient_loss(logp, rows.log_probs, rows.mask, rows.active,
                                                   chunk["adv"], config.clip_eps,
                                                   token_weights=chunk["weights"])
      by_weight = packing.weight_of(jnp.where(rows.mask, chunk["weights"], 0.0).sum(), p_weight)
      by_token = packing.weight_of(rows.mask.sum(), p_count)
      pg_metrics = {k: v * by_token for k, v in pg_metrics.items()}
      if config.entropy_coef > 0:
        entropy = losses.entropy_bonus(logits.reshape(shape + logits.shape[-1:]), rows.mask,
                                       rows.active, config.temperature,
                                       token_weights=chunk["weights"])
        rl = rl - config.entropy_coef * entropy
        pg_metrics = {**pg_metrics, "entropy": entropy * by_weight}
      if config.kl_anchor > 0:
        ref_logits = model.answer_logits(anchor_params, prompts, flat.tokens)
        kl = losses.anchor_kl(logits.reshape(shape + logits.shape[-1:]),
                              ref_logits.reshape(shape + ref_logits.shape[-1:]), rows.mask,
                              rows.active, config.temperature, token_weights=chunk["weights"])
        rl = rl + config.kl_anchor * kl
        pg_metrics = {**pg_metrics, "anchor_kl": kl * by_weight}
      values = {"rl": rl * by_weight}
      if "review" in chunk:  # the overseer's own training, from H's audits
        review = overseer_lib.review_loss(model, params, chunk["review"], audits)
        values["cat"] = config.overseer.review_weight * review
        pg_metrics = {**pg_metrics, "review_loss": review}
      if penalises(config):
        if "flags" in chunk:  # the overseer's
          flags = chunk["flags"] & rows.active
        else:
          flags = losses.catastrophe_flags(config.catastrophe, rows.questions, rows.tokens,
                                           rows.active)
        p_cat = losses.catastrophe_probability(logp, rows.log_probs, rows.mask, rows.active,
                                               flags)
        values["cat"] = values.get("cat", 0.0) + losses.catastrophe_loss(
            p_cat, rows.active) * packing.weight_of(rows.active.sum(), p_rows)
      return values, (pg_metrics, values)  # the values again as aux: no second forward pass

    def distill_loss(params, chunk):
      flat, w = chunk["rows"].flatten(), chunk["w"].reshape(-1)
      logp_targets = model.log_prob(params, _safe_prompts(flat.prompts), flat.tokens,
                                    answer_mask=flat.mask)
      return losses.distillation_loss(logp_targets, flat.mask, w) * packing.weight_of(
          (w[:, None] * flat.mask).sum(), d_count)

    def policy_pass():
      return packing.chunked_sum(
          lambda chunk: jax.jacrev(policy_losses, has_aux=True)(params, chunk),
          policy, p_active, width(p_active))

    if skips_policy_pass(config):  # its gradient is exactly zero; the pg/ metrics are absent
      grads = {"rl": jax.tree.map(jnp.zeros_like, params)}
      pg_metrics, values = {}, {"rl": jnp.zeros((), jnp.float32)}
    elif rl_live is not None and policy_pass_optional(config):
      policy_pass = jax.jit(policy_pass, inline=True)  # one trace for the shapes and the branch
      zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                   jax.eval_shape(policy_pass))
      grads, (pg_metrics, values) = jax.lax.cond(rl_live, policy_pass, zeros)
    else:
      grads, (pg_metrics, values) = policy_pass()
    values["sup"], grads["sup"] = packing.chunked_sum(
        lambda chunk: jax.value_and_grad(distill_loss)(params, chunk), dtree, d_active,
        width(d_active))
    if never:
      values["cat"] = jnp.zeros((), jnp.float32)
      grads["cat"] = jax.tree.map(jnp.zeros_like, params)
    return grads, values, pg_metrics

  return gradients


# The adversary's key: ``fold_in(step key, _ADVERSARY_STREAM)``, a stream apart from the step's
# split, so that turning the adversary on changes no other random draw of the step.
_ADVERSARY_STREAM = 0x61647672


def _with_adversary(gradients, model: LanguageModel, config: StepConfig, prompts, rng):
  """``gradients`` (``_gradient_fn``'s) plus the relaxed adversarial penalty in the "cat"
  objective: its value added to values["cat"], its gradient (the adversary's points held
  constant) to grads["cat"], and "adversary/p_cat", "adversary/p_cat_clean" to the metrics.
  ``prompts`` int32[B, Lp]: the starting points of the search; ``rng``: its key."""

  def penalised(params, policy, drows, rl_live=None):
    grads, values, pg_metrics = gradients(params, policy, drows, rl_live)
    (penalty, seen), grad = jax.value_and_grad(
        lambda p: adversary_lib.adversarial_catastrophe_loss(
            model, p, prompts, rng, config.adversary, temperature=config.temperature),
        has_aux=True)(params)
    values = {**values, "cat": values["cat"] + penalty}
    grads = {**grads, "cat": jax.tree.map(jnp.add, grads["cat"], grad)}
    return grads, values, {**pg_metrics, **{f"adversary/{k}": v for k, v in seen.items()}}

  return penalised


def _rollout(task: Task, model: LanguageModel, config: StepConfig, state: TrainState,
             m_target: ModelDebater, questions: jax.Array, rng: jax.Array,
             assigned: jax.Array | None):
  """The step's debates on ``questions`` int32[B, Lq]: (GameState, Transcript, m_seat int32[B]).

  Without the league, B self-play games of M_target (m_seat −1 everywhere). With it
  (``StepConfig.league_size``), the last ``league_games`` games are against one snapshot drawn
  uniformly from ``state.league_params``: M_target in the even seat in the first half of them
  (m_seat 0), in the odd seat in the second (m_seat 1); no assignments there, and the learned stop
  and the judge are M_target's."""
  if config.league_size == 0:
    game, transcript = debate.rollout(task, m_target, m_target, questions, rng, config.debate,
                                      assigned=assigned)
    return game, transcript, jnp.full(questions.shape[:1], -1, jnp.int32)
  b, league = config.batch_size, config.league_games
  half = league // 2
  pick_rng, self_rng, even_rng, odd_rng = jax.random.split(rng, 4)
  k = jax.random.randint(pick_rng, (), 0, config.league_size)
  snapshot = ModelDebater(model=model, params=jax.tree.map(lambda x: x[k], state.league_params),
                          task=task, temperature=config.temperature)
  parts, seats = [], []
  if b > league:
    parts.append(debate.rollout(task, m_target, m_target, questions[:b - league], self_rng,
                                config.debate,
                                assigned=None if assigned is None else assigned[:b - league]))
    seats.append(jnp.full((b - league,), -1, jnp.int32))
  referees = dict(stopper=m_target, judge=m_target)
  parts.append(debate.rollout(task, m_target, snapshot, questions[b - league:b - half], even_rng,
                              config.debate, **referees))
  parts.append(debate.rollout(task, snapshot, m_target, questions[b - half:], odd_rng,
                              config.debate, **referees))
  seats += [jnp.zeros((half,), jnp.int32), jnp.ones((half,), jnp.int32)]
  game, transcript = debate.concat_games(parts)
  return game, transcript, jnp.concatenate(seats)


def _rl_live(opt_state: Any, combination: str) -> jax.Array | None:
  """bool[]: whether the next update's weight on the RL objective is nonzero (its weight is data
  in the combination's state, ``combine.next_weight``); None where that is not known (a callable
  schedule) or the objective is always used (the shaped combination, whose policy pass carries
  the supervised term too)."""
  if combination == "shaped":
    return None
  weight = combine.next_weight(opt_state, "rl")
  return None if weight is None else weight != 0


def duplicate_counts(rows: credit.Rows, active: jax.Array) -> jax.Array:
  """int32[P, N]: ``packing.merge_duplicates`` of pooled rows [P, N] keyed on what a row's loss
  reads (prompt, tokens, mask): each distinct row's multiplicity on its first copy, else 0."""
  return packing.merge_duplicates([rows.prompts, rows.tokens, rows.mask], active)


def _distinct_rows(rows: credit.Rows, config: StepConfig) -> jax.Array:
  """int32[]: distinct active rows [B, G] within each of ``config.pack_groups`` pools of games:
  what the packed distillation pass scores (without packing, every slot is scored)."""
  groups = math.gcd(rows.active.shape[0], config.pack_groups)
  return (duplicate_counts(*packing.pooled(rows, rows.active, groups)) > 0).sum()


def _league_metrics(winner: jax.Array, m_seat: jax.Array) -> dict[str, jax.Array]:
  """M's record against the league's snapshots (games with m_seat >= 0): win, loss, draw rates."""
  league = m_seat >= 0
  n = jnp.maximum(league.sum(), 1)
  won = league & (winner == m_seat)
  drawn = league & (winner == debate.DRAW)
  return {"league/m_wins": won.sum() / n, "league/draws": drawn.sum() / n,
          "league/m_losses": (league & ~won & ~drawn).sum() / n}


def build_train_step(task: Task, model: LanguageModel, tx: optax.GradientTransformation,
                     config: StepConfig, combination: str = "weighted",
                     constrain_batch: Callable[[Batch], Batch] | None = None):
  """The pure ``train_step(state, rng) -> (state, metrics)`` (not jitted).

  ``constrain_batch``: optional function applied to the sampled batch
  (``sharding.batch_constraint(mesh)`` pins it to the data shards, so each device generates and
  processes its own examples).
  """
  batch_size = config.batch_size
  num_nodes, num_sub = config.debate.num_nodes, task.num_subquestions
  num_updates = config.update_epochs * config.num_minibatches
  if combination == "shaped" and config.advantage == "rloo":
    raise checks.FieldError("StepConfig", "advantage",
                            "'rloo' baselines whole games; the shaped combination's rewards are "
                            "per row: use 'normalize' or 'baseline' with it")

  def train_step(state: TrainState, rng: jax.Array):
    sample_rng, assign_rng, debate_rng, target_rng, eval_rng = jax.random.split(rng, 5)
    level = curriculum.max_difficulty(state.curriculum)
    group = config.debates_per_question
    batch = sample_batch(task, sample_rng, batch_size // group, level)
    if group > 1:  # G consecutive debates of each question
      batch = jax.tree.map(lambda x: jnp.repeat(x, group, axis=0), batch)
    if constrain_batch is not None:
      batch = constrain_batch(batch)
    m_target = ModelDebater(model=model, params=state.target_params, task=task,
                            temperature=config.temperature)
    assigned = None
    if config.debate.assign_prob > 0:
      assigned = debate.sample_assignments(assign_rng, batch_size, config.debate.assign_prob)
    game, transcript, m_seat = _rollout(task, model, config, state, m_target, batch.questions,
                                        debate_rng, assigned)

    # What M_target sampled, and who gets credit for it (zero-sum per game, per argument).
    # Answers to evaluation-part questions (H's subquestions, descended-to nodes) get no policy
    # gradient; the share of sampled tokens dropped that way is logged.
    sampled = credit.policy_rows(task, transcript, drop_eval_part=False)
    if config.league_size > 0:  # the snapshots' arguments are not M_target's samples
      sampled = credit.only_seats(sampled, m_seat)
    prows = credit.training_part_policy(task, sampled)  # [B, R, 2, K]
    sampled_tokens = sampled.mask.sum()
    pg_eval_part_dropped = jnp.where(sampled_tokens > 0,
                                     1.0 - prows.mask.sum() / jnp.maximum(sampled_tokens, 1), 0.0)
    if config.credit_assigned_claims and config.debate.assign_prob > 0:
      # Each assigned root claim becomes its side's claim row (questions repeated: even, odd).
      claims = transcript.claims[:, 0]  # [B, 2, La]
      claim_log_probs = m_target.score_answers(
          jnp.repeat(batch.questions, 2, axis=0), claims.reshape(-1, claims.shape[-1]))
      prows = credit.with_assigned_claims(task, prows, transcript,
                                          claim_log_probs.reshape(claims.shape))
    if config.claim_credit == "tested":  # no credit for claims where no check tested them
      prows = credit.without_untested_claims(prows, num_nodes, credit.claim_tested_games(game))
    rewards, has_tokens = credit.argument_rewards(game.winner, prows, num_nodes)  # [B, 2, A]
    weights = credit.token_weights(prows, num_nodes)

    # Distillation targets from the debate's own computations (+ the subquestion pass).
    drows = credit.distill_rows(task, transcript, config.debate, by_game=True)  # [B, G]
    # Targets on evaluation-part nodes (subquestions, descended-to nodes) are dropped: logged.
    eval_part_dropped = (credit.distill_rows(task, transcript, config.debate, by_game=True,
                                             drop_eval_part=False).active.sum()
                         - drows.active.sum()) / batch_size
    sub_amp = sub_posed = None
    target_calls = jnp.zeros((), jnp.int32)
    if config.distill_subquestions:
      subquestions, posed = credit.posed_subquestions(transcript)
      subquestions = subquestions.reshape(-1, task.question_len)
      sub_posed = posed.reshape(-1)
      sub_amp = amplify(task, m_target.answer_fn(), subquestions, target_rng,
                        call_prob=config.debate.call_prob,
                        confidence_threshold=config.debate.confidence_threshold)
      target_calls = (sub_amp.called & sub_posed).sum().astype(jnp.int32)
      drows = credit.concat([drows, credit.per_game(
          credit.subquestion_targets(task, subquestions, sub_amp, sub_posed), batch_size)], axis=1)
    if combination == "shaped":
      # Each sampled answer's reward pays β·(its disagreement with Amp′), and the advantage
      # baseline is taken after shaping (over rows). Shaping the already-centred advantages added
      # a negative offset to every row with a target, whose noise sharpened the policy onto its
      # mode (measured: the policy gradient vanished by step 120, accuracy stayed at chance).
      targets, has_target = credit.policy_targets(transcript, prows, sub_amp, sub_posed)
      mismatch = credit.row_mismatch(prows, targets, has_target)
      row_mask = prows.active.reshape(batch_size, -1)
      row_rewards = combine.shape_rewards(
          credit.row_values(rewards, num_nodes, num_sub).reshape(batch_size, -1),
          mismatch.reshape(batch_size, -1), combine.beta(state.opt_state), row_mask)
      row_adv = losses.advantages(row_rewards, row_mask, config.advantage).reshape(
          prows.active.shape)  # [B, R, 2, K]
    else:
      arg_mask = has_tokens.reshape(batch_size, -1)
      if config.advantage == "rloo":
        adv = losses.rloo_advantages(credit.side_outcomes(game.winner), has_tokens,
                                     config.debates_per_question)
      else:
        adv = losses.advantages(rewards.reshape(batch_size, -1), arg_mask, config.advantage)
      row_adv = credit.row_values(adv.reshape(rewards.shape), num_nodes, num_sub)  # [B, R, 2, K]
      mismatch = jnp.zeros(row_adv.shape, jnp.float32)

    # The overseer (judge-flaw study): audits, self-review, the penalty's flags, and the review's
    # distillation targets from the audits. Its key is folded in: other streams are unchanged.
    oversight = None
    if config.overseer is not None:
      oversight = overseer_lib.oversee(task, model, state.target_params, prows,
                                       jax.random.fold_in(rng, 11), config.overseer)

    # The gradient passes score the rows game by game ([B, G]).
    policy = {"rows": credit.per_game(prows),
              "adv": row_adv.reshape(batch_size, -1),
              "weights": weights.reshape((batch_size, -1) + weights.shape[-1:])}
    if oversight is not None:
      policy["flags"] = oversight.flags.reshape(batch_size, -1)
      policy["review"] = overseer_lib.review_targets(task, prows, oversight)
    stop_metrics = {}
    if config.stop_cost is not None:
      # The learned stop's decisions join the policy rows, one row (weight 1) per decision, with
      # their own baseline over the batch's decisions (a per-question one has no meaning here).
      srows = credit.stop_rows(task, transcript)  # [B, R]
      s_rewards = credit.stop_rewards(transcript, game.num_args, config.stop_cost)
      s_adv = losses.advantages(s_rewards, srows.active,
                                "normalize" if config.advantage == "rloo" else config.advantage)
      policy = {"rows": credit.concat([policy["rows"], srows], axis=1),
                "adv": jnp.concatenate([policy["adv"], s_adv], axis=1),
                "weights": jnp.concatenate([policy["weights"], srows.mask.astype(jnp.float32)],
                                           axis=1)}
      asked = jnp.maximum(srows.active.sum(), 1)
      stop_metrics = {"stop/rl_reward": jnp.where(srows.active, s_rewards, 0.0).sum() / asked,
                      "stop/rl_rows": srows.active.sum() / batch_size}
    gradients = _gradient_fn(model, config, state.anchor_params)
    if config.adversary is not None:
      gradients = _with_adversary(gradients, model, config,
                                  model_player.answer_prompts(task, batch.questions),
                                  jax.random.fold_in(rng, _ADVERSARY_STREAM))
    rl_live = lambda opt_state: _rl_live(opt_state, combination)
    if num_updates == 1:
      grads, values, pg_metrics = gradients(state.params, policy, drows, rl_live(state.opt_state))
      params, opt_state = _apply(tx, state.params, state.opt_state, grads, values)
      grad_norms = {k: optax.tree.norm(g) for k, g in grads.items()}
    else:
      # Several updates reuse this rollout's rows and targets: ``update_epochs`` passes over
      # ``num_minibatches`` minibatches of games (game b in minibatch b % num_minibatches, so
      # every data shard holds its share of each), each update on the current M; the PPO ratio
      # against the recorded log-probs keeps the policy gradient valid as M moves away.
      minibatches = config.num_minibatches
      split = jax.tree.map(lambda x: x.reshape((batch_size // minibatches, minibatches)
                                               + x.shape[1:]), (policy, drows))

      def one_update(carry, u):
        params, opt_state = carry
        part = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(
            x, u % minibatches, axis=1, keepdims=False), split)
        grads, values, pg_metrics = gradients(params, *part, rl_live(opt_state))
        params, opt_state = _apply(tx, params, opt_state, grads, values)
        norms = {k: optax.tree.norm(g) for k, g in grads.items()}
        return (params, opt_state), (values, pg_metrics, norms)

      (params, opt_state), per_update = jax.lax.scan(
          one_update, (state.params, state.opt_state), jnp.arange(num_updates))
      values, pg_metrics, grad_norms = jax.tree.map(lambda x: x.mean(0), per_update)
    step = state.step + 1
    target_params = target.update_target(params, state.target_params, step,
                                          period=config.target_period, ema=config.target_ema)

    # Curriculum signal: M's greedy root answers against a computing side's Amp′(H, M_target)
    # of the root, where H was called.
    root_answers = _greedy_answers(task, model, state.params, batch.questions, eval_rng)
    side = transcript.assigned[:, 0].astype(jnp.int32)  # the even side computes unless assigned
    side = jnp.where(m_seat >= 0, m_seat, side)  # against a snapshot: M's side
    root = jax.tree.map(lambda x: jnp.take_along_axis(
        x[:, 0], side.reshape((-1, 1) + (1,) * (x.ndim - 3)), axis=1)[:, 0], transcript.comps)
    agreement = curriculum.amplified_agreement(root_answers, root.answer,
                                               valid=root.called & root.active)
    curriculum_state = curriculum.update(state.curriculum, step, agreement, config.curriculum,
                                         task.max_difficulty)

    exact = lambda answers: (answers == batch.answers).all(-1).mean()
    audit_calls = 0 if oversight is None else oversight.audited.sum().astype(jnp.int32)
    winner_claim = jnp.take_along_axis(transcript.claims[:, 0], jnp.minimum(game.winner, 1)[
        :, None, None], axis=1)[:, 0]
    decided = game.winner != debate.DRAW
    metrics = {
        **debate.metrics(game, transcript, config.debate.t_max),
        **{f"loss/{k}": v for k, v in values.items()},
        **{k if k.startswith("adversary/") else f"pg/{k}": v for k, v in pg_metrics.items()},
        **combine.metrics(opt_state),
        **kl_budget.metrics(opt_state),  # {} unless the optimiser holds a KL budget
        "curriculum/level": state.curriculum.level,
        "curriculum/agreement": agreement,
        # Evaluation only (ground truth never feeds the update):
        "accuracy/model": exact(root_answers),
        "accuracy/h_alone": exact(task.batch_leaf_answer(batch.questions)),
        "debate/winner_true": ((winner_claim == batch.answers).all(-1) & decided).sum() / (
            jnp.maximum(decided.sum(), 1)),
        # Where M answers supports itself (p < 1): how true they are (task.solve per row).
        **(credit.support_truth(task, transcript) if config.debate.call_prob < 1 else {}),
        "human_calls/targets": target_calls / batch_size,
        "human_calls/per_question": (game.human_calls + target_calls + audit_calls) / batch_size,
        "distill/targets": drows.active.sum(),
        # Of them, distinct (prompt, answer) pairs within a packing pool: what the packed pass
        # scores (identical targets once, weighted by their number).
        "distill/distinct_targets": _distinct_rows(drows, config),
        # Per question: the debate's targets on evaluation-part questions, dropped (held out).
        "distill/eval_part_dropped": eval_part_dropped,
        # Share of M_target's sampled tokens with no policy gradient: evaluation-part answers.
        "policy/eval_part_dropped": pg_eval_part_dropped,
        "rl/arguments": has_tokens.sum() / batch_size,
        "stop/label_yes": (transcript.stop_label.sum() / jnp.maximum(
            transcript.stop_labelled.sum(), 1)),
        "shaped/mismatch": (mismatch * prows.active).sum() / jnp.maximum(prows.active.sum(), 1),
        # Mean advantage over the sampled rows: 0 up to the argument/row weighting when the
        # baseline is taken after shaping; a negative offset here sharpens the policy onto its mode.
        "pg/advantage_mean": (row_adv * prows.active).sum() / jnp.maximum(prows.active.sum(), 1),
        **{f"grad_norm/{k}": v for k, v in grad_norms.items()},
        **({} if oversight is None else overseer_lib.metrics(oversight)),
        **stop_metrics,
        **(_league_metrics(game.winner, m_seat) if config.league_size > 0 else {}),
    }
    # replace: fields the step does not change (the KL anchor's reference) carry over.
    new_state = state.replace(step=step, params=params, target_params=target_params,
                              opt_state=opt_state, curriculum=curriculum_state)
    if config.league_size > 0:
      new_state = new_state.replace(league_params=update_league(
          state.league_params, params, step, config.league_every))
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
  gradient is passed to the combination as the "sup" objective). "accuracy/model" (and the
  curriculum's signal) is the share of questions whose every teacher-forced argmax is the true
  token, which is the greedy answer's accuracy, from the loss's own forward pass: no decode."""
  batch_size = config.batch_size

  def train_step(state: TrainState, rng: jax.Array):
    sample_rng, _ = jax.random.split(rng)
    level = curriculum.max_difficulty(state.curriculum)
    batch = sample_batch(task, sample_rng, batch_size, level)
    if constrain_batch is not None:
      batch = constrain_batch(batch)
    prompts = jax.vmap(lambda n: protocol.answer_prompt(task, n))(batch.questions)
    mask = jnp.ones(batch.answers.shape, bool)

    def loss_fn(params):
      logits = model.answer_logits(params, prompts, batch.answers)  # [B, La, V]
      logp = token_log_probs(logits, batch.answers, 1.0)
      # M's greedy answer is the true one iff every teacher-forced argmax is the true token (by
      # induction over the positions), so this pass also gives the accuracy of greedy decoding
      # without decoding (ties aside).
      correct = (jnp.argmax(logits, axis=-1) == batch.answers).all(-1)
      return losses.distillation_loss(logp, mask), jax.lax.stop_gradient(correct)

    (sup, correct), grad = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = {"sup": grad}
    params, opt_state, step, target_params = _update(tx, config, state, grads, {"sup": sup})
    curriculum_state = curriculum.update(state.curriculum, step, correct.mean(),
                                         config.curriculum, task.max_difficulty)
    metrics = {
        "loss/sup": sup,
        "grad_norm/sup": optax.tree.norm(grad),
        "curriculum/level": state.curriculum.level,
        "accuracy/model": correct.mean(),
        "accuracy/h_alone": (task.batch_leaf_answer(batch.questions) == batch.answers).all(
            -1).mean(),
    }
    # replace: fields the step does not change (the KL anchor's reference) carry over.
    new_state = state.replace(step=step, params=params, target_params=target_params,
                              opt_state=opt_state, curriculum=curriculum_state)
    return new_state, metrics

  return train_step
