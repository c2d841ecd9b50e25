"""Debaters: who produces each argument of a debate (DESIGN.md section 3).

A debater is M (or a scripted stand-in) seen through the protocol questions of ``protocol``. Every
move returns the argument tokens and their log-probabilities under the debater's policy (scripted
debaters return zeros). The rollout (``debate``) calls:

  answer_fn()                                -> M for ``amplify``: a side's claim on a node is its
                                                own Amp′(H, M)(node) computation
  answer(nodes [B, Lq], rng)                 -> Move [B, La]: an assigned claim to defend
  support(nodes, claims [B, La], rng)        -> Move [B, S*La]: answers to H's subquestions of each
                                                node, used where H was not called (or the claim is
                                                assigned)
  stop(nodes, claims_even, claims_odd, rng)  -> Move [B, 1]; protocol.YES stops the debate

The model-backed debater lives in ``model_player``; this module holds the scripted ones used to test
the protocol and to measure honesty: an honest oracle and liars (DESIGN.md section 3: "liars are
what they claim to be on every task"), and the combinators that let several players share one
batch, so that games against different opponents run (and compile) as one rollout: ``Blocks``
(player i plays the static row block i) and ``Liars`` (several liars as one search).

Liars (``LiarDebater``): a *consistent* liar's support passes H's recombination check
(``protocol.check_support``) for its false claim, so the lie moves down the tree; an *early* liar
is consistent too but lies in the earliest row it can; an *inconsistent* one supports honestly. The
tasks have no inverse, so a lie is found by search (``lie_candidates``): a static family of
candidate supports (one row, a threshold over all rows, or two rows set to answer-vocabulary tokens,
the other rows re-posed in order and answered truthfully) is built per node and the preferred
candidate whose recombination is the claim is taken (``lying_support``). Claims: a uniformly random
wrong answer the liar can defend on the node (``defensible``), or with a model, M's own likeliest
such answer (the *plausible* liar). Measured (tests/test_liars.py, 256 questions per level): the
consistent and early liars pass H's check on 100% of level >= 1 questions of every task, at each
task's default options and at the runlocal sizes; the old last-row liar passed 0-100% by task.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from amp_debate.procedure import protocol
from amp_debate.tasks.base import Task
from amp_debate.tasks.tokenizer import PAD


@flax.struct.dataclass
class Move:
  """One argument per game: tokens int32[B, L] and their log-probs float32[B, L]."""

  tokens: jax.Array
  log_probs: jax.Array


def scripted(tokens) -> Move:
  """A move with zero log-probs (scripted debaters have no policy to train)."""
  return Move(tokens=tokens.astype(jnp.int32), log_probs=jnp.zeros(tokens.shape, jnp.float32))


def oracle_support(task: Task, node):
  """True answers to H's subquestions of ``node``, posed in order: int32[S*La] (one game).

  A ``lax.scan`` over the rows (subquestion i reads only rows < i, still PAD from i on): one copy
  of ``task.solve`` in the compiled program instead of S."""

  def pose(rows, i):
    sub, valid = task.subquestion(node, rows, i)
    return rows.at[i].set(jnp.where(valid, task.solve(sub), PAD)), None

  rows = jnp.full((task.num_subquestions, task.answer_len), PAD, jnp.int32)
  rows, _ = jax.lax.scan(pose, rows, jnp.arange(task.num_subquestions))
  return rows.reshape(-1)


def wrong_answer(task: Task, answer, rng):
  """A number token different from ``answer`` (any shape), uniformly among the others."""
  tok = task.tokenizer
  span = tok.var_offset - tok.num_offset
  shift = jax.random.randint(rng, answer.shape, 1, span)
  value = jnp.clip(answer - tok.num_offset, 0, span - 1)
  return (tok.num_offset + (value + shift) % span).astype(jnp.int32)


def _never_stop(nodes) -> Move:
  return scripted(jnp.full((nodes.shape[0], 1), protocol.NO, jnp.int32))


@dataclasses.dataclass(frozen=True)
class OracleDebater:
  """Honest and perfect: M = ``task.solve``, true supports, never stops."""

  task: Task

  def answer_fn(self):
    return lambda questions, rng: self.task.batch_solve(questions)

  def answer(self, nodes, rng):
    return scripted(self.task.batch_solve(nodes))

  def support(self, nodes, claims, rng):
    return scripted(jax.vmap(lambda n: oracle_support(self.task, n))(nodes))

  def stop(self, nodes, claims_even, claims_odd, rng):
    return _never_stop(nodes)


# ---- scripted liars: the answer vocabulary and the search for a consistent lie ------------------
STYLES = ("consistent", "early", "inconsistent")
CLAIM_SOURCES = ("defensible", "any")


def answer_vocabulary(task: Task) -> np.ndarray:
  """int32[V]: the tokens a liar may claim and put in a support row, in answer order.

  The answers ``task.solve`` can return on any question of the task's options (a static set, known
  from each task's definition; the tests check that every sampled question's and subquestion's
  answer lies in it):
    permutation     number tokens 0 .. n-1 (elements of σ; the k tokens above n-1 are no answers)
    union_find      0 .. num_values-1              assignments   0 .. modulus-1
    wildcard        -2^bits .. 2^bits (every number token)
    shortest_path   0 .. max_hops, then ``inf`` (NOT the adjacency-mask numbers up to 2^N - 1)
  Another task: every number token, then every symbol. "Answer order" (numbers ascending, symbols
  last, so ``inf`` is the largest distance) is the order the threshold lies of ``lie_candidates``
  compare rows in.
  """
  tok = task.tokenizer
  symbols: tuple[str, ...] = ()
  if task.name == "permutation":
    values = range(0, task.n)
  elif task.name == "union_find":
    values = range(0, task.num_values)
  elif task.name == "assignments":
    values = range(0, task.modulus)
  elif task.name == "wildcard":
    values = range(-task.table_size, task.table_size + 1)
  elif task.name == "shortest_path":
    values, symbols = range(0, task.max_hops + 1), ("inf",)
  else:
    values, symbols = range(tok.num_lo, tok.num_hi + 1), tuple(tok.symbols)
  numbers = [v - tok.num_lo + tok.num_offset for v in values if tok.num_lo <= v <= tok.num_hi]
  return np.asarray(numbers + [tok.symbol(s) for s in symbols], np.int32)


# Kinds of candidate lies (``lie_candidates``).
_SINGLE, _RAISE, _LOWER, _PAIR = range(4)


def _candidate_spec(task: Task) -> np.ndarray:
  """int32[K, 4]: the static family of candidate lies, one row (kind, row, value_a, value_b) each.

  With S rows and V = len(answer_vocabulary(task)):
    _SINGLE (S*V)   row ``row`` := vocab[value_a];
    _RAISE  (V)     every valid row whose true answer lies below vocab[value_a] (answer order) :=
                    vocab[value_a] (shortest path: a claim above the truth raises every smaller
                    neighbour distance to claim - 1);
    _LOWER  (V)     likewise every row above vocab[value_a] is lowered to it;
    _PAIR   (8V, S >= 2)   two rows, one of them at an extreme of the vocabulary: the first two
                    (``row`` 0) or the last two (``row`` 1) valid rows := (vocab[value_a],
                    vocab[value_b]) with value_a or value_b in {0, V-1} (wildcard: a sum that no
                    single in-range row reaches, e.g. 15 = 16 + (-1) when both halves are negative).
  """
  size = len(answer_vocabulary(task))
  s = task.num_subquestions
  spec = [(_SINGLE, j, v, 0) for j in range(s) for v in range(size)]
  spec += [(_RAISE, 0, v, 0) for v in range(size)] + [(_LOWER, 0, v, 0) for v in range(size)]
  if s >= 2:
    for which in (0, 1):
      for extreme in (0, size - 1):
        spec += [(_PAIR, which, extreme, v) for v in range(size)]
        spec += [(_PAIR, which, v, extreme) for v in range(size)]
  return np.asarray(spec, np.int32)


def _check_answer_len(task: Task, what: str) -> None:
  if task.answer_len != 1:
    raise ValueError(f"{what} searches single-token answers; task {task.name} has answer_len="
                     f"{task.answer_len}")


# Jitted (the task static) so that its trace is cached: a rollout calls it from the claims, from
# every round's supports and from the supports' lookahead, and tracing it each time dominated the
# compile time of a rollout with a liar. Under vmap it is batched like any function.
@functools.partial(jax.jit, static_argnums=0)
def lie_candidates(task: Task, node):
  """Every candidate lie of the static family (``_candidate_spec``) on one node.

  Each candidate fixes some rows to vocabulary tokens; the others are answered truthfully, and the
  subquestions are posed in order from the rows already written (a row after a changed one is
  re-posed from the lie and answered truthfully, e.g. permutation's σ^⌊k/2⌋(y') after y'). The
  search is over the answer vocabulary (``answer_vocabulary``: the tokens ``task.solve`` can return,
  at most 2^bits + 1 = 33 tokens for wildcard at its default size, 6 for shortest path) rather than
  the task vocabulary (up to ~1000 tokens), since the tasks have no inverse.
  Cost per node: K * S subquestions and ``task.solve`` calls, K = (S + 2) V + (8 V if S >= 2).

  Args:
    node: int32[Lq].
  Returns:
    (supports int32[K, S*La], recombined int32[K] H's recombination of each, changed bool[K, S] the
    rows that differ from the true answer of the subquestion posed there). A candidate that changes
    nothing (e.g. a single-row lie on an invalid row) is the honest support.
  """
  _check_answer_len(task, "lie_candidates")
  vocab = jnp.asarray(answer_vocabulary(task))
  spec = jnp.asarray(_candidate_spec(task))
  s = task.num_subquestions
  leaf = task.is_leaf(node)
  idx = jnp.arange(s)
  # The pairs' rows, from the honest support's valid rows (no task's validity reads the answers).
  _, honest_valid, _ = protocol.subquestions_of(task, node, oracle_support(task, node))
  ascending = jnp.argsort(jnp.where(honest_valid, idx, s + idx))
  descending = jnp.argsort(jnp.where(honest_valid, -idx, s + idx))
  pairs = jnp.stack([ascending[:2], descending[:2][::-1]]) if s >= 2 else jnp.zeros((2, 2), int)
  pair_ok = honest_valid.sum() >= 2

  def rank(token):
    hit = vocab == token
    return jnp.where(hit.any(), jnp.argmax(hit), vocab.shape[0])

  def one(kind, row, value_a, value_b):
    is_pair = (kind == _PAIR) & pair_ok
    first = jnp.where(kind == _SINGLE, row, jnp.where(is_pair, pairs[jnp.clip(row, 0, 1), 0], -1))
    second = jnp.where(is_pair, pairs[jnp.clip(row, 0, 1), 1], -1)
    c_a, c_b = vocab[value_a], vocab[value_b]

    def pose(rows, i):  # rows >= i are still PAD; subquestion i reads rows < i only
      sub, ok = task.subquestion(node, rows, i)
      ok = ok & ~leaf
      truth = task.solve(sub)[0]
      placed = jnp.where(i == first, c_a, jnp.where(i == second, c_b, truth))
      raised = jnp.where(rank(truth) < value_a, c_a, truth)
      lowered = jnp.where(rank(truth) > value_a, c_a, truth)
      value = jnp.where(kind == _RAISE, raised, jnp.where(kind == _LOWER, lowered, placed))
      return rows.at[i, 0].set(jnp.where(ok, value, PAD)), (ok & (value != truth), ok)

    # A scan, not a Python loop over rows: one copy of subquestion and solve in the program
    # (compile time), at S sequential steps.
    rows, (changed, valid) = jax.lax.scan(pose, jnp.full((s, 1), PAD, jnp.int32), jnp.arange(s))
    return rows.reshape(-1), task.recombine(node, rows, valid)[0], changed

  return jax.vmap(one)(spec[:, 0], spec[:, 1], spec[:, 2], spec[:, 3])


def defensible(task: Task, node):
  """bool[V]: the wrong answers (answer_vocabulary order) some candidate lie on ``node`` supports
  consistently, i.e. that a consistent liar can claim without H's recombination exposing it at
  once. Empty at a leaf (no support)."""
  _, recombined, changed = lie_candidates(task, node)
  vocab = jnp.asarray(answer_vocabulary(task))
  reach = ((recombined[:, None] == vocab[None, :]) & changed.any(-1)[:, None]).any(0)
  return reach & (vocab != task.solve(node)[0]) & ~task.is_leaf(node)


def lying_support(task: Task, node, claim, style: str = "consistent", lookahead: bool = True):
  """A support of ``claim`` on ``node``: int32[S*La] (one game; vmap for batches).

  A true claim gets the honest support. A false one gets the preferred candidate of
  ``lie_candidates`` whose recombination is the claim. Preference, in order:
    1. (``lookahead``) the lie it commits to in its first changed row, where an honest opponent
       disputes it, is one it can defend there in turn: that row's subquestion (the honest one,
       rows above it being true) is a leaf, or the lied value is ``defensible`` on it. E.g. in
       shortest path, a claim "inf" raises the smaller neighbour distances to inf, not to the
       budget h (a distance the subquestion's budget h - 1 can never recombine to);
    2. style "consistent": as few changed rows as possible, then the latest first changed row
       (the last rows first); style "early": the earliest first changed row, then as few rows as
       possible, so the first dispute against an honest support lies above the last valid row
       wherever the task allows it;
    3. the candidate order of ``_candidate_spec``.
  Style "inconsistent" always supports honestly. Where no candidate recombines to the claim (a
  claim no support reaches, e.g. a shortest-path distance above the budget: see
  ``LiarDebater.claims``), the last valid row is set to the claim (the old consistent liar; H's
  check exposes it).
  Cost: one ``lie_candidates`` family, plus S more with ``lookahead`` (one per row's subquestion).
  ``style`` may also be an int32[] index into ``STYLES`` (traced: one search serves liars of
  several styles, ``Liars``). The search, which depends on the node alone (``_lie_search``), and
  the choice for the claim (``_pick_lie``) are separate so that games on one node can share the
  search.
  """
  if isinstance(style, str):
    if style not in STYLES:
      raise ValueError(f"liar style must be one of {STYLES}, got {style!r}")
    if style == "inconsistent":
      return oracle_support(task, node)
  return _pick_lie(task, _lie_search(task, node, lookahead), claim, style)


def _lie_search(task: Task, node, lookahead: bool = True) -> dict[str, jax.Array]:
  """``lying_support``'s search on ``node`` int32[Lq] (one game), what depends on the node alone:
  honest int32[S*La] the honest support, rows int32[S, La] its rows, the candidates (K of them,
  ``lie_candidates``) supports int32[K, S*La], recombined int32[K], changed int32[K] how many rows
  they change and first int32[K] the first (S: none), penalty int32[K] (S+1)^2 where the lookahead
  finds the lie committed to indefensible (else 0), last int32[] the last valid row (-1: none),
  truth int32[La]."""
  honest = oracle_support(task, node)
  s = task.num_subquestions
  subs, valid, rows = protocol.subquestions_of(task, node, honest)
  supports, recombined, changed = lie_candidates(task, node)
  first = jnp.where(changed.any(-1), jnp.argmax(changed, -1), s)
  penalty = jnp.zeros(first.shape, jnp.int32)
  if lookahead:
    vocab = jnp.asarray(answer_vocabulary(task))
    below = jax.vmap(lambda sub: defensible(task, sub))(subs)  # [S, V]
    below = below | jax.vmap(task.is_leaf)(subs)[:, None]
    at = jnp.minimum(first, s - 1)
    lied = jnp.take_along_axis(supports.reshape(-1, s), at[:, None], axis=1)[:, 0]  # [K]
    hit = vocab[None, :] == lied[:, None]  # [K, V]
    holds = (below[at] & hit).any(-1)
    penalty = jnp.where(holds, 0, (s + 1) ** 2)
  return dict(honest=honest, rows=rows, supports=supports, recombined=recombined,
              changed=changed.sum(-1), first=first, penalty=penalty,
              last=jnp.max(jnp.where(valid, jnp.arange(s), -1)), truth=task.solve(node))


def _pick_lie(task: Task, search: dict[str, jax.Array], claim, style):
  """``lying_support``'s choice for ``claim`` int32[La] given the node's ``_lie_search``: the
  support int32[S*La] (one game). style: a name or an int32[] index in ``STYLES``."""
  if isinstance(style, str):
    early, honestly = style == "early", style == "inconsistent"
  else:
    early, honestly = style == STYLES.index("early"), style == STYLES.index("inconsistent")
  s = task.num_subquestions
  n, first, honest = search["changed"], search["first"], search["honest"]
  key = jnp.where(early, first * (s + 1) + n, n * (s + 1) + (s - first)) + search["penalty"]
  ok = (search["recombined"] == claim[0]) & (n > 0)
  best = jnp.argmin(jnp.where(ok, key, jnp.iinfo(jnp.int32).max))
  last = search["last"]
  fallback = jnp.where(last >= 0, search["rows"].at[jnp.maximum(last, 0)].set(claim).reshape(-1),
                       honest)
  true = (claim == search["truth"]).all()
  out = jnp.where(true, honest, jnp.where(ok.any(), search["supports"][best], fallback))
  return jnp.where(honestly, honest, out)


def _defensible_claims(task: Task, nodes, truth):
  """bool[B, V] (``answer_vocabulary`` order): the claims a defensible liar may make on each node
  (nodes int32[B, Lq], truth int32[B, 1]): the wrong answers it can defend, or where there are
  none (e.g. at a leaf) every wrong answer."""
  vocab = jnp.asarray(answer_vocabulary(task))
  wrong = vocab[None, :] != truth[:, :1]  # [B, V]
  reach = jax.vmap(lambda n: defensible(task, n))(nodes)
  return jnp.where(reach.any(-1, keepdims=True), reach, wrong)


def _uniform_claims(task: Task, allowed, rng):
  """int32[B, 1]: per row a uniformly random token among the ``allowed`` bool[B, V]."""
  return jnp.asarray(answer_vocabulary(task))[_uniform_choice(rng, allowed)][:, None]


def _plausible_claims(task: Task, claim_model, nodes, truth, allowed):
  """int32[B, 1]: ``claim_model``'s likeliest answer among the ``allowed`` bool[B, V]."""
  vocab = jnp.asarray(answer_vocabulary(task))
  size = claim_model.model.config.vocab_size
  tokens = jnp.zeros((nodes.shape[0], size), bool).at[:, vocab].set(allowed)
  return claim_model.likeliest_wrong(nodes, truth, allowed=tokens)


def _uniform_choice(rng, mask):
  """int32[B]: per row a uniformly random index among the True entries of mask bool[B, V]."""
  return jax.random.categorical(rng, jnp.where(mask, 0.0, -jnp.inf), axis=-1).astype(jnp.int32)


def wrong_vocabulary_answer(task: Task, truth, rng):
  """int32[B, 1]: a uniformly random answer-vocabulary token other than truth (int32[B, 1])."""
  vocab = jnp.asarray(answer_vocabulary(task))
  mask = vocab[None, :] != truth[:, :1]
  return vocab[_uniform_choice(rng, mask)][:, None]


@flax.struct.dataclass
class LiarDebater:
  """Claims a false answer and defends it (played in an assigned seat: ``debate.rollout(...,
  assigned=...)``).

  Attributes:
    task: the task (static).
    consistent: the old switch, kept as an alias: True is style "consistent", False
      "inconsistent" (None: use ``style``); after construction it reads style != "inconsistent".
    style (static): how supports are answered (``lying_support``):
      "consistent"   the support passes H's recombination check (``protocol.check_support``) for
                     the false claim, lying in as few rows as possible, the last rows first, so the
                     lie moves down the tree to be caught only at a leaf (or where the lie it
                     committed to below has no consistent support);
      "early"        also consistent, but lies in the earliest row it can (permutation: y' at
                     row 0 such that the re-posed row 1 truly answers the claim), so the first
                     dispute is above the last valid row where the task allows it;
      "inconsistent" true supports: H's recombination exposes the lie at once.
    claim_model: None, or a ``model_player.ModelDebater``: the *plausible* liar claims M's own
      likeliest wrong answer among those it can defend (``ModelDebater.likeliest_wrong``); a
      pytree field, so the model's parameters are traced when the liar is a jit argument.
    claims (static, without claim_model): "defensible" (default) a uniformly random wrong answer
      among those a consistent support exists for on the node (``defensible``; where there is
      none, e.g. at a leaf, any wrong answer of the answer vocabulary); "any" the old claim,
      ``wrong_answer`` (any number token but the truth: many are no answer of the task, e.g.
      shortest-path distances above the budget, and no support can pass H's check for them).
  As an M for ``amplify`` (``answer_fn``) it answers every question with a uniformly random wrong
  answer of the answer vocabulary (cheap: M inside Amp′ is never asked to defend it).

  Cost (measured on this 2-core CPU, 500 questions at each task's default size, claims + supports
  in one jit): 2.5-5 s to trace and compile, 2-55 ms to run. The search grows with the answer
  vocabulary V and the rows S (``lie_candidates``); at the largest allowed sizes (wildcard bits=8:
  V = 513; permutation n=64 with max_exponent=1024, whose ``solve`` loops 1024 times) it would be
  far slower; no shipped config uses them.
  """

  task: Task = flax.struct.field(pytree_node=False)
  consistent: bool | None = flax.struct.field(pytree_node=False, default=None)
  style: str = flax.struct.field(pytree_node=False, default="consistent")
  claim_model: Any = None
  claims: str = flax.struct.field(pytree_node=False, default="defensible")

  def __post_init__(self):
    if self.style not in STYLES:
      raise ValueError(f"LiarDebater: style must be one of {STYLES}, got {self.style!r}")
    if self.claims not in CLAIM_SOURCES:
      raise ValueError(f"LiarDebater: claims must be one of {CLAIM_SOURCES}, got {self.claims!r}")
    if self.consistent is not None:
      if self.style == "consistent" and not self.consistent:
        object.__setattr__(self, "style", "inconsistent")
      elif self.consistent != (self.style != "inconsistent"):
        raise ValueError(f"LiarDebater: consistent={self.consistent} contradicts "
                         f"style={self.style!r}")
    object.__setattr__(self, "consistent", self.style != "inconsistent")
    if self.style != "inconsistent" or self.claims == "defensible" or self.claim_model is not None:
      _check_answer_len(self.task, "LiarDebater")

  def answer_fn(self):
    return lambda questions, rng: wrong_vocabulary_answer(
        self.task, self.task.batch_solve(questions), rng)

  def answer(self, nodes, rng) -> Move:
    """The false claim to defend on each node: Move [B, La]."""
    task = self.task
    truth = task.batch_solve(nodes)
    if self.claims == "any" and self.claim_model is None:
      return scripted(wrong_answer(task, truth, rng))
    allowed = _defensible_claims(task, nodes, truth)
    if self.claim_model is None:
      return scripted(_uniform_claims(task, allowed, rng))
    return scripted(_plausible_claims(task, self.claim_model, nodes, truth, allowed))

  def support(self, nodes, claims, rng) -> Move:
    lie = lambda node, claim: lying_support(self.task, node, claim, self.style)
    return scripted(jax.vmap(lie)(nodes, claims))

  def stop(self, nodes, claims_even, claims_odd, rng):
    return _never_stop(nodes)


# ---- several players in one batch ----------------------------------------------------------------
def _check_sizes(owner: str, players, sizes) -> None:
  if not players or len(players) != len(sizes):
    raise ValueError(f"{owner}: one size per player, got {len(players)} players and sizes {sizes}")
  if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0
             for s in sizes):
    raise ValueError(f"{owner}: sizes must be ints >= 0, got {sizes}")


def _check_batch(owner: str, method: str, sizes, args) -> None:
  """ValueError unless every argument is [B, ...] with B = sum(sizes)."""
  chex.assert_equal_shape_prefix(args, 1)
  if args[0].shape[0] != sum(sizes):
    raise ValueError(
        f"{owner}.{method}: called on {args[0].shape[0]} games, its blocks {tuple(sizes)} cover "
        f"{sum(sizes)}; it plays batches of exactly its games (self-play runs both seats as one "
        f"batch of twice the games: put two objects in the seats)")


def _parts(players, sizes) -> list[tuple[Any, int, list[tuple[int, int]]]]:
  """One (player, index of its first block, [(start, stop) row spans of its non-empty blocks,
  adjacent ones joined]) per distinct player (``is``), in order of first appearance; players whose
  blocks are all empty are left out."""
  out: list[tuple[Any, int, list[tuple[int, int]]]] = []
  start = 0
  for i, (player, size) in enumerate(zip(players, sizes)):
    part = next((p for p in out if p[0] is player), None)
    if part is None:
      part = (player, i, [])
      out.append(part)
    spans = part[2]
    if size and spans and spans[-1][1] == start:
      spans[-1] = (spans[-1][0], start + size)
    elif size:
      spans.append((start, start + size))
    start += size
  return [p for p in out if p[2]]


def _take(a, spans):
  """The rows ``spans`` [(start, stop), ...] of a [B, ...], concatenated in order."""
  if len(spans) == 1:
    return a[spans[0][0]:spans[0][1]]
  return jnp.concatenate([a[i:j] for i, j in spans])


def _put(a, spans, rows):
  """a [B, ...] with its rows ``spans`` set to ``rows`` (``_take``'s layout)."""
  offset = 0
  for i, j in spans:
    a = a.at[i:j].set(rows[offset:offset + j - i].astype(a.dtype))
    offset += j - i
  return a


@flax.struct.dataclass
class Blocks:
  """Different players in one seat of one batch of games: ``players[i]`` plays the static row block
  i, rows [sizes[0] + ... + sizes[i-1], ... + sizes[i]) of a batch of B = sum(sizes) games, so that
  games with different opponents (but one static ``DebateConfig``) run as one rollout, e.g. the
  evaluation's honesty games (``train/evaluation.py``).

  Every method of the debater interface (``answer_fn``, ``answer``, ``support``, ``stop``) slices
  its batch arguments [B, ...] into the blocks, calls each block's player on its rows and puts the
  results back in row order. A player that plays several blocks (the same object, ``is``) is called
  once, on its blocks' rows concatenated in block order, so e.g. M's forward passes are not
  repeated in the compiled program. The player whose first block is block i gets the key
  ``fold_in(rng, i)``: the players draw independently, and a player alone on its rows with the key
  ``rng`` would draw differently. So a Blocks plays, row by row, the games its players would play
  alone on their rows wherever the players draw nothing at random (tests/test_debate.py). (Scripted
  liars of several kinds are cheaper as one block of ``Liars``.)

  Only batches of exactly B rows are accepted (ValueError otherwise). The rollout (``debate``) calls
  its players on [B, ...] games (``amplify`` on [B, Lq] subquestions, one per game and step),
  except in self-play (the same object in both seats), where both seats run as one [2B] batch: play
  a Blocks against another object (a second Blocks of the same players is fine).

  Attributes:
    players: tuple of debaters (a pytree field: a model debater's parameters are traced).
    sizes (static): tuple of ints >= 0, one per player (a block of 0 rows is never played).
  """

  players: tuple
  sizes: tuple = flax.struct.field(pytree_node=False)

  def __post_init__(self):
    object.__setattr__(self, "players", tuple(self.players))
    object.__setattr__(self, "sizes", tuple(self.sizes))
    _check_sizes("Blocks", self.players, self.sizes)

  @property
  def batch(self) -> int:
    """B: the rows the blocks cover."""
    return int(sum(self.sizes))

  def _play(self, method: str, call, rng, *args):
    """``call(player, key, *rows)`` for each distinct player on its rows of ``args`` ([B, ...]
    each); the results (pytrees of [rows, ...] arrays) put back in row order: [B, ...]."""
    _check_batch("Blocks", method, self.sizes, args)
    pieces = []  # (first row, pytree of a block's rows)
    for player, first, spans in _parts(self.players, self.sizes):
      out = call(player, jax.random.fold_in(rng, first), *[_take(a, spans) for a in args])
      chex.assert_tree_shape_prefix(out, (sum(j - i for i, j in spans),))
      offset = 0
      for i, j in spans:
        pieces.append((i, jax.tree.map(lambda x, o=offset, n=j - i: x[o:o + n], out)))
        offset += j - i
    pieces = [tree for _, tree in sorted(pieces, key=lambda p: p[0])]
    if len(pieces) == 1:
      return pieces[0]
    return jax.tree.map(lambda *x: jnp.concatenate(x), *pieces)

  def answer_fn(self):
    """Each player's ``answer_fn`` on its rows: ``(questions int32[B, Lq], key) -> int32[B, La]``,
    or ``(int32[B, La], float32[B, La])`` where some player returns log-probs (then zeros on the
    rows of players that return answers only, as ``amplify`` counts them)."""
    fns = {id(player): player.answer_fn() for player, _, _ in _parts(self.players, self.sizes)}

    def answer(questions, rng):
      chex.assert_rank(questions, 2)
      plain = []

      def call(player, key, rows):
        out = fns[id(player)](rows, key)
        plain.append(not isinstance(out, tuple))
        tokens, log_probs = out if isinstance(out, tuple) else (out, jnp.zeros(out.shape))
        return tokens.astype(jnp.int32), log_probs.astype(jnp.float32)

      tokens, log_probs = self._play("answer_fn", call, rng, questions)
      return tokens if all(plain) else (tokens, log_probs)

    return answer

  def answer(self, nodes, rng) -> Move:
    """nodes int32[B, Lq] -> Move [B, La]."""
    return self._play("answer", lambda p, k, n: p.answer(n, k), rng, nodes)

  def support(self, nodes, claims, rng) -> Move:
    """nodes int32[B, Lq], claims int32[B, La] -> Move [B, S*La]."""
    return self._play("support", lambda p, k, n, c: p.support(n, c, k), rng, nodes, claims)

  def stop(self, nodes, claims_even, claims_odd, rng) -> Move:
    """nodes int32[B, Lq], claims int32[B, La] each -> Move [B, 1]."""
    return self._play("stop", lambda p, k, n, e, o: p.stop(n, e, o, k), rng, nodes, claims_even,
                      claims_odd)


@flax.struct.dataclass
class Liars:
  """Several scripted liars (``LiarDebater``s of one task) on static row blocks, played as one
  liar: ``liars[i]`` plays row block i of a batch of B = sum(sizes) games (as in ``Blocks``), but
  each move is one search over all B rows, each row with its own liar's style (``lying_support``
  with a per-row style) and claim source, so a batch with k kinds of liars compiles one copy of the
  lie search per move instead of k (the search dominates a liar's compile time).

  Game by game it is ``Blocks(liars, sizes)`` up to the random draws: the defensible claims are
  drawn for all rows with one key, a plausible liar's model (``claim_model``, one call per distinct
  model object on its rows) is deterministic, and the supports draw nothing. The search runs on
  every row, also those of an inconsistent liar or of one with claims "any" where they are mixed
  with others (the evaluation mixes neither).

  Attributes:
    liars: tuple of ``LiarDebater`` of one task (a pytree field: claim models' parameters).
    sizes (static): tuple of ints >= 0, one per liar.
    copies (static): k >= 1, for the opening moves of games tiled over the same questions (as
      ``Copies``): the batch is k copies of B/k nodes, and the search, which depends on the node
      alone (the claims' ``defensible`` and the supports' ``_lie_search``), runs on the first
      copy only; each row still draws and defends its own claim. Only valid where the nodes are
      copies (at the root of such games).
  """

  liars: tuple
  sizes: tuple = flax.struct.field(pytree_node=False)
  copies: int = flax.struct.field(pytree_node=False, default=1)

  def __post_init__(self):
    object.__setattr__(self, "liars", tuple(self.liars))
    object.__setattr__(self, "sizes", tuple(self.sizes))
    _check_sizes("Liars", self.liars, self.sizes)
    if (not isinstance(self.copies, int) or isinstance(self.copies, bool) or self.copies < 1
        or sum(self.sizes) % self.copies):
      raise ValueError(f"Liars: copies must be an int >= 1 dividing the batch {sum(self.sizes)}, "
                       f"got {self.copies!r}")
    if not all(isinstance(liar, LiarDebater) for liar in self.liars):
      raise ValueError(f"Liars: every player must be a LiarDebater, got "
                       f"{[type(liar).__name__ for liar in self.liars]}")
    if len({liar.task for liar in self.liars}) != 1:
      raise ValueError("Liars: every liar must play the same task")

  @property
  def task(self) -> Task:
    return self.liars[0].task

  @property
  def batch(self) -> int:
    """B: the rows the blocks cover."""
    return int(sum(self.sizes))

  def _per_node(self, fn, *args):
    """``fn`` ([n, ...] -> pytree of [n, ...]) on the first of the ``copies`` of the rows of
    ``args``, repeated: [B, ...]."""
    first = [a[:a.shape[0] // self.copies] for a in args]
    return jax.tree.map(lambda x: jnp.tile(x, (self.copies,) + (1,) * (x.ndim - 1)), fn(*first))

  def _rows(self, values, dtype) -> jax.Array:
    """Per row the value of its block's liar: [B] from one value per liar."""
    return jnp.asarray(np.repeat(np.asarray(values, dtype), self.sizes))

  def answer_fn(self):
    """Every liar's (the same: a uniformly random wrong answer of the answer vocabulary)."""
    return self.liars[0].answer_fn()

  def answer(self, nodes, rng) -> Move:
    """Each row's liar's false claim: nodes int32[B, Lq] -> Move [B, La]."""
    _check_batch("Liars", "answer", self.sizes, (nodes,))
    task = self.task
    truth = task.batch_solve(nodes)
    any_rng, pick_rng = jax.random.split(rng)
    plain = [liar.claims == "any" and liar.claim_model is None for liar in self.liars]
    if all(plain):
      return scripted(wrong_answer(task, truth, any_rng))
    allowed = self._per_node(functools.partial(_defensible_claims, task), nodes, truth)
    claims = _uniform_claims(task, allowed, pick_rng)
    for model, _, spans in _parts([liar.claim_model for liar in self.liars], self.sizes):
      if model is not None:
        take = lambda a: _take(a, spans)
        claims = _put(claims, spans, _plausible_claims(task, model, take(nodes), take(truth),
                                                       take(allowed)))
    if any(plain):
      claims = jnp.where(self._rows(plain, bool)[:, None], wrong_answer(task, truth, any_rng),
                         claims)
    return scripted(claims)

  def support(self, nodes, claims, rng) -> Move:
    """Each row's liar's support (``lying_support`` in its style): nodes int32[B, Lq], claims
    int32[B, La] -> Move [B, S*La]."""
    _check_batch("Liars", "support", self.sizes, (nodes, claims))
    task = self.task
    styles = {liar.style for liar in self.liars}
    if styles == {"inconsistent"}:
      return scripted(self._per_node(jax.vmap(functools.partial(oracle_support, task)), nodes))
    search = self._per_node(jax.vmap(functools.partial(_lie_search, task)), nodes)
    if len(styles) == 1:
      style = styles.pop()
      pick = lambda found, claim: _pick_lie(task, found, claim, style)
      return scripted(jax.vmap(pick)(search, claims))
    style = self._rows([STYLES.index(liar.style) for liar in self.liars], np.int32)
    pick = lambda found, claim, st: _pick_lie(task, found, claim, st)
    return scripted(jax.vmap(pick)(search, claims, style))

  def stop(self, nodes, claims_even, claims_odd, rng) -> Move:
    return _never_stop(nodes)


@flax.struct.dataclass
class Copies:
  """A deterministic player on ``copies`` identical copies of a batch of N games (rows [i N,
  (i+1) N) equal for every i): every move is computed on the first copy and repeated. For the
  opening moves of games tiled over one batch of questions (``debate.rollout``'s ``opening``): XLA
  merges the identical computations of separate rollouts on the same questions, never the identical
  rows of one batch, so without it one rollout of k tiled games recomputes its player's first moves
  k times where k rollouts computed them once.

  Only valid where both hold, which it cannot check: the rows are copies (at the root, a player's
  own moves depend on the question alone) and the player draws nothing at random (a greedy model;
  a sampling one would repeat one draw in every copy).

  Attributes:
    player: the debater (a pytree field).
    copies (static): k >= 1; every batch it plays has k N rows.
  """

  player: Any
  copies: int = flax.struct.field(pytree_node=False)

  def __post_init__(self):
    if not isinstance(self.copies, int) or isinstance(self.copies, bool) or self.copies < 1:
      raise ValueError(f"Copies: copies must be an int >= 1, got {self.copies!r}")
    if getattr(self.player, "greedy", True) is False:
      raise ValueError("Copies: the player samples its moves (greedy=False); repeating one "
                       "sample in every copy would correlate the games")

  def _first(self, method: str, args):
    """The first copy of each [k N, ...] argument."""
    chex.assert_equal_shape_prefix(args, 1)
    rows = args[0].shape[0]
    if rows % self.copies:
      raise ValueError(f"Copies.{method}: called on {rows} games, not a multiple of its "
                       f"{self.copies} copies")
    return [a[:rows // self.copies] for a in args]

  def _repeat(self, tree):
    return jax.tree.map(lambda x: jnp.tile(x, (self.copies,) + (1,) * (x.ndim - 1)), tree)

  def answer_fn(self):
    """The player's ``answer_fn`` on the first copy, repeated: [k N, Lq] -> [k N, La] (with
    log-probs where the player returns them)."""
    fn = self.player.answer_fn()
    return lambda questions, rng: self._repeat(fn(*self._first("answer_fn", (questions,)), rng))

  def answer(self, nodes, rng) -> Move:
    """nodes int32[k N, Lq] -> Move [k N, La]."""
    return self._repeat(self.player.answer(*self._first("answer", (nodes,)), rng))

  def support(self, nodes, claims, rng) -> Move:
    """nodes int32[k N, Lq], claims int32[k N, La] -> Move [k N, S*La]."""
    return self._repeat(self.player.support(*self._first("support", (nodes, claims)), rng))

  def stop(self, nodes, claims_even, claims_odd, rng) -> Move:
    """nodes int32[k N, Lq], claims int32[k N, La] each -> Move [k N, 1]."""
    first = self._first("stop", (nodes, claims_even, claims_odd))
    return self._repeat(self.player.stop(*first, rng))
