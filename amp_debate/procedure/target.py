"""The target network M_target: a periodic hard copy of M's params, or their Polyak average."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from amp_debate import checks


def check_target_options(period: int | None, ema: float | None, *, owner: str = "update_target",
                         names: tuple[str, str] = ("period", "ema")) -> None:
  """Raises ``checks.FieldError`` unless exactly one of period (an integer >= 1) or ema (in
  [0, 1)) is given. ``owner`` and ``names`` are how the caller calls them (``StepConfig``:
  target_period, target_ema)."""
  period_name, ema_name = names
  if (period is None) == (ema is None):
    raise checks.FieldError(owner, period_name, f"and {ema_name}: give exactly one, got "
                            f"{period_name}={period!r}, {ema_name}={ema!r}")
  checks.check(owner, period_name, period, checks.optional(checks.integer(1)))
  checks.check(owner, ema_name, ema, checks.optional(checks.number(0.0, 1.0, hi_open=True)))


def update_target(params: chex.ArrayTree, target_params: chex.ArrayTree, step: int | jax.Array, *,
                  period: int | None = None, ema: float | None = None) -> chex.ArrayTree:
  """New target params (same tree, shapes and dtypes as ``target_params``).

  Exactly one mode (static):
    period: hard copy ``target <- params`` when ``step % period == 0``, else unchanged.
    ema: Polyak averaging ``target <- ema·target + (1 - ema)·params`` (ema = 0 copies every step).

  Args:
    params: M's params.
    target_params: M_target's params, same tree structure and shapes.
    step: int or traced int32[]: the step count used by the period mode (ignored by ema).
    period, ema: the mode; ``checks.FieldError`` unless exactly one is given and in range.
  """
  check_target_options(period, ema)
  chex.assert_trees_all_equal_shapes(params, target_params)
  if period is not None:
    copy = jnp.asarray(step) % period == 0
    return jax.tree.map(lambda p, t: jnp.where(copy, p.astype(t.dtype), t), params, target_params)
  return jax.tree.map(lambda p, t: (ema * t + (1.0 - ema) * p).astype(t.dtype), params,
                      target_params)
