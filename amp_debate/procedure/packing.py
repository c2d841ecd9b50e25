"""Scoring only the rows that exist: a gradient pass over row chunks, as many as the batch needs.

The losses score *rows* laid out per game, [B, G] (``credit``'s policy rows [B, R, 2, K] reshaped,
the distillation targets per game). Static shapes reserve a slot for every row a game could have;
in a typical batch half of them or more are empty (a side that did not compute, a node H was not
called on, subquestions a node did not pose), and a pass over all G slots spends half its FLOPs on
padding. ``pooled`` lays the rows of consecutive games side by side (one pool per data shard, so
under data parallelism each device keeps its own rows), ``active_first`` sorts each pool's rows
so its real ones come first (a gather within the pool), and ``chunked_sum`` then visits the slot
columns in chunks of ``width``, only as many chunks as the fullest pool needs
(``ceil(max_pool active / width)``, a traced trip count: a ``lax.while_loop``, no
recompilation), summing what each chunk returns (gradients and loss terms). Pooling matters: per
game, the trip count followed the fullest game of the batch (measured on the quick-start hybrid at
the top level: 9 chunks of 64 rows for 398 real rows; pooled over the batch, 7).

Every loss here is a ratio of sums over rows (Σ num / Σ den, ``procedure.losses``), so the sum
over chunks of ``chunk_loss · chunk_den / total_den`` is the loss over all rows exactly (up to the
order of floating-point additions), and so is its gradient: ``weight_of`` computes those fractions.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import chex
import jax
import jax.numpy as jnp

Tree = TypeVar("Tree")


def _take(x: jax.Array, order: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)


def active_first(tree: Tree, active: jax.Array) -> tuple[Tree, jax.Array]:
  """Sorts every game's rows so the active ones come first, in their original order.

  Args:
    tree: a pytree of arrays [B, G, ...] (rows per game).
    active: bool[B, G].
  Returns:
    (tree with axis 1 permuted the same way in every leaf, active permuted likewise).
  """
  chex.assert_rank(active, 2)
  chex.assert_tree_shape_prefix(tree, active.shape)
  order = jnp.argsort(~active, axis=1, stable=True)
  return jax.tree.map(lambda x: _take(x, order), tree), _take(active, order)


def pooled(tree: Tree, active: jax.Array, groups: int) -> tuple[Tree, jax.Array]:
  """The rows of every ``B / groups`` consecutive games pooled into one row of slots, so that
  ``active_first`` then packs real rows across games: [B, G, ...] -> [groups, (B / groups)·G, ...]
  (a reshape, no data moved). With ``groups`` = the data-parallel shards, each device's games stay
  on it (the batch is sharded in contiguous blocks), and a chunk of ``width`` slots per group
  holds up to ``groups · width`` real rows whichever games they come from: the trip count
  follows the total of real rows, not the fullest game's.

  Args:
    tree: a pytree of arrays [B, G, ...].
    active: bool[B, G].
    groups: static, divides B.
  Returns:
    (tree [groups, B·G / groups, ...], active [groups, B·G / groups]).
  """
  chex.assert_rank(active, 2)
  chex.assert_tree_shape_prefix(tree, active.shape)
  b, g = active.shape
  if groups < 1 or b % groups:
    raise ValueError(f"pooled: groups must be >= 1 and divide the {b} games, got {groups}")
  pool = lambda x: x.reshape((groups, (b // groups) * g) + x.shape[2:])
  return jax.tree.map(pool, tree), pool(active)


def merge_duplicates(keys: list[jax.Array], active: jax.Array) -> jax.Array:
  """Multiplicities of exact duplicate rows within each pool: a row whose keys equal an earlier
  active row's is folded into it.

  A loss that is a ratio of sums over rows is unchanged when each set of identical rows is
  scored once with its multiplicity as a row weight (``losses.distillation_loss``'s
  ``row_weights``), and the packed pass then visits only the distinct rows. Exact: rows are
  compared on every key column (a lexicographic sort, then neighbours), no hashing.

  Args:
    keys: arrays [P, N, ...] (int or bool; e.g. a row's prompt, tokens and mask): two rows are
      duplicates iff every key is equal.
    active: bool[P, N].
  Returns:
    int32[P, N]: for the first row (in slot order) of each set of identical active rows, the
    set's size; 0 for its repeats and for inactive rows. Its sum over a pool equals the pool's
    active rows.
  """
  chex.assert_rank(active, 2)
  chex.assert_tree_shape_prefix(keys, active.shape)
  p, n = active.shape
  columns = jnp.concatenate([k.reshape(p, n, -1).astype(jnp.int32) for k in keys], axis=-1)

  def one_pool(cols, act):  # [N, C], [N]
    slot = jnp.arange(n, dtype=jnp.int32)
    # Sort by (inactive last, every column, slot): identical active rows become neighbours,
    # the earliest slot first. lexsort's last key is the primary one.
    order = jnp.lexsort((slot,) + tuple(cols[:, c] for c in range(cols.shape[1]))[::-1]
                        + ((~act).astype(jnp.int32),))
    cols_s, act_s = cols[order], act[order]
    same = jnp.concatenate([jnp.zeros((1,), bool),
                            (cols_s[1:] == cols_s[:-1]).all(-1) & act_s[1:] & act_s[:-1]])
    group = jnp.cumsum(~same) - 1  # [N] id of each sorted row's set
    size = jax.ops.segment_sum(act_s.astype(jnp.int32), group, num_segments=n)
    counts_s = jnp.where(act_s & ~same, size[group], 0)
    return jnp.zeros((n,), jnp.int32).at[order].set(counts_s)

  return jax.vmap(one_pool)(columns, active)


def num_chunks(active: jax.Array, width: int) -> jax.Array:
  """int32[]: chunks of ``width`` slot columns that hold every active row once sorted
  (``active_first``): ceil(max over games of active rows / width)."""
  most = active.sum(1).max().astype(jnp.int32)
  return (most + width - 1) // width


def chunked_sum(fn: Callable[[Any], Any], tree: Tree, active: jax.Array, width: int) -> Any:
  """Σ over slot-column chunks of ``fn(chunk)``, skipping the chunks that hold no active row.

  Args:
    fn: chunk -> pytree of arrays (summed leafwise over chunks); a chunk is ``tree`` with axis 1
      cut to ``width`` slots ([B, width, ...]). It must return zeros for a chunk of inactive rows
      (the losses do), since a partly active chunk still carries some.
    tree: pytree of arrays [B, G, ...], sorted with ``active_first``.
    active: bool[B, G], sorted likewise.
    width: static chunk width (>= 1). ``width >= G``: one call on the whole tree, no loop.
  Returns:
    the sum, shaped like ``fn``'s output.
  """
  chex.assert_rank(active, 2)
  g = active.shape[1]
  if width < 1:
    raise ValueError(f"chunked_sum: width must be >= 1, got {width}")
  if width >= g:
    return fn(tree)
  pad = -g % width
  if pad:  # inactive padding slots (zeros: PAD tokens, masks False)
    widen = lambda x: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    tree, active = jax.tree.map(widen, tree), widen(active)
  # Traced once: the shape query and the loop body reuse one trace of fn (same input shapes).
  fn = jax.jit(fn, inline=True)
  shape = jax.eval_shape(fn, jax.tree.map(lambda x: x[:, :width], tree))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape)

  def body(i, total):
    chunk = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, i * width, width, axis=1),
                         tree)
    return jax.tree.map(jnp.add, total, fn(chunk))

  return jax.lax.fori_loop(0, num_chunks(active, width), body, zeros)


def weight_of(part: jax.Array, total: jax.Array) -> jax.Array:
  """float32[]: a chunk's share ``part / total`` of a loss's denominator (0 when total is 0);
  never differentiated."""
  part, total = jax.lax.stop_gradient((part, total))
  return jnp.where(total > 0, part / jnp.where(total > 0, total, 1), 0.0).astype(jnp.float32)
