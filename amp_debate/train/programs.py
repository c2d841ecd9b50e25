"""The compiled programs of a run, built from its config and mesh alone, and cached per process.

``get(config, mesh)`` gives a run's ``Programs``: the task, the state's init function, shapes and
shardings, the pure step and the jitted evaluation; ``Programs.train_step(n)`` is the step over a
leading axis of ``n`` runs that the training loop (``train/trainer.py``) runs. Runs whose configs
differ only in host-side fields (``config_lib.is_host_only``: the schedule, paths, the seed, whose
key is an argument) share programs; runs that also differ in data fields (``config_lib.DATA_FIELDS``,
hyperparameters held in the state) share a group key and can train as one group.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from amp_debate.train import config_lib, sharding
from amp_debate.train import step as step_lib
from amp_debate.train.evaluation import make_eval_fn


def build(config: ml_collections.ConfigDict):
  """(task, model, tx, step_config, init_fn) of a validated config."""
  task = config_lib.make_task(config)
  model = config_lib.make_model(config, task)
  tx = config_lib.make_optimizer(config)
  step_config = config_lib.make_step_config(config)
  init_fn = lambda rng: step_lib.init_state(task, model, tx, step_config, rng)
  return task, model, tx, step_config, init_fn


def stacked_sharding(s: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
  """``s`` with a leading, unsplit run axis: every device holds every run's slice of its shards."""
  return jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec(None, *s.spec))


@dataclasses.dataclass(frozen=True)
class Programs:
  """What a run traces and compiles.

  Attributes:
    task, init_fn: the task and ``rng -> TrainState`` (unsharded; ``sharding.init_sharded_state``).
    abstract: the TrainState's shapes and dtypes.
    shardings: the TrainState's shardings on the mesh (one run).
    step_fn: the pure step ``(state, rng) -> (state, metrics)``.
    make_eval: ``with_debates -> (params, questions, answers, rng) -> {metric: values}``, the pure
      evaluation (``evaluation.make_eval_fn``); ``eval_fn`` jits it.
    mesh: the mesh it was built for.
  """

  task: Any
  init_fn: Any
  abstract: Any
  shardings: Any
  step_fn: Any
  make_eval: Any
  mesh: Any
  _steps: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
  _evals: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

  def eval_fn(self, with_debates: bool):
    """The jitted evaluation, with or without the debates (``evaluation.make_eval_fn``); outputs
    replicated: every process reads the per-question values whole (device_get cannot fetch an
    array split over other processes' devices). Built on first use: runs that differ only in
    ``eval.debates`` share the step."""
    if with_debates not in self._evals:
      self._evals[with_debates] = jax.jit(
          self.make_eval(with_debates),
          out_shardings=jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))
    return self._evals[with_debates]

  def train_step(self, runs: int):
    """``(states, keys) -> (states, metrics)`` over a leading axis of ``runs`` runs, jitted for the
    mesh: states sharded like ``shardings`` behind the run axis and donated, keys ``[runs]`` and
    metrics (each ``[runs, ...]``) replicated. One run squeezes the axis away inside the program
    (the step it runs is exactly the unbatched one); more vmap ``step_fn``."""
    if runs not in self._steps:
      if runs == 1:
        squeeze = lambda tree: jax.tree.map(lambda x: x[0], tree)
        expand = lambda tree: jax.tree.map(lambda x: x[None], tree)
        batched = lambda states, keys: expand(self.step_fn(squeeze(states), keys[0]))
      else:
        batched = jax.vmap(self.step_fn)
      stacked = jax.tree.map(stacked_sharding, self.shardings)
      rep = sharding.replicated(self.mesh)
      self._steps[runs] = jax.jit(batched, in_shardings=(stacked, rep),
                                  out_shardings=(stacked, rep), donate_argnums=0)
    return self._steps[runs]


_PROGRAMS: dict[str, Programs] = {}  # most recently used last
_KEEP = 4


def clear() -> None:
  """Forgets every cached program (e.g. before compiling for another topology)."""
  _PROGRAMS.clear()


def get(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Programs:
  """The run's programs, from this process's cache when an earlier run built the same ones."""
  fields = {name: value for name, value in config_lib.flatten(config).items()
            if not config_lib.is_host_only(name) and not config_lib.picks_program(name)}
  key = json.dumps([sorted(fields.items()), dict(mesh.shape),
                    [d.id for d in mesh.devices.flat]], default=repr)
  if key in _PROGRAMS:
    _PROGRAMS[key] = _PROGRAMS.pop(key)
    return _PROGRAMS[key]
  task, model, tx, step_config, init_fn = build(config)
  constrain = sharding.batch_constraint(mesh)
  # The packed gradient passes pool rows within each data shard's games (no row leaves its device).
  step_config = dataclasses.replace(step_config, pack_groups=sharding.num_batch_shards(mesh))
  if config.mode == "supervised":
    step_fn = step_lib.build_supervised_step(task, model, tx, step_config,
                                             constrain_batch=constrain)
  else:
    step_fn = step_lib.build_train_step(task, model, tx, step_config,
                                        combination=config.combination.kind,
                                        constrain_batch=constrain)
  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  shardings = sharding.state_shardings(mesh, abstract, model, tx)
  make_eval = lambda with_debates: make_eval_fn(task, model, step_config, with_debates)
  programs = Programs(task, init_fn, abstract, shardings, step_fn, make_eval, mesh)
  _PROGRAMS[key] = programs
  while len(_PROGRAMS) > _KEEP:
    _PROGRAMS.pop(next(iter(_PROGRAMS)))
  return programs


# ---- groups: runs that share one compiled step --------------------------------------------------
def group_key(config: ml_collections.ConfigDict) -> str:
  """Runs with equal keys can train as one group: every config field except the seed and
  ``config_lib.DATA_FIELDS``, as JSON."""
  fields = {name: value for name, value in config_lib.flatten(config).items()
            if name != "seed" and not config_lib.is_data_field(name)}
  return json.dumps(sorted(fields.items()), default=repr)


def check_group(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """ValueError (one line) unless the configs can train as one group: each valid, all with one
  ``group_key``."""
  if not configs:
    raise ValueError("a group needs at least one run")
  for config in configs:
    config_lib.validate(config)
  keys = [group_key(c) for c in configs]
  for i, key in enumerate(keys[1:], 1):
    if key != keys[0]:
      first = dict(json.loads(keys[0]))
      other = dict(json.loads(key))
      diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
      raise ValueError(f"runs 0 and {i} cannot share a compiled step: they differ in "
                       f"{', '.join(diff[:5])} (only the seed and {', '.join(config_lib.DATA_FIELDS)} "
                       f"may differ in a group)")
