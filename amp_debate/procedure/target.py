"""The target network M_target: a periodic hard copy of M's params, or their Polyak average."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np


def check_target_options(period: int | None, ema: float | None) -> None:
  """Raises ValueError unless exactly one of period (int >= 1) or ema (in [0, 1)) is given."""
  if (period is None) == (ema is None):
    raise ValueError("update_target: give exactly one of the options period (config target_period) "
                     f"and ema (config target_ema); got period={period!r}, ema={ema!r}")
  if period is not None and (isinstance(period, bool) or not isinstance(period, (int, np.integer)) or period < 1):
    raise ValueError(f"update_target: option period={period!r} must be an integer >= 1")
  if ema is not None and not 0.0 <= ema < 1.0:
    raise ValueError(f"update_target: option ema={ema!r} must be in [0, 1)")


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
    period, ema: the mode; ValueError unless exactly one is given and in range.
  """
  check_target_options(period, ema)
  chex.assert_trees_all_equal_shapes(params, target_params)
  if period is not None:
    copy = jnp.asarray(step) % period == 0
    return jax.tree.map(lambda p, t: jnp.where(copy, p.astype(t.dtype), t), params, target_params)
  return jax.tree.map(lambda p, t: (ema * t + (1.0 - ema) * p).astype(t.dtype), params,
                      target_params)
