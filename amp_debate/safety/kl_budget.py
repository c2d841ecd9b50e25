"""A KL budget to a known-safe policy (DESIGN.md section 4): M may move away from a frozen
reference π_safe by at most ε_k of KL(π_M ‖ π_safe) by the end of phase k, with ε_k = ε_0·growth^k
(increasing stakes); a phase is ``phase_steps`` optimiser updates.

What the KL is (``kl_divergence``). The reference set is a fixed batch of ANSWER prompts
(``reference_prompts``: ``num_prompts`` questions drawn once from ``key(seed)``, levels uniform over
all of the task's levels). Each prompt's answer is teacher-forced on π_safe's greedy answer a*
(fixed by π_safe, so the KL is a smooth function of M's parameters), and the KL is the exact
per-token KL over the vocabulary at each answer position, summed over the La positions and
averaged over the prompts, both policies at the sampling temperature T:

  KL = mean_r Σ_t Σ_v π_M(v | p_r, a*_<t) · log(π_M(v | p_r, a*_<t) / π_safe(v | p_r, a*_<t)).

For one-token answers (La = 1, permutation) this is exactly the KL of the answer distributions; for
longer answers it is the sequence KL along π_safe's greedy path (not averaged over M's samples).

The constraint (``constrain``) is an optax transformation wrapping the whole optimiser
(``combine.chain``: the objectives' combination, clipping, Adam). It is given the KL as a
function (``make_kl(anchor) -> kl(params)``; ``policy_kl`` builds it from the model and the
reference set) and evaluates it itself, so the train step changes nothing but its metrics. Each
update, with u the wrapped optimiser's step (what is added to the parameters) and ε_k the budget
of the update's phase k = count // phase_steps:

1. projection onto the linearised budget: if KL + <∇KL, u> > (1 − margin)·ε_k, then
   u ← u − λ·∇KL with λ = (KL + <∇KL, u> − (1 − margin)·ε_k) / |∇KL|², which puts the
   first-order KL after the step on the aim (1 − margin)·ε_k (λ: the Lagrange multiplier of the
   linearised constraint; a step within the aim is unchanged);
2. a backtracking line search on the KL itself: u ← α·u with the largest α in {1, 1/2, 1/4, ...}
   (``max_backtracks`` halvings) whose KL is <= max(ε_k, KL now); α = 0 if none is.

Step 1 does the steering; step 2 makes the budget hold exactly, whatever the curvature: near
π_safe the KL is quadratic and its gradient vanishes, so a first-order projection alone lets Adam's
first (sign-like) steps jump far over a small budget (measured: 0.0006 -> 0.17 in one step of a
debate fine-tune under ε = 0.01). So from a start within the budget (M initialised at π_safe),
KL <= ε_k after every update of phase k, in particular at its end; from a start outside it, the
KL never increases until it is within. The cost is one gradient of the KL and one or more forward
passes over the reference set per update. A Lagrangian with a multiplier learned by ascent
(``combine.constrained``'s scheme) was tried first and overshot the budget at phase ends on a toy
policy (the multiplier lags the KL; BUILD_NOTES).

The state (π_safe's parameters as the anchor, the update count, the schedule as data, the latest
KL, budget, λ and α) lives in the optax state, so it checkpoints with the optimiser and the anchor
is sharded like the parameters (``optax.tree_map_params`` finds it). The trainer sets the anchor
from the checkpoint a config names (``set_anchor``). The functions here are pure.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from amp_debate import checks
from amp_debate.models.transformer import LanguageModel
from amp_debate.procedure.model_player import answer_prompts
from amp_debate.tasks.base import Task


# The options' rules (``train.config_lib`` applies the same ones to the config fields).
PHASE_STEPS = checks.integer(1)
EPSILON0 = checks.number(0.0, lo_open=True)
GROWTH = checks.number(0.0, lo_open=True)
MARGIN = checks.number(0.0, 1.0, hi_open=True)
NUM_PROMPTS = checks.integer(1)
SEED = checks.integer(0)
_OWNER = "kl_budget"


# ---------------------------------------------------------------------------------------------
# The KL on the reference set.


def reference_prompts(task: Task, num_prompts: int, seed: int, part: str = "train") -> jax.Array:
  """int32[R, Lp]: the fixed reference set, ANSWER prompts of ``num_prompts`` questions sampled
  from ``key(seed)`` with levels uniform over all of the task's levels (``Task.sample``), from
  ``part`` of the question space ("eval": questions no training run draws)."""
  checks.check(_OWNER, "num_prompts", num_prompts, NUM_PROMPTS)
  checks.check(_OWNER, "seed", seed, SEED)
  return _draw_prompts(task, num_prompts, part)(jax.random.key(seed))


@functools.lru_cache(maxsize=16)
def _draw_prompts(task: Task, num_prompts: int, part: str):
  """The jitted draw of ``reference_prompts``, once per task and size (op by op it compiled dozens
  of small programs, seconds at every trainer start)."""
  return jax.jit(lambda key: answer_prompts(task, task.sample(key, num_prompts, part=part).questions))


def greedy_answers(model: LanguageModel, params, prompts: jax.Array, answer_len: int) -> jax.Array:
  """int32[R, La]: the policy's greedy answers to prompts int32[R, Lp]."""
  chex.assert_rank(prompts, 2)
  return model.sample(params, prompts, jax.random.key(0), answer_len=answer_len,
                      greedy=True).tokens


def policy_log_probs(model: LanguageModel, params, prompts: jax.Array, answers: jax.Array, *,
                     temperature: float = 1.0) -> jax.Array:
  """float32[R, La, V]: log π(v | prompt, answers[:, :t]) at each answer position t, at
  ``temperature`` (teacher forcing on answers int32[R, La])."""
  logits = model.answer_logits(params, prompts, answers)
  return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def token_kl(logp: jax.Array, logq: jax.Array) -> jax.Array:
  """float32[...]: KL(p ‖ q) = Σ_v p_v (log p_v − log q_v) of log-distributions float32[..., V]."""
  chex.assert_equal_shape([logp, logq])
  return (jnp.exp(logp) * (logp - logq)).sum(-1)


def mean_kl(logp: jax.Array, logq: jax.Array) -> jax.Array:
  """float32[]: the per-token KLs of log-distributions float32[R, La, V] summed over the La
  positions and averaged over the R prompts."""
  chex.assert_rank(logp, 3)
  return token_kl(logp, logq).sum(-1).mean()


def kl_divergence(model: LanguageModel, params, anchor, prompts: jax.Array, answer_len: int, *,
                  temperature: float = 1.0) -> jax.Array:
  """float32[]: KL(π_params ‖ π_anchor) on the reference prompts int32[R, Lp], teacher-forced on
  the anchor's greedy answers (see the module docstring). Differentiable in ``params``."""
  return policy_kl(model, prompts, answer_len, temperature=temperature)(anchor)(params)


def policy_kl(model: LanguageModel, prompts: jax.Array, answer_len: int, *,
              temperature: float = 1.0) -> Callable[[Any], Callable[[Any], jax.Array]]:
  """``make_kl(anchor) -> kl(params)``: KL(π_params ‖ π_anchor) -> float32[] on the reference
  prompts int32[R, Lp]. ``make_kl`` computes π_anchor's greedy answers and log-probabilities once
  (constants of the gradient); each ``kl`` call is one forward pass of M."""

  def make_kl(anchor):
    anchor = jax.lax.stop_gradient(anchor)
    answers = greedy_answers(model, anchor, prompts, answer_len)
    logq = policy_log_probs(model, anchor, prompts, answers, temperature=temperature)

    def kl(params):
      return mean_kl(policy_log_probs(model, params, prompts, answers, temperature=temperature),
                     logq)

    return kl

  return make_kl


# ---------------------------------------------------------------------------------------------
# The budget's schedule.


def budget_at(count: jax.Array, epsilon0: Any, growth: Any, phase_steps: Any) -> jax.Array:
  """float32[]: ε_k = ε_0·growth^k of the phase k = count // phase_steps that update ``count``
  (int32[], from 0) belongs to."""
  phase = jnp.asarray(count, jnp.int32) // jnp.asarray(phase_steps, jnp.int32)
  return (jnp.asarray(epsilon0, jnp.float32)
          * jnp.asarray(growth, jnp.float32) ** phase.astype(jnp.float32))


def schedule(epsilon0: float, growth: float, num_phases: int) -> list[float]:
  """[ε_0, ..., ε_{num_phases-1}] as Python floats (ε_k = ε_0·growth^k), for tables and tests."""
  return [float(epsilon0) * float(growth) ** k for k in range(num_phases)]


# ---------------------------------------------------------------------------------------------
# The optax transformation.


class KLBudgetState(NamedTuple):
  """State of ``constrain``.

  Attributes:
    inner: the wrapped optimiser's state.
    anchor: π_safe's parameters (the params' structure; frozen: no update changes them).
    count: int32[] updates done.
    kl: float32[] the KL at the parameters the latest update started from (0 after init).
    budget: float32[] ε_k of the phase of the latest update (after init: of the first).
    multiplier: float32[] λ >= 0 of the latest update's projection (0 when inactive).
    step_scale: float32[] α of the latest update's line search (1 after init).
    epsilon0, growth: float32[] the schedule ε_k = ε_0·growth^k.
    phase_steps: int32[] updates per phase.
    margin: float32[] the projection aims at (1 − margin)·ε_k.
  """

  inner: Any
  anchor: Any
  count: jax.Array
  kl: jax.Array
  budget: jax.Array
  multiplier: jax.Array
  step_scale: jax.Array
  epsilon0: jax.Array
  growth: jax.Array
  phase_steps: jax.Array
  margin: jax.Array


def constrain(inner: optax.GradientTransformation,
              make_kl: Callable[[Any], Callable[[Any], jax.Array]], *, epsilon0: float,
              growth: float = 2.0, phase_steps: int, margin: float = 0.1,
              max_backtracks: int = 12) -> optax.GradientTransformationExtraArgs:
  """The optimiser ``inner`` with its steps kept within the KL budget (module docstring).

  Args:
    inner: the whole optimiser (``combine.chain``: combination, clipping, Adam); it gets the
      updates and extra arguments unchanged.
    make_kl: ``anchor -> (params -> float32[])``, the KL of the policy at params to the policy at
      the anchor (``policy_kl``); pure, differentiable in params.
    epsilon0: finite > 0, ε of phase 0. The four hyperparameters are data in the state; numbers
      are checked, arrays (e.g. traced, for one compiled attack over a grid of ε) are not.
    growth: finite > 0, ε_{k+1} / ε_k (>= 1: increasing stakes).
    phase_steps: integer >= 1, updates per phase.
    margin: in [0, 1), the projection aims at (1 − margin)·ε_k, so that the line search seldom
      has to shorten the step.
    max_backtracks: integer >= 0, halvings of the step the line search tries before taking none.
  Returns:
    a GradientTransformationExtraArgs with ``KLBudgetState``; ``update`` needs ``params``. The
    anchor is a copy of the params given to ``init`` until ``set_anchor`` replaces it.
  """
  hparams = {"epsilon0": epsilon0, "growth": growth, "phase_steps": phase_steps,
             "margin": margin}
  rules = {"epsilon0": EPSILON0, "growth": GROWTH, "phase_steps": PHASE_STEPS, "margin": MARGIN}
  for name, value in hparams.items():
    if not (isinstance(value, jax.core.Tracer) or jnp.ndim(value) > 0):  # arrays: unchecked data
      checks.check(_OWNER, name, value, rules[name])
  checks.check(_OWNER, "max_backtracks", max_backtracks, checks.integer(0))
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    f32 = lambda name: jnp.asarray(hparams[name], jnp.float32)
    count = jnp.zeros([], jnp.int32)
    return KLBudgetState(
        inner=inner.init(params), anchor=jax.tree.map(jnp.copy, params), count=count,
        kl=jnp.zeros([], jnp.float32), budget=budget_at(count, epsilon0, growth, phase_steps),
        multiplier=jnp.zeros([], jnp.float32), step_scale=jnp.ones([], jnp.float32),
        epsilon0=f32("epsilon0"), growth=f32("growth"),
        phase_steps=jnp.asarray(phase_steps, jnp.int32), margin=f32("margin"))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError("kl_budget: update needs the current params (update(updates, state, "
                       "params))")
    kl_of = make_kl(state.anchor)
    kl, g_kl = jax.value_and_grad(kl_of)(params)
    kl = jnp.asarray(kl, jnp.float32)
    step, inner_state = inner.update(updates, state.inner, params, **extra_args)
    chex.assert_trees_all_equal_structs(step, g_kl)
    budget = budget_at(state.count, state.epsilon0, state.growth, state.phase_steps)

    # 1. Projection onto the linearised budget.
    excess = kl + optax.tree.vdot(g_kl, step) - (1 - state.margin) * budget
    sq = optax.tree.vdot(g_kl, g_kl)
    active = (excess > 0) & (sq > 0)  # False for NaN
    multiplier = jnp.where(active, excess / jnp.where(sq > 0, sq, 1.0), 0.0)
    step = jax.tree.map(lambda u, g: (u - jnp.where(active, multiplier * g, 0)).astype(u.dtype),
                        step, g_kl)

    # 2. Backtracking on the KL itself: end within the budget (or no higher than now, if over).
    limit = jnp.maximum(budget, kl)
    kl_after = lambda alpha: kl_of(_moved(params, step, alpha))

    def too_far(carry):
      _, kl_new, i = carry
      return (kl_new > limit) & (i < max_backtracks)

    def halve(carry):
      alpha, _, i = carry
      return alpha / 2, kl_after(alpha / 2), i + 1

    one = jnp.ones([], jnp.float32)
    alpha, kl_new, _ = jax.lax.while_loop(too_far, halve, (one, kl_after(one), 0))
    alpha = jnp.where(kl_new > limit, 0.0, alpha)
    step = jax.tree.map(lambda u: (alpha * u).astype(u.dtype), step)
    new_state = state._replace(inner=inner_state, count=optax.safe_increment(state.count),
                               kl=kl, budget=budget, multiplier=multiplier.astype(jnp.float32),
                               step_scale=alpha)
    return step, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _moved(params: Any, step: Any, alpha: jax.Array) -> Any:
  """params + alpha·step, leafwise (the params' dtypes)."""
  return jax.tree.map(lambda p, u: (p + alpha * u).astype(p.dtype), params, step)


# ---------------------------------------------------------------------------------------------
# Reading and setting the state inside an optimiser state.


def find_state(opt_state: Any) -> KLBudgetState | None:
  """The KL budget's state inside ``opt_state`` (any chain's state holding it); None when there is
  none. ValueError for more than one."""
  nodes = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, KLBudgetState))
  found = [node for node in nodes if isinstance(node, KLBudgetState)]
  if len(found) > 1:
    raise ValueError(f"expected at most one KL budget state in the optimiser state, found "
                     f"{len(found)}")
  return found[0] if found else None


def set_anchor(opt_state: Any, anchor: Any) -> Any:
  """``opt_state`` with the KL budget's anchor (π_safe's parameters) replaced by ``anchor``
  (same structure, shapes and dtypes: AssertionError otherwise; ValueError without a budget)."""
  state = find_state(opt_state)
  if state is None:
    raise ValueError("set_anchor: the optimiser state holds no KL budget")
  chex.assert_trees_all_equal_shapes_and_dtypes(
      state.anchor, anchor, custom_message="set_anchor: the anchor must match the parameters")
  new = state._replace(anchor=anchor)
  return jax.tree.map(lambda node: new if isinstance(node, KLBudgetState) else node, opt_state,
                      is_leaf=lambda x: isinstance(x, KLBudgetState))


def metrics(opt_state: Any) -> dict[str, jax.Array]:
  """Scalars to log ({} without a budget): "kl/value" (the KL the latest update saw),
  "kl/budget" (its phase's ε), "kl/multiplier" (the λ of its projection, 0 when inactive),
  "kl/step_scale" (the α its line search kept)."""
  state = find_state(opt_state)
  if state is None:
    return {}
  return {"kl/value": state.kl, "kl/budget": state.budget, "kl/multiplier": state.multiplier,
          "kl/step_scale": state.step_scale}
