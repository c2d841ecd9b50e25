r"""Default experiment config: one task, one mode (hybrid, amplification, debate or supervised).

The quick start (permutation n=8, k <= 2, a 4-layer d=64 model, 600 steps: about 4 minutes on 2
CPU cores; README has its result):

  python -m amp_debate.main \
    --config=experiments/configs/default.py:task=permutation,mode=hybrid,quickstart \
    --workdir=workdir/quickstart

``arg`` is ``key=value,...`` with keys ``task`` (a registered task), ``mode`` (hybrid |
amplification | debate | supervised), ``size`` (a model preset: tiny | small | base | large) and the
flags ``runlocal`` (CPU minutes: each task at its runlocal size with its model recipe, ``RUNLOCAL``
below, at least three levels; λ_rl = 0.1, no subquestion pass) and ``quickstart`` (runlocal's
settings at the quick start's smaller size, ``QUICKSTART``: permutation only, two levels; what the
README main job, the ablation and the benchmarks run).
Any field can then be overridden with ``--config.field=value`` (e.g. ``--config.num_steps=2000``,
``--config.task_options.n=6``); an unknown field or an invalid value stops the run before anything
is compiled, with a message naming the field (``amp_debate.train.config_lib.validate``).

Modes (same model, same question distribution, same evaluation):
  hybrid         debate RL + distillation toward Amp′(H, M_target) + catastrophe penalty
                 (weights ``combination.weights``; the default catastrophe predicate never fires).
  amplification  imitative amplification only: debates stop after the claim (force_stop_after=1,
                 t_max=1), λ_rl = 0.
  debate         debate only: λ_sup = 0, H never called inside a claim (call_prob = 0), every level
                 from the start (curriculum off).
  supervised     cross-entropy toward the ground truth: the upper bound every result is compared with.
"""

from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

from amp_debate import models, options, tasks
from amp_debate.train.config_lib import MODES

SIZES = tuple(models.PRESETS)
ARG_KEYS = ("task", "mode", "size", "runlocal", "quickstart")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A task's runlocal size and model recipe (issue 12): the task options, the model's depth and
  width, the steps and the learning-rate decay under which the supervised upper bound reaches
  >= 95% held-out accuracy at every level in CPU minutes (experiments/results/task_suite.md; what
  was tried and why each setting is what it is: BUILD_NOTES, "Every task learnable")."""

  task_options: dict
  num_layers: int = 2
  d_model: int = 128  # d_ff = 4 * d_model, 4 heads
  num_steps: int = 600
  decay: bool = False  # cosine decay of the learning rate to 0 over num_steps updates
  batch_size: int = 64


# Deeper questions need about one layer per look-up; 4 layers of width 64 train faster per step
# than 4 of width 128 and reached more in the same minutes (BUILD_NOTES).
_DEEP = dict(num_layers=4, d_model=64, decay=True)
# Task sizes (issue 27): each level's question space is large enough that an eval split of 500
# distinct questions is held out by construction (one of four hash buckets, which the training
# sampler never draws; DESIGN.md section 2), and a run draws 1-160x fewer questions than a level
# holds (experiments/results/question_spaces.md). Issue 12 tuned the steps and models on smaller
# spaces (permutation n=5, wildcard bits=3, assignments 5 variables mod 5, shortest path 6 nodes),
# where a run drew most of each level. Issue 27 raised the sizes without re-tuning; held out, the
# supervised worst level was then 0.364 / 1.000 / 0.898 / 0.562 for permutation, wildcard,
# assignments and shortest path (experiments/results/task_suite_supervised.md, seed 0). Issue 29
# re-tuned the steps (experiments/sweeps/retune.py, one seed; BUILD_NOTES, "Recipe re-tune").
RUNLOCAL = {
    # 5000 steps (issue 29 re-tune, seed 0): level 2 sat at 0.25-0.49 until step 2000, then rose
    # to >= 95% at step 2700 and 100% at the end; with 1500 it ended at 0.364.
    "permutation": Recipe(dict(n=8, max_exponent=4), num_steps=5000, **_DEEP),
    "union_find": Recipe(dict(num_vars=8, max_depth=2), num_steps=2000, **_DEEP),
    # 7000 steps (issue 29 re-tune, seed 0): level 2 was still rising at the end of 3500 (0.898);
    # with 7000 it passed 95% at step 3600 and ended at 0.998.
    "assignments": Recipe(dict(num_vars=6, modulus=7, max_depth=2), num_steps=7000, **_DEEP),
    "wildcard": Recipe(dict(bits=4, max_wildcards=2), num_steps=2000, **_DEEP),
    # Batch 128: per question seen, it learned faster than 64 (BUILD_NOTES).
    "shortest_path": Recipe(dict(num_nodes=8, max_hops=3), num_steps=3000, batch_size=128,
                            **_DEEP),
}
# The README main job's size: two levels (k <= 2) of permutations of 8 (322,560 questions per level,
# 8.4x what a run draws; n=5 had 600, all drawn), 4 layers of width 64, 600 steps. Issue 27, one
# seed each on this space: 2 layers of width 128 reached 0.76 at level 1 in 600 steps (0.24 in
# 1,000 with cosine decay); 4 layers of width 64 reached 0.998 by step 400. The ablation and
# benchmarks/ measure this size too.
QUICKSTART = Recipe(dict(n=8, max_exponent=2), num_layers=4, d_model=64)


def cpu_arg(task: str, mode: str) -> str:
  """The config arg of a task's CPU-sized run as benchmarks/ measure it: the quick start for
  permutation (what benchmarks/results report), every other task's runlocal recipe."""
  return f"task={task},mode={mode}," + ("quickstart" if task == "permutation" else "runlocal")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = options.parse(arg or "", keys=ARG_KEYS, bare=True, what="config arg")
  mode = args.get("mode", "hybrid")
  if mode not in MODES:
    raise ValueError(f"config arg: mode={mode!r} is not one of {', '.join(MODES)}")
  quickstart = bool(args.get("quickstart", False))
  runlocal = bool(args.get("runlocal", False)) or quickstart
  if quickstart and args.get("task", "permutation") != "permutation":
    raise ValueError(f"config arg: quickstart is the permutation quick start, not task="
                     f"{args['task']}; use runlocal for every task's CPU-minutes recipe")
  size = str(args.get("size", "tiny" if runlocal else "small"))
  if size not in SIZES:
    raise ValueError(f"config arg: size={size!r} is not one of {', '.join(SIZES)}")

  c = ml_collections.ConfigDict()
  c.task = str(args.get("task", "permutation"))
  task_options = tasks.get(c.task).options()  # the task's defaults (raises on an unknown task)
  recipe = (QUICKSTART if quickstart else RUNLOCAL.get(c.task, Recipe({}))) if runlocal else None
  if recipe is not None:
    task_options.update(recipe.task_options)
  c.task_options = ml_collections.ConfigDict(task_options)
  c.mode = mode
  c.runlocal = runlocal
  c.seed = 0
  c.num_steps = recipe.num_steps if runlocal else 20_000
  c.batch_size = recipe.batch_size if runlocal else 256
  c.log_every = 10 if runlocal else 100

  # The model M (one network plays every role): a preset plus field overrides.
  c.model = ml_collections.ConfigDict()
  c.model.preset = size
  # None (a placeholder: unset, typed, so --config.model.d_model=64 parses): the preset's value
  # (same for the fields below).
  c.model.num_layers = recipe.num_layers if runlocal else config_dict.placeholder(int)
  c.model.d_model = recipe.d_model if runlocal else config_dict.placeholder(int)
  c.model.num_heads = 4 if runlocal else config_dict.placeholder(int)
  c.model.d_ff = 4 * recipe.d_model if runlocal else config_dict.placeholder(int)
  c.model.mask = "prefix"
  c.model.positions = "learned"
  # "": the preset's compute dtype, where half precision ("large") becomes "auto": bfloat16 on
  # accelerators, float32 on CPU; a dtype name forces it (config_lib.model_dtype).
  c.model.dtype = ""

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 0 if runlocal else 500
  # Cosine decay of the learning rate to final_fraction of it over decay_steps updates (0: none).
  # Where a recipe decays, decay_steps is a reference to num_steps: a run given more steps (a
  # slower mode) decays over its own length instead of running out of learning rate at the
  # recipe's (issue 29); setting decay_steps itself cuts the link.
  c.optimizer.decay_steps = c.get_ref("num_steps") if runlocal and recipe.decay else 0
  c.optimizer.final_fraction = 0.0
  c.optimizer.clip_norm = 1.0
  c.optimizer.b2 = 0.99

  # How the objectives' gradients combine (amp_debate.procedure.combine).
  c.combination = ml_collections.ConfigDict()
  c.combination.kind = "weighted"  # weighted | constrained | shaped
  # runlocal: λ_rl = 0.1. With λ_rl = 1 the self-play policy gradient (normalised advantages) has a
  # larger norm than the distillation gradient once level 1 opens, the clipped sum is mostly RL
  # noise, and level 1 reached 59% in 400 steps instead of 99% in 300 (README, BUILD_NOTES).
  rl = 0.1 if runlocal else 1.0
  c.combination.weights = ml_collections.ConfigDict({"rl": rl, "sup": 1.0, "cat": 1.0})
  # Linear annealing of the weights to ``weights_end`` over ``anneal_steps`` (0: constant weights).
  c.combination.weights_end = ml_collections.ConfigDict({"rl": rl, "sup": 1.0, "cat": 1.0})
  c.combination.anneal_steps = 0
  c.combination.limit = 0.1  # constrained: L_sup <= limit
  c.combination.multiplier_lr = 0.01  # constrained: projected gradient ascent step on μ
  c.combination.beta = 0.5  # shaped: reward - beta * L_sup

  c.debate = ml_collections.ConfigDict()
  c.debate.t_max = 4 if runlocal else 12
  c.debate.call_prob = 1.0
  # Optional values are placeholders: None until set (a typed None, so that
  # --config.debate.confidence_threshold=0.5 parses).
  c.debate.confidence_threshold = config_dict.placeholder(float)  # None: no confidence rule
  c.debate.learned_stop = False
  c.debate.force_stop_after = config_dict.placeholder(int)  # None: never
  # Rounds in a lax.while_loop that exits when every game is done (identical results) instead of
  # a lax.scan over all t_max rounds: the cost follows the longest debate in the batch (t_max 32
  # vs 8: 1.2x instead of 4.1x, benchmarks/results/cpu.md). At runlocal's t_max of 4 it
  # saves nothing, and the test suite (built on runlocal) compiles faster with the scan.
  c.debate.early_exit = not runlocal
  # Fraction of self-play debates in which one side defends an assigned claim (another answer than
  # the other side's), so that refuting false claims is practised (DESIGN.md section 3).
  c.debate.assign_prob = 0.5
  # The judge flaw of the self-review study (DESIGN.md section 4): probability that a claim
  # containing EXPLOIT fools H's leaf check (0: no flaw, no overseer).
  c.debate.p_flaw = 0.0
  # Contest by construction (issue 28): in self-play, odd's root claim (when it is M's own direct
  # answer) is redrawn without even's claim where the two agree, so no game opens with a
  # concession and a collapsed policy still meets another answer.
  c.debate.distinct_claims = False
  # Challenger exploration (issue 28): with this probability odd's root claim (M's own direct
  # answer, unassigned games) is a uniform draw from the task's answers other than even's claim, so
  # that a policy sure of a wrong answer still meets the truth in self-play (0: never).
  c.debate.explore_prob = 0.0
  # Supports completed from their claims (issue 28): in a support M answers directly, the rows its
  # claim determines (the permutation task's last row) are set from the claim, so H's check passes
  # by construction and the dispute tests the rows the side chose. Also in evaluation (a protocol
  # rule, not a training estimator).
  c.debate.complete_supports = False

  c.step = ml_collections.ConfigDict()
  c.step.temperature = 1.0
  c.step.clip_eps = 0.2
  # Entropy bonus on the sampled argument tokens (0: none): keeps self-play from collapsing onto
  # one answer, where every game is a draw and the policy gradient vanishes.
  c.step.entropy_coef = 0.0
  # KL anchor (issue 28): weight of KL(M ‖ M at step 0) at the sampled argument positions, added
  # to the policy loss (0: none). The reference is the fresh init, or the init_from checkpoint.
  c.step.kl_anchor = 0.0
  # Credit each assigned root claim as its side's claim (issue 28), scored with M_target's
  # log-probs: a false assigned claim that loses is pushed down (False: only its supports are).
  c.step.credit_assigned_claims = False
  # Which games credit the claims (issue 28): "always", or "tested": only games decided at a leaf or
  # by the judge (not by a failed consistency check, which tests a support's form, not the claim).
  c.step.claim_credit = "always"
  # RL credit for the learned stop (issue 28; needs debate.learned_stop): each sampled decision
  # is rewarded 0 for stopping, and for going on 1 if that changed the verdict minus this cost per
  # argument made after it (credit.stop_rewards), so the stop learns in pure debate too.
  # None: no RL credit (the stop learns only from the hindsight labels, by distillation).
  c.step.stop_cost = config_dict.placeholder(float)
  # Opponents beyond self-play (issue 28, pure debate only): league_size snapshots of M (0: none),
  # one taken every league_every steps (the oldest replaced); league_games of each step's games are
  # against a snapshot drawn per step, M in each seat in half of them, its own arguments credited.
  c.step.league_size = 0
  c.step.league_every = 100
  c.step.league_games = 0
  # "rloo": leave-one-out baseline per question and seat over debates_per_question debates of
  # each question (issue 28); the others baseline over the whole batch.
  c.step.advantage = "normalize"
  c.step.debates_per_question = 1
  # A hard copy every target_period steps (None: Polyak averaging at rate target_ema).
  c.step.target_period = config_dict.placeholder(int)
  c.step.target_ema = 0.9
  # A fresh Amp′ pass over every subquestion posed (more targets, one more pass). runlocal: off;
  # measured on the quick start it cost about 0.4 s of a 0.9 s step, and without it M still reaches
  # 100% held out at both levels in 600 steps (BUILD_NOTES, "The debate protocol").
  c.step.distill_subquestions = not runlocal
  # The gradient passes score each game's real rows first, this many row slots per game at a
  # time, and only as many chunks as the fullest game needs (0: every slot in one pass). Most
  # slots are empty; measured on the runlocal hybrid step: 530 ms -> 335 ms (BUILD_NOTES).
  c.step.pack_width = 1
  # Optimiser updates per rollout (PPO-style reuse of the recorded arguments and targets):
  # update_epochs passes over num_minibatches minibatches of the step's games. Ignored by
  # mode=supervised (fresh questions every step).
  c.step.update_epochs = 1
  c.step.num_minibatches = 1

  # Safety studies (amp_debate.safety). The overseer acts only with the judge flaw
  # (debate.p_flaw > 0): H audits each answer M_target sampled with probability audit_prob (a human
  # call each) and detects an EXPLOIT answer with probability p_audit; M_target reviews its own
  # answers (REVIEW), trained from the audits; the catastrophe penalty (combination.weights.cat)
  # goes to the answers flagged by: off (none), audits (H's findings), review (the overseer
  # Amp′(H, M_target): H's finding where audited, M_target's review elsewhere).
  c.safety = ml_collections.ConfigDict()
  c.safety.overseer = ml_collections.ConfigDict()
  c.safety.overseer.audit_prob = 0.1
  c.safety.overseer.p_audit = 0.8
  c.safety.overseer.penalty = "review"
  c.safety.overseer.review_weight = 0.1  # the review's cross-entropy inside the catastrophe loss

  c.curriculum = ml_collections.ConfigDict()
  c.curriculum.kind = "adaptive"  # off | fixed | adaptive
  c.curriculum.threshold = 0.9
  c.curriculum.ema = 0.9
  c.curriculum.min_steps = 5 if runlocal else 20
  c.curriculum.steps_per_level = 200
  # Bias-corrected agreement EMA (issue 29): without it the EMA, restarted at 0 on each raise,
  # needs 22 steps of full agreement to reach 0.9 whatever min_steps says.
  c.curriculum.debias = False

  # Relaxed adversarial training (amp_debate.safety.adversary): with weight > 0 every update runs
  # an adversary from the embeddings of the step's ANSWER prompts, num_steps projected gradient
  # steps (each step_size x the radius) in a per-token norm ball ("l2" | "linf") of radius
  # radius x M's RMS token-embedding norm, and adds weight x M's mean probability of arguing
  # EXPLOIT at the points found to the catastrophe loss (experiments/results/adversary.md).
  c.safety.adversary = ml_collections.ConfigDict()
  c.safety.adversary.weight = 0.0  # 0: no adversary
  c.safety.adversary.radius = 0.5
  c.safety.adversary.num_steps = 5
  c.safety.adversary.step_size = 0.5
  c.safety.adversary.norm = "l2"

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: every device not used by fsdp
  c.mesh.fsdp = 1
  c.distributed = False  # jax.distributed.initialize() (the launcher sets this on multi-host runs)

  # Evaluation on the task's TFDS eval split (amp_debate.data.eval_sets).
  c.eval = ml_collections.ConfigDict()
  c.eval.every = 100 if runlocal else 1000
  c.eval.data_dir = ""  # "" -> $AMP_DEBATE_DATA_DIR or ~/tensorflow_datasets
  c.eval.examples_per_difficulty = 500
  c.eval.batch_size = 500 if runlocal else 1000
  c.eval.debates = True  # also play M against itself on the eval questions (debate statistics)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 100 if runlocal else 1000
  c.checkpoint.keep = 2 if runlocal else 3
  c.checkpoint.best_metric = "eval/accuracy/model/mean"  # "" to keep no best checkpoint
  c.checkpoint.async_save = True
  # Resuming with a config that changes anything but the safe fields (steps, logging, eval,
  # checkpoint cadence) is refused unless this is True.
  c.resume_allow_unsafe = False
  # A fresh run's M (and M_target) start from this checkpoint's parameters, "workdir[:step]" (the
  # latest step if none; same task and model shapes); "" starts from a random init.
  c.init_from = ""

  # Safety studies (DESIGN.md section 4; amp_debate.safety).
  # KL budget to a known-safe policy (amp_debate.safety.kl_budget): by the end of phase k (each
  # phase_steps optimiser updates) KL(pi_M || pi_safe) on a fixed reference set of num_prompts
  # ANSWER prompts (drawn from key(seed)) must be at most epsilon0 * growth^k. Each optimiser step
  # is projected so that its first-order KL is (1 - margin) of the budget, then shortened by a
  # line search until the KL is within the budget. Off while reference is "".
  c.safety.kl_budget = ml_collections.ConfigDict()
  c.safety.kl_budget.reference = ""  # pi_safe: a run's "workdir[:step]" (same task and model)
  c.safety.kl_budget.phase_steps = 100
  c.safety.kl_budget.epsilon0 = 0.05
  c.safety.kl_budget.growth = 2.0
  c.safety.kl_budget.margin = 0.1
  c.safety.kl_budget.num_prompts = 128
  c.safety.kl_budget.seed = 0

  if mode == "amplification":
    c.debate.force_stop_after = 1
    c.debate.t_max = 1
    # One claim, never contested: an assigned claim would be a game with no computation and no
    # target (DebateConfig refuses it).
    c.debate.assign_prob = 0.0
    c.combination.weights.rl = 0.0
    c.combination.weights_end.rl = 0.0
  elif mode == "debate":
    c.combination.weights.sup = 0.0
    c.combination.weights_end.sup = 0.0
    # Pure debate: the claims are M's own answers (H only checks supports and decides leaves). With
    # H called in every claim, a leaf question's two claims are both H's answer (a concession), so
    # M would never be trained on the leaves and the curriculum could not rise.
    c.debate.call_prob = 0.0
    # The adaptive curriculum rises on M's agreement with Amp′ where H was called; with no calls it
    # has no signal (seen: stuck at level 0), so pure debate samples every level from the start.
    c.curriculum.kind = "off"
  elif mode == "supervised":
    c.curriculum.kind = "off"  # the upper bound sees every level from the start
  return c
