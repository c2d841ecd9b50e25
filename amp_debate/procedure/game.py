"""A small, generic engine for batched turn-based games, and the masked rollout that plays them.

A game is pure functions of a batched state (a pytree of arrays with a leading batch axis B):

  init(rng, inputs) -> state
  legal(state)      -> bool[B, A]   the actions that do something now
  step(state, a)    -> state        a: int32[B]; a finished game must come back unchanged or be
                                    masked by the caller (``play`` masks it)
  done(state)       -> bool[B]
  to_play(state)    -> int32[B]     the seat (index into ``players``) that moves next

A player is ``(state, key) -> int32[B]`` actions for every game of the batch (it may read the game
through a closure: the search debaters do).

``masked_loop`` is the rollout loop of every game in this package: a ``lax.scan`` over steps whose
body keeps a per-game ``done`` mask (finished games are frozen and their later records inactive),
or, with ``early_exit=True``, the same body in a ``lax.while_loop`` that stops when every game is
done. The results are identical: step t's key is ``fold_in(rng, t)`` and masked steps change
nothing. The tree debate (``procedure/debate.py``) runs its rounds on it (a round there is a
claim/support/dispute exchange with its own bookkeeping); ``play`` runs a move-by-move game on it,
and the pixel debate (``procedure/pixel_debate.py``) is such a game.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import chex
import flax.struct
import jax
import jax.numpy as jnp

Player = Callable[[Any, jax.Array], jax.Array]
NO_ACTION = -1


class Game(Protocol):
  """The pure functions a game provides (see the module docstring for shapes)."""

  def init(self, rng: jax.Array, inputs: Any) -> Any: ...

  def legal(self, state: Any) -> jax.Array: ...

  def step(self, state: Any, actions: jax.Array) -> Any: ...

  def done(self, state: Any) -> jax.Array: ...

  def to_play(self, state: Any) -> jax.Array: ...


@flax.struct.dataclass
class MoveRecord:
  """Per-move record of a rollout, stacked over moves T.

  Attributes:
    actions: int32[T, B] the action played (NO_ACTION where the game was already done).
    to_play: int32[T, B] the seat that moved (NO_ACTION where done).
    active: bool[T, B] whether the game was still running at that move.
  """

  actions: jax.Array
  to_play: jax.Array
  active: jax.Array


def select(mask: jax.Array, new, old):
  """Per-game select over two states with the same structure (mask: bool[B])."""

  def pick(n, o):
    return jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - 1)), n, o)

  return jax.tree.map(pick, new, old)


def choose(players: Sequence[Player], state, to_play: jax.Array, active: jax.Array,
           key: jax.Array, uniform_turns: bool) -> jax.Array:
  """Every game's action from the player whose seat ``to_play`` (int32[B]) names.

  uniform_turns=True: the game guarantees that all running games share the seat to move, so only
  that player runs (``lax.switch`` on the first active game's seat). Otherwise every player runs on
  the whole batch and each game takes its own seat's action.
  """
  keys = jax.random.split(key, len(players))
  if len(players) == 1:
    return players[0](state, keys[0])
  if uniform_turns:
    seat = to_play[jnp.argmax(active)]
    branches = [lambda s, i=i: players[i](s, keys[i]).astype(jnp.int32)
                for i in range(len(players))]
    return jax.lax.switch(seat, branches, state)
  all_actions = jnp.stack([p(state, k).astype(jnp.int32) for p, k in zip(players, keys)])
  return jnp.take_along_axis(all_actions, to_play[None], axis=0)[0]


def masked_loop(body, carry, start: int, stop: int, all_done, *, early_exit: bool = False,
                outputs: bool = True):
  """The rollout loop every game here shares: ``carry, out_t = body(carry, t)`` for t in [start, stop).

  ``body`` must itself leave finished games unchanged (a per-game ``done`` mask). With
  ``early_exit=False`` this is a ``lax.scan`` (outputs stacked over t); with ``early_exit=True`` the
  same body runs in a ``lax.while_loop`` that stops as soon as ``all_done(carry)`` (bool[]) holds, and
  the outputs of the rounds it skipped are zeros (``play`` and ``debate.rollout`` both write
  records whose zero means "inactive"). Both give identical results when the body's key for step t
  depends only on t and a finished game's step is a no-op.

  Args:
    body: (carry, t int32[]) -> (carry, out); ``out`` a pytree of arrays or None.
    carry: the initial carry.
    start, stop: static step range.
    all_done: carry -> bool[] (only read with ``early_exit``).
    early_exit: use the while_loop.
    outputs: False when ``body``'s ``out`` is None (saves tracing it a second time for the
      while_loop's buffers).
  Returns:
    (final carry, outputs stacked over the stop - start steps).
  """
  steps = stop - start
  if not early_exit:
    return jax.lax.scan(body, carry, jnp.arange(start, stop))
  out_shape = jax.eval_shape(body, carry, jnp.asarray(start))[1] if outputs else None
  outs = jax.tree.map(lambda x: jnp.zeros((steps,) + x.shape, x.dtype), out_shape)

  def cond(c):
    t, carry, _ = c
    return (t < stop) & ~all_done(carry)

  def step(c):
    t, carry, outs = c
    carry, out = body(carry, t)
    outs = jax.tree.map(lambda buf, x: buf.at[t - start].set(x), outs, out)
    return t + 1, carry, outs

  _, carry, outs = jax.lax.while_loop(cond, step, (jnp.asarray(start), carry, outs))
  return carry, outs


def play(game: Game, players: Sequence[Player], state, rng: jax.Array, num_moves: int, *,
         early_exit: bool = False, uniform_turns: bool = False):
  """Plays at most ``num_moves`` moves of a batch of games (on ``masked_loop``).

  Args:
    game: the game's pure functions.
    players: one player per seat.
    state: the initial batched state (from ``game.init``).
    rng: PRNG key; move t uses ``fold_in(rng, t)``.
    num_moves: static number of moves (games done earlier are frozen).
    early_exit: a ``lax.while_loop`` that stops when every game is done (same results).
    uniform_turns: see ``choose``.
  Returns:
    (final state, MoveRecord with T = num_moves; moves skipped by ``early_exit`` are recorded as
    inactive with action and seat ``NO_ACTION``).
  """

  def move(state, t):
    active = ~game.done(state)
    to_play = game.to_play(state)
    actions = choose(players, state, to_play, active, jax.random.fold_in(rng, t), uniform_turns)
    chex.assert_shape(actions, active.shape)
    state = select(active, game.step(state, actions), state)
    # Stored shifted by one so that the zeros of a skipped move read as NO_ACTION / inactive.
    record = MoveRecord(actions=jnp.where(active, actions, NO_ACTION).astype(jnp.int32) + 1,
                        to_play=jnp.where(active, to_play, NO_ACTION).astype(jnp.int32) + 1,
                        active=active)
    return state, record

  state, record = masked_loop(move, state, 0, num_moves, lambda s: game.done(s).all(),
                              early_exit=early_exit)
  return state, record.replace(actions=record.actions - 1, to_play=record.to_play - 1)


def replay(game: Game, state, record: MoveRecord):
  """The states before each recorded move: ``state`` (the initial one) advanced by ``record``.

  What the losses of a learned player read (the rollout itself keeps only the final state).
  Returns the state pytree stacked over the T moves ([T, B, ...]); a move recorded inactive leaves
  the state as it was.
  """

  def move(state, t):
    active = record.active[t]
    new = game.step(state, jnp.maximum(record.actions[t], 0))
    return select(active, new, state), state

  _, before = jax.lax.scan(move, state, jnp.arange(record.actions.shape[0]))
  return before
