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

``play`` is the rollout: a ``lax.scan`` over moves with a per-game ``done`` mask (finished games are
frozen and their later records inactive), or, with ``early_exit=True``, the same move body in a
``lax.while_loop`` that stops when every game is done. The results are identical: move t's key is
``fold_in(rng, t)`` and masked moves change nothing.

The tree debate (``procedure/debate.py``) keeps its own round structure (claims, supports,
disputes) and its own scan / while_loop; it has not been ported onto this engine. The pixel debate
(``procedure/pixel_debate.py``) is the game this engine plays.
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


def play(game: Game, players: Sequence[Player], state, rng: jax.Array, num_moves: int, *,
         early_exit: bool = False, uniform_turns: bool = False):
  """Plays at most ``num_moves`` moves of a batch of games.

  Args:
    game: the game's pure functions.
    players: one player per seat.
    state: the initial batched state (from ``game.init``).
    rng: PRNG key; move t uses ``fold_in(rng, t)``.
    num_moves: static number of moves (games done earlier are frozen).
    early_exit: a ``lax.while_loop`` that stops when every game is done (same results).
    uniform_turns: see ``choose``.
  Returns:
    (final state, MoveRecord with T = num_moves).
  """

  def move(state, t):
    active = ~game.done(state)
    to_play = game.to_play(state)
    actions = choose(players, state, to_play, active, jax.random.fold_in(rng, t), uniform_turns)
    chex.assert_shape(actions, active.shape)
    state = select(active, game.step(state, actions), state)
    record = MoveRecord(actions=jnp.where(active, actions, NO_ACTION).astype(jnp.int32),
                        to_play=jnp.where(active, to_play, NO_ACTION).astype(jnp.int32),
                        active=active)
    return state, record

  if not early_exit:
    return jax.lax.scan(move, state, jnp.arange(num_moves))

  batch = game.done(state).shape[0]
  empty = jnp.full((num_moves, batch), NO_ACTION, jnp.int32)
  records = MoveRecord(actions=empty, to_play=empty,
                       active=jnp.zeros((num_moves, batch), bool))

  def cond(carry):
    t, state, _ = carry
    return (t < num_moves) & ~game.done(state).all()

  def body(carry):
    t, state, records = carry
    state, record = move(state, t)
    records = jax.tree.map(lambda buf, x: buf.at[t].set(x), records, record)
    return t + 1, state, records

  _, state, records = jax.lax.while_loop(cond, body, (0, state, records))
  return state, records
