"""The three combinations of the RL and supervised objectives, as optax GradientTransformations.

The losses are differentiated one objective at a time, so ``updates`` is a dict of gradient trees,
each with the params' structure, of LOSSES to minimise: ``{"rl": g_rl, "sup": g_sup, "cat": g_cat}``
(any subset; a missing key counts as a zero gradient). A combination maps it to ONE gradient tree
(params' structure), which the rest of an ``optax.chain`` (clipping, the optimiser) consumes; see
``chain``. The combination must come first in the chain.

- ``weighted``: Σ_k λ_k(count)·g_k, each λ a constant, a ``Linear`` anneal or an optax schedule of
  the step count (annealing to pure amplification, λ_rl → 0, or to pure debate, λ_sup → 0, is a
  config).
- ``constrained``: minimise L_rl + λ_cat·L_cat subject to L_sup ≤ limit through the Lagrangian
  L_rl + λ_cat·L_cat + μ·(L_sup − limit), μ ≥ 0 updated by projected gradient ascent. Needs the
  current losses: ``update(updates, state, params, losses={"sup": L_sup, ...})``.
- ``shaped``: L_sup already entered the reward (``shape_rewards``), so g_sup is ignored.

The state (step count, the multiplier, the weights applied last) lives in the optax state and so
checkpoints with the optimiser; ``weights``, ``multiplier`` and ``metrics`` read it out of a chain's
state for logging. ``make`` builds a combination by name from config options.

Hyperparameters are data: constant and ``Linear`` weights, the constrained ``limit``,
``multiplier_lr`` and ``max_multiplier``, and the shaped ``beta`` are float32/int32 scalars in the
state, set by ``init`` (from the options) or by ``set_hparams``, and ``update`` reads them from the
state. One compiled update (or train step) therefore serves every value of a sweep, and the values
can be vmapped over. Only callable schedules stay compiled into the program.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from amp_debate import checks

OBJECTIVES = ("rl", "sup", "cat")



class Linear(NamedTuple):
  """A weight annealed linearly from ``start`` to ``end`` over ``steps`` updates, then held at
  ``end`` (the values of ``optax.linear_schedule(start, end, steps)``); ``steps == 0`` or
  ``start == end``: the constant ``start``. While annealing, values below SCHEDULE_ZERO count as 0.

  As an option its fields are numbers (start, end finite >= 0; steps an integer >= 0) or arrays
  (not checked: e.g. batched for vmap); in a combination's state they are float32[], float32[],
  int32[] (data: changing them does not recompile the update).
  """

  start: Any
  end: Any
  steps: Any


# A constant >= 0 (carried as data, like Linear), a Linear anneal (data), or an optax schedule of
# the step count (a Python callable: compiled into the update).
Weight = float | Linear | Callable[[jax.Array], Any]

# Schedule values below this count as exactly 0. Jitted optax schedules miss an end value of 0 by
# float rounding: optax.linear_schedule(1.0, 0.0, n) gives -1.5e-8 for n = 10 and +2.2e-8 for n = 25
# at (and after) its end, which would leave an annealed-away objective a tiny nonzero weight.
SCHEDULE_ZERO = 1e-6
Updates = Mapping[str, optax.Updates]  # {objective: gradient tree with the params' structure}


class WeightedState(NamedTuple):
  """State of ``weighted``.

  Attributes:
    count: int32[] number of updates done.
    weights: {objective: float32[]} the λ_k applied by the latest update (after init: those the
      first update will apply).
    schedules: {objective: Linear of float32[], float32[], int32[]} the weights given as numbers
      or Linear (hyperparameters as data); callable schedules are not here.
  """

  count: jax.Array
  weights: dict[str, jax.Array]
  schedules: dict[str, Linear]


class ConstrainedState(NamedTuple):
  """State of ``constrained``.

  Attributes:
    count: int32[] number of updates done.
    multiplier: float32[] μ ∈ [0, max_multiplier], the multiplier the NEXT update applies.
    weights: {"rl", "sup", "cat": float32[]} the weights applied by the latest update; "sup" is the
      μ it applied (before its own ascent step). After init: those the first update will apply.
    schedules: {"rl", "cat" (those given as numbers or Linear): Linear} λ_rl, λ_cat as data.
    limit: float32[] the bound on L_sup.
    multiplier_lr: float32[] the ascent step size on μ.
    max_multiplier: float32[] the clamp on μ.
  """

  count: jax.Array
  multiplier: jax.Array
  weights: dict[str, jax.Array]
  schedules: dict[str, Linear]
  limit: jax.Array
  multiplier_lr: jax.Array
  max_multiplier: jax.Array


class ShapedState(NamedTuple):
  """State of ``shaped``.

  Attributes:
    count: int32[] number of updates done.
    weights: {"rl", "cat": float32[]} the weights applied by the latest update (after init: those
      the first update will apply).
    schedules: {"rl", "cat" (those given as numbers or Linear): Linear} the weights as data.
    beta: float32[] β of the shaped reward (``shape_rewards``), read by the train step (``beta``);
      the update itself does not use it.
  """

  count: jax.Array
  weights: dict[str, jax.Array]
  schedules: dict[str, Linear]
  beta: jax.Array


CombinationState = WeightedState | ConstrainedState | ShapedState


# ---------------------------------------------------------------------------------------------
# Shared pieces.


# The rules of the combination's options; ``train.config_lib`` applies the same ones to the config
# fields that feed them.
WEIGHT = checks.number(0.0)
ANNEAL_STEPS = checks.integer(0)
LIMIT = checks.number(0.0)
MULTIPLIER_LR = checks.number(0.0, lo_open=True)
MAX_MULTIPLIER = checks.number(0.0, lo_open=True)
INIT_MULTIPLIER = checks.number(0.0)
BETA = checks.number(0.0)
CLIP_NORM = checks.number(0.0, lo_open=True)
_OWNER = "combine"  # errors read "combine.limit must be >= 0.0, got -1"


def _checked(option: str, value: Any, rule: checks.Check) -> Any:
  """``value`` if ``rule`` accepts it, else a ``checks.FieldError`` naming the option."""
  checks.check(_OWNER, option, value, rule)
  return value


def _hparam(option: str, value: Any, dtype, rule: checks.Check) -> Any:
  """A hyperparameter option: an array as is (cast to ``dtype``, unchecked: it may be traced or
  batched), else a number ``rule`` accepts (``checks.FieldError`` naming the option)."""
  if isinstance(value, jax.core.Tracer) or np.ndim(value) > 0:
    return jnp.asarray(value, dtype)
  return _checked(option, value, rule)


def _check_weight(option: str, weight: Weight) -> Weight:
  """A schedule (callable) as is; a constant or Linear is checked (finite, >= 0; integer steps)
  and returned as a Linear of numbers (ValueError naming the option)."""
  if callable(weight):
    return weight
  if isinstance(weight, Linear):
    return Linear(_hparam(f"{option}.start", weight.start, jnp.float32, WEIGHT),
                  _hparam(f"{option}.end", weight.end, jnp.float32, WEIGHT),
                  _hparam(f"{option}.steps", weight.steps, jnp.int32, ANNEAL_STEPS))
  value = _hparam(option, weight, jnp.float32, WEIGHT)
  return Linear(value, value, 0)


def _as_data(weight: Linear) -> Linear:
  """The Linear as state arrays: float32[], float32[], int32[]."""
  return Linear(jnp.asarray(weight.start, jnp.float32), jnp.asarray(weight.end, jnp.float32),
                jnp.asarray(weight.steps, jnp.int32))


def _linear_at(weight: Linear, count: jax.Array) -> jax.Array:
  """float32[] a Linear (state arrays) at step ``count`` (int32[]), computed in the graph.

  Matches ``optax.linear_schedule(start, end, steps)(count)`` (to float32 rounding) while
  annealing, where values below SCHEDULE_ZERO become 0; else the constant ``start``.
  """
  annealing = (weight.steps > 0) & (weight.start != weight.end)
  steps = jnp.maximum(weight.steps, 1)
  frac = 1 - jnp.clip(count, 0, steps) / steps
  value = ((weight.start - weight.end) * frac + weight.end).astype(jnp.float32)
  value = jnp.where(value < SCHEDULE_ZERO, 0.0, value)
  return jnp.where(annealing, value, weight.start)


def _weight_at(weight: Callable[[jax.Array], Any], count: jax.Array) -> jax.Array:
  """float32[] a callable schedule at step ``count`` (int32[]); values < SCHEDULE_ZERO become 0."""
  value = jnp.asarray(weight(count), jnp.float32)
  return jnp.where(value < SCHEDULE_ZERO, 0.0, value)


def _weights_at(weights: Mapping[str, Weight], schedules: Mapping[str, Linear],
                count: jax.Array) -> dict[str, jax.Array]:
  """{objective: float32[]} each weight at step ``count`` (int32[]): a callable in ``weights``
  from the closure, any other from its data in ``schedules`` (the state's)."""
  return {name: _weight_at(w, count) if callable(w) else _linear_at(schedules[name], count)
          for name, w in weights.items()}


def _schedules(weights: Mapping[str, Weight]) -> dict[str, Linear]:
  """{objective: Linear of state arrays} for the weights that are data (not callables)."""
  return {name: _as_data(w) for name, w in weights.items() if not callable(w)}


def _check_updates(updates: Updates, allowed: Any, combination: str) -> None:
  """ValueError for an empty dict or an objective the combination does not know."""
  if not isinstance(updates, Mapping) or not updates:
    raise ValueError(f"{combination}: updates must be a non-empty dict {{objective: gradient "
                     f"tree}}, got {type(updates).__name__}")
  unknown = sorted(set(updates) - set(allowed))
  if unknown:
    raise ValueError(f"{combination}: unknown objective(s) {unknown} in updates; expected a subset "
                     f"of {sorted(allowed)}")


def _combine(updates: Updates, weights: Mapping[str, jax.Array]) -> optax.Updates:
  """Σ_k weights[k]·updates[k] over the keys in both (a weight of exactly 0 adds exactly 0.0).

  Args:
    updates: {objective: gradient tree}, all with one structure.
    weights: {objective: float32[]}; objectives without a weight are ignored.
  Returns:
    one gradient tree with that structure and the gradients' dtypes (zeros if no term remains).
  """
  names = [name for name in sorted(updates) if name in weights]
  if len(updates) > 1:
    chex.assert_trees_all_equal_structs(*updates.values())
  if not names:
    return jax.tree.map(jnp.zeros_like, next(iter(updates.values())))

  def scaled(name):
    w = weights[name]
    return jax.tree.map(lambda g: jnp.where(w == 0, 0, w * g).astype(g.dtype), updates[name])

  terms = [scaled(name) for name in names]
  return jax.tree.map(lambda *gs: sum(gs[1:], gs[0]), *terms)


# ---------------------------------------------------------------------------------------------
# The three combinations.


def _scheduled_sum(weights: Mapping[str, Weight], *, allowed: Any, name: str, state_type,
                   **extra_fields: float) -> optax.GradientTransformationExtraArgs:
  """Σ λ_k(count) g_k over ``weights`` (checked; objectives in ``allowed`` but not in ``weights``
  are ignored); the state (``state_type``: count, weights applied, schedules, and
  ``extra_fields`` as float32[] that the update carries along) counts steps for the schedules."""

  def init_fn(params):
    del params
    count = jnp.zeros([], jnp.int32)
    schedules = _schedules(weights)
    extra = {k: jnp.asarray(v, jnp.float32) for k, v in extra_fields.items()}
    return state_type(count=count, weights=_weights_at(weights, schedules, count),
                      schedules=schedules, **extra)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    _check_updates(updates, allowed, name)
    applied = _weights_at(weights, state.schedules, state.count)
    new_state = state._replace(count=optax.safe_increment(state.count), weights=applied)
    return _combine(updates, applied), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def weighted(weights: Mapping[str, Weight]) -> optax.GradientTransformationExtraArgs:
  """Σ_k λ_k(count)·g_k: the weighted sum of the per-objective gradients.

  Args:
    weights: {objective: λ}, each a constant >= 0, a ``Linear(start, end, steps)`` anneal (both
      carried as data in the state) or an optax schedule of the step count (e.g.
      ``optax.linear_schedule(1.0, 0.0, 10_000)``, compiled in; its values below SCHEDULE_ZERO
      count as 0).
      ``updates`` may hold any subset of these keys; an objective with λ == 0 contributes exactly
      0.0 (even where its gradient is not finite).
  Returns:
    a GradientTransformationExtraArgs with ``WeightedState``; extra args are accepted and ignored.
  """
  if not isinstance(weights, Mapping) and not hasattr(weights, "items"):
    raise checks.FieldError(_OWNER, "weights",
                            f"must be a mapping {{objective: weight}}, got {weights!r}")
  weights = {name: _check_weight(f"weights.{name}", w) for name, w in weights.items()}
  if not weights:
    raise checks.FieldError(_OWNER, "weights", "must name at least one objective")

  return _scheduled_sum(weights, allowed=weights, name="weighted", state_type=WeightedState)


def constrained(limit: float, multiplier_lr: float, *, rl_weight: Weight = 1.0,
                cat_weight: Weight = 1.0, init_multiplier: float = 0.0,
                max_multiplier: float = 100.0,
                project: bool = False) -> optax.GradientTransformationExtraArgs:
  """Minimise λ_rl·L_rl + λ_cat·L_cat subject to L_sup ≤ limit (Lagrangian, projected multiplier).

  Lagrangian: λ_rl·L_rl + λ_cat·L_cat + μ·(L_sup − limit), μ ≥ 0. Each update
  1. returns λ_rl·g_rl + λ_cat·g_cat + μ·g_sup with the CURRENT μ (the one in the state before this
     update: simultaneous descent on the parameters and ascent on μ);
  2. takes a projected plain-SGD ascent step on μ (not Adam: Adam on a multiplier oscillates):
     μ ← clip(μ + multiplier_lr·(L_sup − limit), 0, max_multiplier).
  Pitfalls handled: μ is clamped to [0, max_multiplier]; nothing divides by the limit (limit = 0 is
  fine); a non-finite L_sup leaves μ unchanged (and never triggers the projection).

  With ``project`` (CPO-style), while the constraint is violated (L_sup > limit), g_rl loses its
  component along which the descent step −g_rl would increase L_sup: if <g_rl, g_sup> < 0,
  g_rl ← g_rl − <g_rl, g_sup>/|g_sup|²·g_sup, so that <g_rl, g_sup> = 0 (first order: the RL step
  leaves L_sup unchanged and μ·g_sup decreases it).

  Args:
    limit: finite >= 0, the bound on L_sup (e.g. a baseline's L_sup + ε).
    multiplier_lr: finite > 0, the step size of the ascent on μ.
    rl_weight: λ_rl, constant >= 0, Linear or a schedule of the step count.
    cat_weight: λ_cat, constant >= 0, Linear or a schedule of the step count.
    init_multiplier: μ at step 0, in [0, max_multiplier].
    max_multiplier: finite > 0, the clamp on μ.
    project: whether to apply the CPO-style projection of g_rl.
  Returns:
    a GradientTransformationExtraArgs with ``ConstrainedState``. Its ``update`` requires the extra
    keyword ``losses: Mapping[str, float32[]]`` (scalar value per objective; only "sup" is read).
  """
  limit = _checked("limit", limit, LIMIT)
  multiplier_lr = _checked("multiplier_lr", multiplier_lr, MULTIPLIER_LR)
  max_multiplier = _checked("max_multiplier", max_multiplier, MAX_MULTIPLIER)
  init_multiplier = _checked("init_multiplier", init_multiplier, INIT_MULTIPLIER)
  # limit, multiplier_lr, max_multiplier and the data weights go into the state at init; the
  # update reads them from there.
  if init_multiplier > max_multiplier:
    raise checks.FieldError(_OWNER, "init_multiplier", f"must be <= max_multiplier "
                            f"({max_multiplier}), got {init_multiplier}")
  fixed = {"rl": _check_weight("rl_weight", rl_weight),
           "cat": _check_weight("cat_weight", cat_weight)}

  def applied_at(count, mu, schedules):
    return {**_weights_at(fixed, schedules, count), "sup": mu}

  def init_fn(params):
    del params
    count = jnp.zeros([], jnp.int32)
    mu = jnp.asarray(init_multiplier, jnp.float32)
    schedules = _schedules(fixed)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return ConstrainedState(count=count, multiplier=mu, weights=applied_at(count, mu, schedules),
                            schedules=schedules, limit=f32(limit),
                            multiplier_lr=f32(multiplier_lr), max_multiplier=f32(max_multiplier))

  def update_fn(updates, state, params=None, *, losses=None, **extra_args):
    del params, extra_args
    _check_updates(updates, OBJECTIVES, "constrained")
    sup_loss = _sup_loss(losses)
    applied = applied_at(state.count, state.multiplier, state.schedules)
    violated = sup_loss > state.limit  # False for NaN
    if project and "rl" in updates and "sup" in updates:
      updates = {**updates, "rl": _project_away(updates["rl"], updates["sup"], violated)}
    ascended = jnp.clip(state.multiplier + state.multiplier_lr * (sup_loss - state.limit), 0.0,
                        state.max_multiplier)
    mu = jnp.where(jnp.isfinite(sup_loss), ascended, state.multiplier)
    new_state = state._replace(count=optax.safe_increment(state.count), multiplier=mu,
                               weights=applied)
    return _combine(updates, applied), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _sup_loss(losses: Mapping[str, jax.Array] | None) -> jax.Array:
  """float32[] losses["sup"], with a clear error when the extra arg or its key is missing."""
  if losses is None or "sup" not in losses:
    raise ValueError("constrained: update needs the current supervised loss, passed as the extra "
                     "argument update(updates, state, params, losses={'sup': L_sup, ...}); got "
                     f"losses={losses!r}")
  sup_loss = jnp.asarray(losses["sup"], jnp.float32)
  chex.assert_shape(sup_loss, (), custom_message="losses['sup'] must be a scalar")
  return sup_loss


def _project_away(g: optax.Updates, d: optax.Updates, active: jax.Array) -> optax.Updates:
  """g minus its component along −d when active and <g, d> < 0 (then <result, d> = 0).

  Args:
    g, d: gradient trees of one structure; active: bool[].
  Returns:
    a tree like g.
  """
  dot = optax.tree_utils.tree_vdot(g, d)
  sq = optax.tree_utils.tree_vdot(d, d)
  apply = active & (dot < 0) & (sq > 0)
  coef = jnp.where(apply, dot / jnp.where(sq > 0, sq, 1.0), 0.0)
  return jax.tree.map(lambda x, y: (x - coef * y).astype(x.dtype), g, d)


def shaped(*, rl_weight: Weight = 1.0, cat_weight: Weight = 1.0,
           beta: float = 0.0) -> optax.GradientTransformationExtraArgs:
  """λ_rl·g_rl + λ_cat·g_cat, ignoring g_sup.

  In the shaped mode the supervised loss already entered the RL reward (``shape_rewards``: r ← r −
  β·L_sup per argument), so g_rl carries it; adding g_sup as well would count it twice (and make
  this the weighted mode). A "sup" entry in ``updates`` is therefore accepted and ignored.

  Args:
    rl_weight: λ_rl, constant >= 0, Linear or a schedule of the step count.
    cat_weight: λ_cat, constant >= 0, Linear or a schedule of the step count.
    beta: finite >= 0, β of the shaped reward. Kept in the state (data) for the train step, which
      reads it with ``combine.beta(opt_state)``; the update does not use it.
  Returns:
    a GradientTransformationExtraArgs with ``ShapedState``; extra args are accepted and ignored.
  """
  fixed = {"rl": _check_weight("rl_weight", rl_weight),
           "cat": _check_weight("cat_weight", cat_weight)}
  beta = _checked("beta", beta, BETA)

  return _scheduled_sum(fixed, allowed=OBJECTIVES, name="shaped", state_type=ShapedState,
                        beta=beta)


def shape_rewards(rewards: jax.Array, sup_losses: jax.Array, beta: float | jax.Array,
                  mask: jax.Array) -> jax.Array:
  """The shaped reward r − β·L_sup per argument, 0 outside the mask.

  L_sup is a reward here, a constant for the policy gradient: it is wrapped in stop_gradient.

  Args:
    rewards: float[B, T] RL reward per argument.
    sup_losses: float[B, T] supervised loss per argument (anything where mask is False, NaN too).
    beta: float[] >= 0, the shaping coefficient.
    mask: bool[B, T] which arguments exist.
  Returns:
    float32[B, T].
  """
  chex.assert_rank(rewards, 2)
  chex.assert_equal_shape([rewards, sup_losses, mask])
  shaped_reward = rewards - beta * jax.lax.stop_gradient(sup_losses)
  return jnp.where(mask, shaped_reward, 0.0).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Building from config, chaining, reading the state.

_KINDS = {"weighted": weighted, "constrained": constrained, "shaped": shaped}


def make(kind: str, **options) -> optax.GradientTransformationExtraArgs:
  """Builds the combination ``kind`` ("weighted", "constrained" or "shaped") from its options.

  E.g. ``make("weighted", weights={"rl": 1.0, "sup": 0.5})`` or
  ``make("constrained", limit=0.2, multiplier_lr=0.01)``. Unknown kinds, unknown or missing
  options and invalid values raise a ValueError naming them.
  """
  if kind not in _KINDS:
    raise ValueError(f"unknown combination kind {kind!r}; expected one of {sorted(_KINDS)}")
  build = _KINDS[kind]
  parameters = inspect.signature(build).parameters
  unknown = sorted(set(options) - set(parameters))
  if unknown:
    raise ValueError(f"combination {kind!r}: unknown option(s) {unknown}; its options are "
                     f"{sorted(parameters)}")
  missing = [name for name, p in parameters.items()
             if p.default is inspect.Parameter.empty and name not in options]
  if missing:
    raise ValueError(f"combination {kind!r}: missing required option(s) {missing}")
  return build(**options)


def chain(combination: optax.GradientTransformation, *, clip_norm: float | None,
          optimizer: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """optax.chain(combination, clip_by_global_norm(clip_norm), optimizer).

  Extra args (``losses=...``) given to the chain's update reach every transformation that accepts
  extra args (optax.chain wraps the others to ignore them). ``clip_norm=None``: no clipping.
  """
  clip = []
  if clip_norm is not None:
    clip = [optax.clip_by_global_norm(_checked("clip_norm", clip_norm, CLIP_NORM))]
  return optax.chain(combination, *clip, optimizer)


def find_state(opt_state: Any) -> CombinationState:
  """The combination's state inside ``opt_state`` (its own state or any chain's state holding it).

  Raises ValueError when there is none, or more than one.
  """
  kinds = (WeightedState, ConstrainedState, ShapedState)
  nodes = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kinds))
  found = [node for node in nodes if isinstance(node, kinds)]
  if len(found) != 1:
    raise ValueError(f"expected exactly one combination state in the optimiser state, found "
                     f"{len(found)}")
  return found[0]


def weights(opt_state: Any) -> dict[str, jax.Array]:
  """{objective: float32[]} the weights the latest update applied ("sup" in constrained: μ)."""
  return dict(find_state(opt_state).weights)


def next_weight(opt_state: Any, name: str) -> jax.Array | None:
  """float32[] the weight the NEXT update will apply to objective ``name`` where it is data in
  the state (a constant or ``Linear``, at the state's count); None for a callable schedule (in
  the closure, not the state) or an objective the combination does not weigh ("sup" in
  constrained is μ: None). Jittable; used to skip a pass whose objective has weight 0."""
  state = find_state(opt_state)
  if name not in state.schedules:
    return None
  return _linear_at(state.schedules[name], state.count)


def beta(opt_state: Any) -> jax.Array:
  """float32[] β of the shaped reward (shaped only)."""
  state = find_state(opt_state)
  if not isinstance(state, ShapedState):
    raise ValueError(f"beta: the combination is not 'shaped' (state {type(state).__name__})")
  return state.beta


def set_hparams(opt_state: Any, *, weights: Mapping[str, float | Linear] | None = None,
                limit: Any = None, multiplier_lr: Any = None, max_multiplier: Any = None,
                beta: Any = None) -> Any:
  """``opt_state`` with the combination's hyperparameters replaced; None leaves one as it is.

  The state's structure, shapes and dtypes do not change, so an update (or train step) compiled
  for one value serves them all: build the optimiser and the step once, then give each setting
  of a sweep its own state (``step.init_state(..., hparams=...)``). The weights the next update
  applies (``weights``) are recomputed at the state's count. The arrays not replaced are shared
  with ``opt_state`` (mind donation).

  Args:
    opt_state: an optimiser state holding one combination state (e.g. a chain's).
    weights: {objective: constant >= 0 or Linear} for objectives whose weight is data (given to
      the combination as a number or Linear, not a callable schedule).
    limit, multiplier_lr, max_multiplier: constrained only (checked as in ``constrained``; μ is
      clamped to the new max_multiplier).
    beta: shaped only, >= 0.
    Numbers are checked; arrays (e.g. batched, for vmap) are cast to float32/int32 unchecked.
  Returns:
    the optimiser state with the new combination state. ValueError names a bad option.
  """
  state = find_state(opt_state)
  kind = type(state).__name__
  changes = {}
  schedules = dict(state.schedules)
  for name, weight in (weights or {}).items():
    if name not in schedules:
      raise ValueError(f"set_hparams: the weight of {name!r} is not data in this {kind} (data "
                       f"weights: {sorted(schedules)}; a callable schedule is compiled in)")
    if callable(weight):
      raise ValueError(f"set_hparams: weights[{name!r}] must be a number or Linear, got a callable")
    schedules[name] = _as_data(_check_weight(f"weights.{name}", weight))
  if weights:
    changes["schedules"] = schedules
    changes["weights"] = {**state.weights, **{name: _linear_at(schedules[name], state.count)
                                              for name in weights}}
  given = {"limit": (limit, LIMIT), "multiplier_lr": (multiplier_lr, MULTIPLIER_LR),
           "max_multiplier": (max_multiplier, MAX_MULTIPLIER), "beta": (beta, BETA)}
  for option, (value, rule) in given.items():
    if value is None:
      continue
    if not hasattr(state, option):
      raise ValueError(f"set_hparams: {kind} has no option {option!r}")
    value = _hparam(option, value, jnp.float32, rule)
    changes[option] = jnp.asarray(value, jnp.float32)
  if "max_multiplier" in changes:
    changes["multiplier"] = jnp.minimum(state.multiplier, changes["max_multiplier"])
  new = state._replace(**changes)
  kinds = (WeightedState, ConstrainedState, ShapedState)
  return jax.tree.map(lambda node: new if isinstance(node, kinds) else node, opt_state,
                      is_leaf=lambda x: isinstance(x, kinds))


def multiplier(opt_state: Any) -> jax.Array:
  """float32[] the Lagrange multiplier μ the next update will apply (constrained only)."""
  state = find_state(opt_state)
  if not isinstance(state, ConstrainedState):
    raise ValueError(f"multiplier: the combination is not 'constrained' (state "
                     f"{type(state).__name__})")
  return state.multiplier


def metrics(opt_state: Any) -> dict[str, jax.Array]:
  """Scalars to log: "weight/<objective>" for each weight, and "multiplier" for constrained."""
  state = find_state(opt_state)
  out = {f"weight/{name}": w for name, w in state.weights.items()}
  if isinstance(state, ConstrainedState):
    out["multiplier"] = state.multiplier
  return out
