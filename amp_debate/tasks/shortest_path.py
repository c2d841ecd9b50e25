"""Shortest path with a hop budget: given an undirected graph (in context), nodes a, b and a budget
h, what is the length of the shortest path from a to b that uses at most h edges ("inf" if none)?

The budget makes H's decomposition well founded: the plain "dist(a, b)?" recursion loops on cycles.

Question (Lq = N + 3): one token per node, node i's adjacency row as the number token
sum_j 2^j [i ~ j] (its neighbour mask: bit j set iff j is adjacent to i), then ``a, b, h``; a, b
are node tokens ``v0 .. v{N-1}`` and the budget h a number token. Answer (La = 1):
``[number(distance)]`` or ``["inf"]``. Numbers span 0 .. 2^N - 1 (the masks; the distances
0 .. max_hops are among them), so N is at most 10.

Why a mask per node (eval sets 1.2.0): "is b adjacent to a?" is then bit b of the token at
position a, and "do a and b share a neighbour?" the intersection of two tokens' masks, look-ups a
small transformer learns quickly. Measured, with the runlocal graph (N = 6, max_hops = 3) and a
4-layer width-64 model: the 1.1.0 encoding, the N x N matrix of 0/1 tokens (Lq = N^2 + 3), reached
97.4 / 72.2 / 79.2% by level after 2000 steps and was still improving; the masks reach >= 95% at
every level at step 2200 with batch 128 (BUILD_NOTES, "Every task learnable"), and a step costs
less (9 tokens instead of 39). Earlier encodings, a shuffled edge list (1.0.0) and node-indexed
neighbour lists, needed a match on two tokens and were learned worse still.

Parsing is total (every int32 token array is a question): a row that is a number token gives its
bits as edges, any other token (``inf``, nodes, protocol tokens) no edges; the adjacency is the
symmetric closure of the rows (adj | adj.T) without self-loops, so a one-sided or malformed row is
harmless. a and b go through ``to_variable`` (clipped into range), h through ``to_number`` clipped
into [0, max_hops].

H: at a leaf (a = b, a adjacent to b, or h <= 1) answers 0, 1 or inf directly. Otherwise asks, for
every node i adjacent to a (subquestion i, i < N), the distance from i to b within h - 1 hops (the
same rows, a := v_i, h := h - 1), and answers 1 + the smallest finite one (inf if none, or if that
exceeds h). By induction, H's full tree of depth D answers dist(a, b) when dist(a, b) <=
min(D + 1, h) and inf otherwise: exact on every question with h <= D + 1.

D: the level is the budget. Difficulty d in [0, max_hops - 1] has h = d + 1 and
  * level 0 (h = 1): b = a (answer 0) with probability 1/4, b adjacent to a (answer 1) with
    probability 1/4, otherwise dist(a, b) >= 2 (answer inf);
  * level d >= 1: dist(a, b) = h (answer h) with probability 1/2, otherwise dist(a, b) > h
    (answer inf).
Whenever dist(a, b) > h, it is uniform in [h + 1, min(h + 2, N - 1)] (so max_hops <= N - 2).
Why: with the full budget h = max_hops at every level (the distribution before) D never contained
"inf" answers nor budgets below max_hops, while H's subquestions have budget h - 1 and may answer
inf, so amplification asked M questions it never trained on. Now the subquestions of a level-d
question are questions of D at level d - 1: a neighbour u of a has dist(u, b) in {h - 1, h, h + 1,
...} against the budget h - 1, so its answer is either the budget (finite) or inf, both of which D
holds at level d - 1. H's tree of depth d is exact on every level-d question; a shallower tree
cannot tell dist = h from dist > h (it answers inf), so it is wrong on every finite-answer question
of a level above its depth.

Generator: every node gets a BFS level (its distance from a): a has 0, one node per level
1..dist(a, b) (the last is b), the others uniform levels in [1, min(max_hops + 2, N - 1)] (so nodes
beyond b and far from a exist) with empty levels squeezed out; each node attaches to a uniform node
one level below it, and the E extra edges join nodes whose levels differ by at most 1, so no edge
skips a level, levels are exact distances and graphs are connected. Nodes are then relabelled at
random.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from amp_debate.tasks.base import Task, check_option
from amp_debate.tasks.tokenizer import Tokenizer

INF_SYMBOL = "inf"
MAX_NODES = 10  # a row is one number token in [0, 2^N): 1024 number tokens at N = 10


@dataclasses.dataclass(frozen=True)
class ShortestPath(Task):
  """Options: ``num_nodes`` (N, 3..10), ``extra_edges`` (E, edges beyond a spanning tree,
  0..N(N-1)/2), ``max_hops`` (1..N-2: the budget of the top level, h = d + 1 at level d, and the
  largest answer; the inf questions of the top level put b at distance up to max_hops + 1 <=
  N - 1)."""

  name = "shortest_path"
  num_nodes: int = 8
  extra_edges: int = 2
  max_hops: int = 4

  def __post_init__(self):
    check_option(self.name, "num_nodes", self.num_nodes, 3, MAX_NODES)
    n = self.num_nodes
    check_option(self.name, "extra_edges", self.extra_edges, 0, n * (n - 1) // 2)
    check_option(self.name, "max_hops", self.max_hops, 1, n - 2)

  @property
  def tokenizer(self) -> Tokenizer:
    # Numbers 0 .. 2^N - 1: the row masks (the distances 0 .. max_hops <= N - 2 are among them).
    return Tokenizer(num_lo=0, num_hi=2**self.num_nodes - 1, num_vars=self.num_nodes,
                     symbols=(INF_SYMBOL,))

  @property
  def question_len(self) -> int:
    return self.num_nodes + 3

  @property
  def num_subquestions(self) -> int:
    return self.num_nodes

  @property
  def max_difficulty(self) -> int:
    return self.max_hops - 1

  @property
  def max_level(self) -> int:
    """The largest BFS level (distance from a) in sampled graphs."""
    return min(self.max_hops + 2, self.num_nodes - 1)

  @property
  def _inf(self) -> int:
    """Internal sentinel for "no path": larger than any budget."""
    return self.max_hops + 1

  # ---- parsing -------------------------------------------------------------------------------
  def _parse(self, question):
    """-> (adj bool[N, N] symmetric without self-loops, a int32[], b int32[], h int32[] in
    [0, max_hops])."""
    tok = self.tokenizer
    n = self.num_nodes
    rows = question[:n]  # [N]: row i's mask; a non-number token means no edges
    mask = jnp.where(tok.is_number(rows), tok.to_number(rows), 0)
    adj = ((mask[:, None] >> jnp.arange(n)[None, :]) & 1) == 1  # [N, N]: bit j of row i
    adj = (adj | adj.T) & ~jnp.eye(n, dtype=bool)
    a = tok.to_variable(question[n])
    b = tok.to_variable(question[n + 1])
    h = jnp.clip(tok.to_number(question[n + 2]), 0, self.max_hops)
    return adj, a, b, h

  def _rows(self, adj):
    """int32[N]: the row-mask number tokens of adj bool[N, N] (bit j of row i: i ~ j)."""
    weights = jnp.left_shift(1, jnp.arange(self.num_nodes, dtype=jnp.int32))
    mask = jnp.sum(jnp.asarray(adj, jnp.int32) * weights[None, :], axis=1)
    return self.tokenizer.number(mask).astype(jnp.int32)

  def _question(self, adj, a, b, h):
    tok = self.tokenizer
    return jnp.concatenate([
        self._rows(adj), tok.variable(a)[None], tok.variable(b)[None],
        tok.number(h)[None]]).astype(jnp.int32)

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
    n, e, top = self.num_nodes, self.extra_edges, self.max_level
    # One uniform draw, sliced (one PRNG call compiles much faster than several on CPU).
    sizes = dict(level=n, parent=n, extra=e, label=n, kind=1, far=1)
    u = jax.random.uniform(rng, (sum(sizes.values()),))
    draw, start = {}, 0
    for name, size in sizes.items():
      draw[name], start = u[start : start + size], start + size

    def uniform_int(x, hi):  # x uniform in [0, 1) -> int uniform in [0, hi) (hi >= 1, maybe traced)
      return jnp.clip(jnp.floor(x * hi).astype(jnp.int32), 0, hi - 1)

    def pick(x, mask):  # x float[...] -> uniform indices among the True entries of mask bool[M]
      count = jnp.cumsum(mask)
      rank = uniform_int(x, jnp.maximum(count[-1], 1))
      return jnp.searchsorted(count, rank, side="right").astype(jnp.int32)

    # Budget h = d + 1 and target distance c: with probability 1/2 c = h (at level 0 split into
    # c = 0, b = a, and c = 1, b adjacent), otherwise c uniform in [h + 1, min(h + 2, N - 1)].
    d = jnp.clip(jnp.asarray(difficulty, jnp.int32), 0, self.max_difficulty)
    h = d + 1
    kind = draw["kind"][0]
    far = h + 1 + uniform_int(draw["far"][0], jnp.minimum(h + 2, n - 1) - h)
    c = jnp.where(kind < 0.5, jnp.where((d == 0) & (kind < 0.25), 0, h), far)
    # BFS levels over generation positions: position 0 is a, positions 1..c get levels 1..c (so
    # every level up to c is occupied), every other position a level uniform in [1, max_level] with
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
    tree = tree | tree.T
    near = (jnp.abs(level[:, None] - level[None, :]) <= 1) & (pos[:, None] != pos[None, :])
    fresh = near & ~tree
    pair = pick(draw["extra"], jnp.where(jnp.any(fresh), fresh, near).reshape(-1))
    extra = jnp.zeros((n, n), bool).at[pair // n, pair % n].set(True)
    adj = tree | extra | extra.T
    # Relabel nodes by a random permutation (label[p] is position p's node); a = position 0 and
    # b = position c, at distance exactly c.
    label = jnp.argsort(draw["label"]).astype(jnp.int32)
    position = jnp.argsort(label)  # position[i] is node i's position
    adj = adj[position][:, position]
    question = self._question(adj, label[0], label[c], h)
    return question, self._answer(jnp.where(c <= h, c, self._inf))

  # ---- H -------------------------------------------------------------------------------------
  def is_leaf(self, question):
    adj, a, b, h = self._parse(question)
    return (a == b) | adj[a, b] | (h <= 1)

  def leaf_answer(self, question):
    """0 if a = b, 1 if b is adjacent to a (and h >= 1), else inf: exact at every leaf."""
    adj, a, b, h = self._parse(question)
    adjacent = adj[a, b] & (h >= 1)
    return self._answer(jnp.where(a == b, 0, jnp.where(adjacent, 1, self._inf)))

  def subquestion(self, question, subanswers, i):
    """(the same rows and b, a := v_i, h := h - 1); valid iff node i is a neighbour of a and the
    question is no leaf."""
    del subanswers  # the neighbours' questions are independent
    adj, a, b, h = self._parse(question)
    tok = self.tokenizer
    n = self.num_nodes
    i = jnp.asarray(i, jnp.int32)
    node = jnp.clip(i, 0, n - 1)
    leaf = (a == b) | adj[a, b] | (h <= 1)
    valid = adj[a, node] & (node != a) & ~leaf & (i >= 0) & (i < n)
    subq = question.at[n].set(tok.variable(node))
    subq = subq.at[n + 2].set(tok.number(jnp.maximum(h - 1, 0)))
    return subq.astype(jnp.int32), valid

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
    adj, a, b, h = self._parse(question)
    return self._answer(self._distances(adj, a, h)[b])

  # ---- text ----------------------------------------------------------------------------------
  def format_question(self, question) -> str:
    """E.g. ``adjacency 01000000 10101000 ...; dist(v0, v2) within 2 hops?``: each row's mask as
    N binary digits, digit j for node j (``1``: adjacent), or the row's token in brackets where
    it is no number (``[inf]``)."""
    q = np.asarray(question).reshape(-1)
    self.tokenizer.decode(q)  # raises ValueError on ids outside the vocabulary
    vocab = self.tokenizer.vocab
    words = [vocab[int(t)] for t in q]
    n = self.num_nodes
    rows = []
    for word in words[:n]:
      rows.append("".join(str((int(word) >> j) & 1) for j in range(n)) if word.isdigit()
                  else f"[{word}]")
    a, b, h = words[n : n + 3]
    return f"adjacency {' '.join(rows)}; dist({a}, {b}) within {h} hops?"
