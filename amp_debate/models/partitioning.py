"""Logical axis names for every parameter, their mapping to mesh axes, and unboxed initialisation.

Every parameter is created through ``nn.with_logical_partitioning`` with names from this list:

| name | axis of |
|---|---|
| vocab | token embedding rows, output head columns |
| embed | the residual stream (d_model) |
| heads, kv | attention heads and the per-head width |
| mlp | the MLP hidden layer (d_ff), the image judge's dense layer |
| positions | learned position table rows |
| classes | judge output classes |
| conv_height, conv_width, conv_in, conv_out | convolution kernels |
| image_features | the image judge's flattened conv output |

A later mesh with axes ("data", "fsdp", "tensor") shards them with ``LOGICAL_AXIS_RULES``:
``nn.logical_to_mesh_sharding(logical_axes(...), mesh, rules_for_mesh(mesh.axis_names))``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("vocab", None),  # vocabularies here are tiny (~20-300): replicate, never split unevenly
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("positions", None),
    ("classes", None),
    ("conv_height", None),
    ("conv_width", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("image_features", None),
)


def rules_for_mesh(mesh_axis_names: Sequence[str], rules=LOGICAL_AXIS_RULES):
  """``rules`` without the mesh axes the mesh lacks; a logical axis left with none is replicated."""
  present = set(mesh_axis_names)
  out = []
  for logical, mesh_axes in rules:
    if isinstance(mesh_axes, str):
      mesh_axes = (mesh_axes,)
    kept = tuple(a for a in (mesh_axes or ()) if a in present)
    out.append((logical, kept[0] if len(kept) == 1 else (kept or None)))
  return tuple(out)


def init_params(module: nn.Module, rng: jax.Array, *inputs, **kwargs):
  """``module.init(rng, *inputs, **kwargs)["params"]`` with the partitioning boxes removed."""
  return nn.meta.unbox(module.init(rng, *inputs, **kwargs)["params"])


def logical_axes(module: nn.Module, *inputs, **kwargs):
  """Tree of ``PartitionSpec``s of logical axis names, shaped like ``init_params``' result.

  Computed abstractly (no parameter is materialised), so it is cheap for any model size.
  """
  boxed = jax.eval_shape(lambda r: module.init(r, *inputs, **kwargs)["params"], jax.random.key(0))
  return nn.get_partition_spec(boxed)
