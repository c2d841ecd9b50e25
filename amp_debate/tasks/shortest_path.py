"""Shortest path with a hop budget: given an undirected graph (in context), nodes a, b and a budget
h, what is the length of the shortest path from a to b that uses at most h edges ("inf" if none)?

The budget makes H's decomposition well founded: the plain "dist(a, b)?" recursion loops on cycles.

Question (Lq = 2K + 3, K = N - 1 + E edges): ``[u_0, v_0, ..., u_{K-1}, v_{K-1}, a, b, h]``: the
undirected edge list as pairs of node tokens ``v0 .. v{N-1}``, then the endpoints a, b (node tokens)
and the budget h (a number token). Answer (La = 1): ``[number(distance)]`` or ``["inf"]``.

Malformed questions are read robustly (so every function is total on any token array): node tokens
go through ``to_variable`` (clipped into range), h through ``to_number`` clipped into
[0, max_hops]; self-loops are ignored and duplicate edges are harmless.

H: at a leaf (a = b, a adjacent to b, or h <= 1) answers 0, 1 or inf directly. Otherwise asks, for
every node i adjacent to a (subquestion i, i < N), the distance from i to b within h - 1 hops, and
answers 1 + the smallest finite one (inf if none, or if that exceeds h). By induction, H's full tree
of depth D answers dist(a, b) when dist(a, b) <= min(D + 1, h) and inf otherwise.

D: every sampled question has the full budget h = max_hops (the budget only makes decompositions
terminate; subquestions, with h - 1, may run out of it and answer inf) on a connected graph, so root
answers are never inf. Difficulty d in [0, max_hops - 1] fixes the answer: dist(a, b) = d + 1 for
d >= 1; at d = 0, b = a (answer 0) or b adjacent to a (answer 1), each with probability 1/2. Hence
H's tree of depth d is exact on every level-d question and the tree of depth d - 1 (answering inf)
is wrong on every one. The generator gives every node a BFS level (its distance from a): a has 0,
one node per level 1..dist(a, b) (the last is b), the others uniform levels in [1, max_hops] with
empty levels squeezed out; each node attaches to a uniform node one level below it, and the E extra
edges join nodes whose levels differ by at most 1, so no edge skips a level and levels are exact
distances. Nodes are then relabelled at random, edges oriented at random and shuffled.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from amp_debate.tasks.base import Task, check_option
from amp_debate.tasks.tokenizer import Tokenizer

INF_SYMBOL = "inf"


@dataclasses.dataclass(frozen=True)
class ShortestPath(Task):
  """Options: ``num_nodes`` (N, 2..16), ``extra_edges`` (E, edges beyond a spanning tree,
  0..N(N-1)/2), ``max_hops`` (the budget h of every sampled question, 1..N-1; also the largest
  answer and the largest distance from a in sampled graphs)."""

  name = "shortest_path"
  num_nodes: int = 8
  extra_edges: int = 2
  max_hops: int = 4

  def __post_init__(self):
    check_option(self.name, "num_nodes", self.num_nodes, 2, 16)
    n = self.num_nodes
    check_option(self.name, "extra_edges", self.extra_edges, 0, n * (n - 1) // 2)
    check_option(self.name, "max_hops", self.max_hops, 1, n - 1)

  @property
  def tokenizer(self) -> Tokenizer:
    return Tokenizer(num_lo=0, num_hi=self.max_hops, num_vars=self.num_nodes, symbols=(INF_SYMBOL,))

  @property
  def num_edges(self) -> int:
    return self.num_nodes - 1 + self.extra_edges

  @property
  def question_len(self) -> int:
    return 2 * self.num_edges + 3

  @property
  def num_subquestions(self) -> int:
    return self.num_nodes

  @property
  def max_difficulty(self) -> int:
    return self.max_hops - 1

  @property
  def _inf(self) -> int:
    """Internal sentinel for "no path": larger than any budget."""
    return self.max_hops + 1

  # ---- parsing -------------------------------------------------------------------------------
  def _parse(self, question):
    """-> (edges int32[K, 2], a int32[], b int32[], h int32[] in [0, max_hops])."""
    tok = self.tokenizer
    k = self.num_edges
    edges = tok.to_variable(question[: 2 * k]).reshape(k, 2)
    a = tok.to_variable(question[2 * k])
    b = tok.to_variable(question[2 * k + 1])
    h = jnp.clip(tok.to_number(question[2 * k + 2]), 0, self.max_hops)
    return edges, a, b, h

  def _question(self, edges, a, b, h):
    tok = self.tokenizer
    return jnp.concatenate([
        tok.variable(edges).reshape(-1), tok.variable(a)[None], tok.variable(b)[None],
        tok.number(h)[None]]).astype(jnp.int32)

  def _adjacency(self, edges):
    """bool[N, N] symmetric adjacency of the edge list int[K, 2], without self-loops."""
    n = self.num_nodes
    one_u = jax.nn.one_hot(edges[:, 0], n, dtype=jnp.int32)  # [K, N]
    one_v = jax.nn.one_hot(edges[:, 1], n, dtype=jnp.int32)
    counts = one_u.T @ one_v
    return ((counts + counts.T) > 0) & ~jnp.eye(n, dtype=bool)

  def _distances(self, adj, a, h):
    """int32[N]: h-bounded distance from a to every node (``self._inf`` where unreachable).

    Bounded BFS with a static trip count of ``max_hops``; steps beyond h are masked out.
    """
    dist = jnp.where(jnp.arange(self.num_nodes) == a, 0, self._inf)

    def step(s, dist):
      reached = dist < self._inf
      nxt = jnp.any(adj & reached[None, :], axis=1)
      return jnp.where(nxt & ~reached & (s <= h), s, dist)

    return jax.lax.fori_loop(1, self.max_hops + 1, step, dist)

  def _answer(self, value):
    """int32[1]: number(value), or "inf" where value > max_hops."""
    tok = self.tokenizer
    return jnp.where(value <= self.max_hops, tok.number(value), tok.symbol(INF_SYMBOL))[None]

  # ---- D -------------------------------------------------------------------------------------
  def sample_one(self, rng, difficulty):
    n, e, k, top = self.num_nodes, self.extra_edges, self.num_edges, self.max_hops
    # One uniform draw, sliced (one PRNG call compiles much faster than several on CPU).
    sizes = dict(level=n, parent=n, extra=e, label=n, flip=k, order=k, same=1)
    u = jax.random.uniform(rng, (sum(sizes.values()),))
    draw, start = {}, 0
    for name, size in sizes.items():
      draw[name], start = u[start : start + size], start + size

    def uniform_int(x, hi):  # x uniform in [0, 1) -> int uniform in [0, hi) (hi >= 1, may be traced)
      return jnp.clip(jnp.floor(x * hi).astype(jnp.int32), 0, hi - 1)

    def pick(x, mask):  # x float[...] -> uniform indices among the True entries of mask bool[M]
      count = jnp.cumsum(mask)
      rank = uniform_int(x, jnp.maximum(count[-1], 1))
      return jnp.searchsorted(count, rank, side="right").astype(jnp.int32)

    # Target distance c: d + 1, or at level 0 either 0 (b = a) or 1 (b adjacent to a).
    d = jnp.clip(jnp.asarray(difficulty, jnp.int32), 0, self.max_difficulty)
    c = jnp.where(d == 0, (draw["same"][0] >= 0.5).astype(jnp.int32), d + 1)
    # BFS levels over generation positions: position 0 is a, positions 1..c get levels 1..c (so
    # every level up to c is occupied), every other position a level uniform in [1, max_hops] with
    # the unoccupied levels above c squeezed out (so every level up to the largest is occupied).
    pos = jnp.arange(n)
    free = pos > c
    raw = 1 + uniform_int(draw["level"], top)
    values = jnp.arange(top + 1)
    occupied = jnp.any(free[:, None] & (raw[:, None] == values), axis=0) & (values > c)
    squeezed = c + jnp.cumsum(occupied)[raw]
    level = jnp.where(free, jnp.where(raw <= c, raw, squeezed), pos)
    # Spanning tree: each position p >= 1 attaches to a uniform node one level below it, so every
    # node's level is its distance from a (tree edges realise it; no edge skips a level). Extra
    # edges: uniform among pairs of distinct nodes whose levels differ by at most 1 that are not
    # tree edges (all such pairs if none is left); extra edges may repeat each other (harmless).
    below = level[None, :] == level[:, None] - 1  # [p, j]: j is one level below p
    parent = jax.vmap(pick)(draw["parent"], below)[1:]
    tree = jnp.zeros((n, n), bool).at[pos[1:], parent].set(True)
    near = (jnp.abs(level[:, None] - level[None, :]) <= 1) & (pos[:, None] != pos[None, :])
    fresh = near & ~(tree | tree.T)
    pair = pick(draw["extra"], jnp.where(jnp.any(fresh), fresh, near).reshape(-1))
    edges = jnp.concatenate([jnp.stack([pos[1:], parent], 1), jnp.stack([pair // n, pair % n], 1)])
    # Relabel nodes by a random permutation, orient each edge at random and shuffle the edge order
    # (hides the construction order); a = position 0, b = position c, at distance exactly c.
    label = jnp.argsort(draw["label"]).astype(jnp.int32)
    edges = label[edges]
    edges = jnp.where(draw["flip"][:, None] < 0.5, edges[:, ::-1], edges)
    edges = edges[jnp.argsort(draw["order"])]
    return self._question(edges, label[0], label[c], top), self._answer(c)

  # ---- H -------------------------------------------------------------------------------------
  def is_leaf(self, question):
    edges, a, b, h = self._parse(question)
    return (a == b) | self._adjacency(edges)[a, b] | (h <= 1)

  def leaf_answer(self, question):
    """0 if a = b, 1 if b is adjacent to a (and h >= 1), else inf: exact at every leaf."""
    edges, a, b, h = self._parse(question)
    adjacent = self._adjacency(edges)[a, b] & (h >= 1)
    return self._answer(jnp.where(a == b, 0, jnp.where(adjacent, 1, self._inf)))

  def subquestion(self, question, subanswers, i):
    """(same graph, a := node i, b, h - 1); valid iff node i is a neighbour of a and q no leaf."""
    del subanswers  # the neighbours' questions are independent
    edges, a, b, h = self._parse(question)
    adj = self._adjacency(edges)
    i = jnp.asarray(i, jnp.int32)
    node = jnp.clip(i, 0, self.num_nodes - 1)
    leaf = (a == b) | adj[a, b] | (h <= 1)
    valid = adj[a, node] & (node != a) & ~leaf & (i >= 0) & (i < self.num_nodes)
    return self._question(edges, node, b, jnp.maximum(h - 1, 0)), valid

  def recombine(self, question, subanswers, valid):
    """1 + min over valid subanswers; "inf" and non-number tokens count as infinite, and a result
    above h is inf."""
    _, _, _, h = self._parse(question)
    tok = self.tokenizer
    tokens = subanswers[:, 0]
    finite = valid & tok.is_number(tokens)
    best = jnp.min(jnp.where(finite, tok.to_number(tokens), self._inf))
    return self._answer(jnp.where(best + 1 <= h, best + 1, self._inf))

  # ---- ground truth --------------------------------------------------------------------------
  def solve(self, question):
    edges, a, b, h = self._parse(question)
    return self._answer(self._distances(self._adjacency(edges), a, h)[b])

  # ---- text ----------------------------------------------------------------------------------
  def format_question(self, question) -> str:
    q = np.asarray(question).reshape(-1)
    self.tokenizer.decode(q)  # raises ValueError on ids outside the vocabulary
    vocab = self.tokenizer.vocab
    words = [vocab[int(t)] for t in q]
    k = self.num_edges
    edges = " ".join(f"{words[2 * j]}-{words[2 * j + 1]}" for j in range(k))
    a, b, h = words[2 * k : 2 * k + 3]
    return f"edges {edges}; dist({a}, {b}) within {h} hops?"
