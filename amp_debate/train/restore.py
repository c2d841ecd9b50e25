"""Loading checkpoints for other tools and for a run's start: ``load_state`` (a run's state and
config, for evaluation scripts and notebooks), ``load_params`` (a checkpoint's parameters, checked
against the config that names it), ``starting_params`` / ``start_from`` (``init_from`` and the KL
budget's reference, for a fresh run). Saving and resuming a run's own checkpoints is
``checkpoint.py``'s ``Checkpointer``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from amp_debate.safety import kl_budget
from amp_debate.train import checkpoint as checkpoint_lib
from amp_debate.train import config_lib, programs
from amp_debate.train import step as step_lib

def load_state(workdir: str, step: int | None = None):
  """(TrainState, config ConfigDict, step) from ``<workdir>/checkpoints`` (default: the latest
  step), restored onto the first local device: for evaluation scripts and notebooks.

  Raises CheckpointError when there is no checkpoint (or it is unreadable).
  """
  with checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints")) as checkpointer:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise checkpoint_lib.CheckpointError(f"no checkpoint in {workdir}/checkpoints")
    config = config_lib.from_saved(checkpointer.saved_config(step))
    *_, init_fn = programs.build(config)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    key = jax.random.key(0)
    abstract = {"state": jax.eval_shape(init_fn, key), "rng": jax.eval_shape(lambda: key)}
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            abstract)
    restored, _ = checkpointer.restore(abstract, step)
  return restored["state"], config, step


def load_params(spec: str, config: ml_collections.ConfigDict, field: str, abstract_params: Any):
  """The parameters of the checkpoint ``spec`` ("workdir[:step]", the latest step if none), which
  must be of ``config``'s task (and task options) and match ``abstract_params`` (shapes, dtypes).

  Raises config_lib.ConfigError, one line naming the config ``field``, when there is no such run
  or step, or the checkpoint belongs to another task or model.
  """
  workdir, step = config_lib.checkpoint_spec(spec)
  where = f"config.{field}={spec!r}"
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise config_lib.ConfigError(f"{where}: no run there ({os.path.join(workdir, 'checkpoints')} "
                                 f"does not exist)")
  try:
    state, saved, _ = load_state(workdir, step)
  except checkpoint_lib.CheckpointError as e:
    raise config_lib.ConfigError(f"{where}: {e}") from None
  except (AttributeError, KeyError, ValueError) as e:  # a config this code cannot build
    first = (str(e).splitlines() or [""])[0][:120]
    raise config_lib.ConfigError(f"{where}: cannot rebuild its run from its config "
                                 f"({type(e).__name__}: {first})") from None
  theirs = (saved.task, dict(sorted(saved.task_options.items())))
  ours = (config.task, dict(sorted(config.task_options.items())))
  if theirs != ours:
    raise config_lib.ConfigError(f"{where}: a checkpoint of task {theirs[0]} {theirs[1]}, not "
                                 f"this run's {ours[0]} {ours[1]}")
  name = lambda path: jax.tree_util.keystr(path)
  have = {name(p): x for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  want = {name(p): x for p, x in jax.tree_util.tree_flatten_with_path(abstract_params)[0]}
  for key in sorted(have.keys() | want.keys()):
    if key not in have or key not in want:
      raise config_lib.ConfigError(f"{where}: another model (parameter {key} is only in "
                                   f"{'its' if key in have else 'this run'}'s model)")
    a, b = have[key], want[key]
    if (tuple(a.shape), a.dtype) != (tuple(b.shape), b.dtype):
      raise config_lib.ConfigError(f"{where}: another model (parameter {key} is "
                                   f"{a.dtype}{list(a.shape)} there, {b.dtype}{list(b.shape)} "
                                   f"here)")
  return state.params


def starting_params(config: ml_collections.ConfigDict, abstract_params: Any) -> dict[str, Any]:
  """The parameters a fresh run starts from, loaded and checked (``load_params``) before anything
  compiles: {"params": M's and M_target's, from ``config.init_from``; "anchor": the KL budget's
  π_safe, from ``config.safety.kl_budget.reference``}, each present only when its field is set
  (a checkpoint named by both is loaded once)."""
  reference = config.safety.kl_budget.reference if config_lib.kl_budget_on(config) else ""
  fields = {"params": ("init_from", config.init_from),
            "anchor": ("safety.kl_budget.reference", reference)}
  loaded, out = {}, {}
  for role, (field, spec) in fields.items():
    if spec:
      if spec not in loaded:
        loaded[spec] = load_params(spec, config, field, abstract_params)
      out[role] = loaded[spec]
  return out


def start_from(state: step_lib.TrainState, start: Mapping[str, Any],
                shardings: Any) -> step_lib.TrainState:
  """A fresh state with M and M_target (and the KL anchor's reference, if any) set to
  ``start["params"]`` and the KL budget's anchor to ``start["anchor"]`` where given
  (``starting_params``), each sharded like the params. Each gets its own copy: the step donates
  the state, and one buffer cannot be donated twice."""
  put = lambda params: jax.tree.map(jnp.copy, jax.device_put(params, shardings.params))
  if "params" in start:
    state = state.replace(params=put(start["params"]), target_params=put(start["params"]))
    if state.anchor_params is not None:  # the KL anchor's reference is M at step 0
      state = state.replace(anchor_params=put(start["params"]))
    if state.league_params is not None:  # every snapshot starts as M at step 0
      size = jax.tree.leaves(state.league_params)[0].shape[0]
      state = state.replace(league_params=jax.device_put(
          step_lib.league_of(start["params"], size), shardings.league_params))
  if "anchor" in start:
    state = state.replace(opt_state=kl_budget.set_anchor(state.opt_state, put(start["anchor"])))
  return state

