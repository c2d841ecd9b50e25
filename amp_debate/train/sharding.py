"""Device mesh and shardings for the train state and the jitted step (no pmap, no shard_map).

  mesh = make_mesh(data=-1, fsdp=1)                 # axes ("data", "fsdp") over all devices
  check_batch(config.batch_size, mesh)
  init_fn = lambda rng: step.init_state(task, model, tx, config, rng)
  shardings = state_shardings(mesh, jax.eval_shape(init_fn, rng), model, tx)
  state = init_sharded_state(init_fn, mesh, shardings, rng)   # params born sharded
  train_step = shard_step(step.build_train_step(..., constrain_batch=batch_constraint(mesh)),
                          mesh, shardings)
  state, metrics = train_step(state, rng)          # metrics replicated on every device

Layout. The mesh has two axes; the batch is split over both (``data`` × ``fsdp`` shards), the
parameters only over ``fsdp``:
- ``data``: pure data parallelism. Parameters and optimiser state are replicated; XLA all-reduces
  the gradients.
- ``fsdp``: fully sharded data parallelism. Every parameter dimension with the logical name
  "embed" (d_model) is split ``fsdp`` ways (``partitioning.LOGICAL_AXIS_RULES``), and so are the
  optimiser leaves that mirror the parameters (Adam's mu and nu, ...). XLA all-gathers a weight
  where it is used and reduce-scatters its gradient. ``fsdp`` must divide d_model.
Everything else in the state (step, the combination's count, weights and Lagrange multiplier,
the curriculum) is a scalar or tiny and is replicated.

Shardings are ``jax.sharding.NamedSharding`` on a mesh whose axes are ``AxisType.Auto``: jit's
in/out shardings pin the state's layout and GSPMD propagates shardings through the step. The step
generates its own questions per example from ``fold_in(rng, i)`` (``step.sample_batch``), so the
global batch is the same for every mesh. Nothing in the state says how to lay out the batch
(with replicated params GSPMD would run the whole batch on every device), so the step pins the
sampled batch to the data shards with ``batch_constraint(mesh)`` (the step builders'
``constrain_batch`` argument): each device then generates and processes its own examples and
the gradients are all-reduced.

Multi-host: call ``jax.distributed.initialize()`` first (every process, same arguments); then
``jax.devices()`` lists the devices of all processes and the same code builds one global mesh.
Every process must call the jitted functions with the same (replicated) rng.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from amp_debate.models import partitioning
from amp_debate.models.transformer import LanguageModel

AXES = ("data", "fsdp")


def _check_axis_size(name: str, size: Any) -> None:
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or (
      size != -1 and size < 1):
    raise ValueError(f"make_mesh: {name} must be a positive integer or -1 (all remaining "
                     f"devices), got {size!r}")


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh of shape (data, fsdp) with axes ("data", "fsdp") over ``devices``.

  Args:
    data: data-parallel shards; -1 = all devices not used by ``fsdp``.
    fsdp: parameter shards (each also takes its own slice of the batch); -1 = all devices not
      used by ``data``. At most one of the two may be -1.
    devices: default ``jax.devices()`` (every process's devices after
      ``jax.distributed.initialize``).
  Returns:
    ``Mesh`` with ``AxisType.Auto`` axes, devices ordered by ``jax.make_mesh`` (topology-aware).
  Raises:
    ValueError: a size that is not a positive integer or -1, both -1, or data·fsdp different
      from the number of devices.
  """
  _check_axis_size("data", data)
  _check_axis_size("fsdp", fsdp)
  devices = list(jax.devices() if devices is None else devices)
  count = len(devices)
  if count == 0:
    raise ValueError("make_mesh: devices is empty")
  if data == -1 and fsdp == -1:
    raise ValueError("make_mesh: at most one of data and fsdp may be -1")
  if data == -1 or fsdp == -1:
    free, known, size = ("data", "fsdp", fsdp) if data == -1 else ("fsdp", "data", data)
    if count % size:
      raise ValueError(f"make_mesh: {free}=-1 takes the devices {known}={size} leaves, but "
                       f"{known}={size} does not divide the device count {count}")
    data, fsdp = (count // fsdp, fsdp) if data == -1 else (data, count // data)
  if data * fsdp != count:
    raise ValueError(f"make_mesh: data={data} x fsdp={fsdp} = {data * fsdp} must equal the "
                     f"device count {count}")
  return jax.make_mesh((int(data), int(fsdp)), AXES, axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of a value held whole on every device of ``mesh``."""
  return NamedSharding(mesh, P())


def batch_spec(mesh: Mesh) -> P:
  """PartitionSpec splitting a leading batch axis over the data shards (the "batch" rule)."""
  rules = dict(partitioning.rules_for_mesh(mesh.axis_names))
  return P(rules.get("batch"))


def num_batch_shards(mesh: Mesh) -> int:
  """How many slices the batch is split into (data × fsdp)."""
  axes = batch_spec(mesh)[0]
  axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
  return math.prod(mesh.shape[a] for a in axes)


def check_batch(batch_size: int, mesh: Mesh) -> None:
  """Raises ValueError unless ``batch_size`` splits evenly over the mesh's data shards."""
  shards = num_batch_shards(mesh)
  if batch_size % shards:
    raise ValueError(f"batch_size={batch_size} must be divisible by the number of data-parallel "
                     f"shards {shards} (data x fsdp over {mesh.devices.size} devices)")


def batch_constraint(mesh: Mesh) -> Callable[[Any], Any]:
  """``constrain(tree)``: every array in ``tree`` split along its leading (batch) axis over the
  data shards, other axes replicated (``jax.lax.with_sharding_constraint``; use inside jit).

  Leading axes must be divisible by ``num_batch_shards(mesh)`` (see ``check_batch``).
  """
  sharding = NamedSharding(mesh, batch_spec(mesh))
  return lambda tree: jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def param_shardings(mesh: Mesh, logical_axes_tree: Any) -> Any:
  """NamedShardings for a tree of logical-axis PartitionSpecs (``LanguageModel.logical_axes()``),
  through ``partitioning.LOGICAL_AXIS_RULES`` restricted to the mesh's axes."""
  return nn.logical_to_mesh_sharding(logical_axes_tree, mesh,
                                     partitioning.rules_for_mesh(mesh.axis_names))


def _check_divisible(mesh: Mesh, abstract_params: Any, shardings: Any) -> None:
  """ValueError naming the parameter whose dimension a mesh axis does not divide."""

  def check(path, leaf, sharding):
    for dim, axes in zip(leaf.shape, sharding.spec, strict=False):  # spec may be shorter
      axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
      split = math.prod(mesh.shape[a] for a in axes)
      if dim % split:
        raise ValueError(f"parameter {jax.tree_util.keystr(path)} of shape {leaf.shape}: "
                         f"dimension {dim} is not divisible by mesh axes {axes} of size {split} "
                         f"(choose fsdp dividing the model's d_model)")

  jax.tree.map_with_path(check, abstract_params, shardings)


def state_shardings(mesh: Mesh, abstract_state: Any, model: LanguageModel,
                    tx: optax.GradientTransformation) -> Any:
  """NamedShardings shaped like ``abstract_state`` (a ``step.TrainState`` of ShapeDtypeStructs,
  from ``jax.eval_shape(init_fn, rng)``).

  params, target_params (and the KL anchor's anchor_params; the league's snapshots, stacked
  [K, ...], the same with K unsplit): by the model's logical axes. opt_state: every copy of the
  parameter tree inside it (found by ``optax.tree_map_params``, e.g. Adam's mu and nu) sharded like the
  params where the leaf has the parameter's shape; all other leaves (counts, combination
  weights, Lagrange multiplier, factored statistics) replicated. step, curriculum: replicated.

  Raises:
    ValueError: the model's parameters do not match ``abstract_state.params``, or a mesh axis
      does not divide the parameter dimension it shards.
  """
  params = param_shardings(mesh, model.logical_axes())
  if jax.tree.structure(params) != jax.tree.structure(abstract_state.params):
    raise ValueError("state_shardings: the model's logical axes do not match the state's params "
                     "(was the state initialised with this model?)")
  _check_divisible(mesh, abstract_state.params, params)
  rep = replicated(mesh)
  opt_state = optax.tree_map_params(
      tx, lambda leaf, sharding, param: sharding if leaf.shape == param.shape else rep,
      abstract_state.opt_state, params, abstract_state.params,
      transform_non_params=lambda _: rep)
  return abstract_state.replace(
      step=rep, params=params, target_params=params, opt_state=opt_state,
      curriculum=jax.tree.map(lambda _: rep, abstract_state.curriculum),
      anchor_params=None if abstract_state.anchor_params is None else params,
      league_params=(None if abstract_state.league_params is None
                     else jax.tree.map(_stacked, params)))


def _stacked(sharding: NamedSharding) -> NamedSharding:
  """The sharding of a stack of parameters [K, ...] (the league): the parameter's, unsplit on K."""
  return NamedSharding(sharding.mesh, P(None, *sharding.spec))


def init_sharded_state(init_fn: Callable[[jax.Array], Any], mesh: Mesh, shardings: Any,
                       rng: jax.Array) -> Any:
  """``init_fn(rng)`` jitted with ``out_shardings=shardings``: each device computes only its own
  shards, so the parameters are never materialised whole on one device. ``rng`` is replicated."""
  return jax.jit(init_fn, in_shardings=replicated(mesh), out_shardings=shardings)(rng)


def shard_step(step_fn: Callable[[Any, jax.Array], tuple[Any, Any]], mesh: Mesh,
               shardings: Any) -> Callable[[Any, jax.Array], tuple[Any, Any]]:
  """``step_fn(state, rng) -> (state, metrics)`` jitted for the mesh: the state keeps
  ``shardings`` (and is donated), the rng and the metrics are replicated."""
  rep = replicated(mesh)
  return jax.jit(step_fn, in_shardings=(shardings, rep), out_shardings=(shardings, rep),
                 donate_argnums=0)
