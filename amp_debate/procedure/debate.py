"""The debate rollout over H's decomposition tree (DESIGN.md section 3), for a batch of games.

Two sides argue about a node n, first the root question. ``t`` counts arguments.

  t = 0, 1   CLAIMS   each side's claim is its own Amp′(H, M)(n) computation, independent of the
                      other's (an *assigned* side defends a claim it was given instead, and has no
                      computation). Equal claims: concession, draw. A leaf root: H decides.
  t = 2+2r   SUPPORT  even, then odd (t = 3+2r), support their claims on node n_r. Where H was
                      called in the side's computation of n_r the support is exactly that
                      computation's subanswers (they recombine to the claim by construction).
                      Otherwise the side answers SUPPORT(n_r, claim) directly and H checks that the
                      support recombines to the claim. Both supports are made, then both checked:
                      exactly one inconsistent loses, both inconsistent is a draw.
  dispute             H compares the two supports row by row; the first valid row where they differ
                      is the disputed subquestion n_{r+1}, each side's claim there being its own row.
                      At a leaf H decides. Otherwise each (non-assigned) side computes Amp′ of the new
                      node; a side whose computation disagrees with the claim it committed to loses
                      as inconsistent (both: draw). Its computation's subanswers are its next support.

Stops, after every argument: ``force_stop_after`` arguments, ``t_max`` arguments, and (once per
node, when the claims on it are in) the learned stop: the stopper samples STOP(n, claims) and [YES]
ends the debate. At an early stop the amplified judge decides: Amp′(H, judge)(n) answers the
current node and the side whose claim matches wins (neither: draw). A debate stopped before the
second claim is a draw, and then no verdict is computed or counted (so ``force_stop_after=1`` is
pure amplification: one Amp′ computation, no contest).

The learned stop's training target is H's hindsight judgement: at a node where the stop was asked
and did not fire, would stopping there have given the verdict the debate actually reached?
(``Transcript.stop_label``; the judge's verdict at every such node is computed for it.)

The judge flaw (``p_flaw`` > 0, the self-review study, DESIGN.md section 4): at a leaf, a claim
containing the token EXPLOIT fools H with probability p_flaw and wins (both fooled: draw); otherwise it
is simply a wrong claim. ``Transcript.leaf_fooled`` records the games the flaw decided.

Human calls are counted once each, by where they were spent (``CALL_KINDS``): ``claims`` (H called
in a side's Amp′ computation), ``supports`` (H checking a directly answered support, and H comparing
the two supports), ``leaves`` (H deciding at a leaf), ``verdicts`` (H called in the judge's Amp′).

The rollout records every computation with its trace in a ``Transcript`` laid out by node
(R = ``DebateConfig.num_nodes`` nodes, each side's computation and support on each), which the
losses read: the policy gradient reaches only tokens M sampled, the distillation targets are the
computations' own answers (``procedure.credit``).

The rounds after the first run on ``procedure.game.masked_loop`` (the rollout loop the pixel debate
also plays on): a ``lax.scan`` with a per-game ``done`` mask, finished games frozen and their later
records inactive. ``early_exit=True`` runs the same round body in a ``lax.while_loop`` that stops
when every game is done; results are identical (each round's key is
``fold_in(rng, r)``, and masked rounds change nothing).
"""

from __future__ import annotations

import dataclasses

import chex
import flax.struct
import jax
import jax.numpy as jnp

from amp_debate import checks
from amp_debate.procedure import game as game_lib
from amp_debate.procedure import protocol
from amp_debate.procedure.amplify import AmpOutput, amplify
from amp_debate.procedure.players import answer_vocabulary, wrong_answer
from amp_debate.tasks.base import Task

REASONS = ("running", "concede", "inconsistent", "leaf", "t_max", "learned_stop", "forced")
RUNNING, CONCEDE, INCONSISTENT, LEAF, T_MAX, LEARNED_STOP, FORCED = range(len(REASONS))
EVEN_WINS, ODD_WINS, DRAW = 0, 1, 2
CALL_KINDS = ("claims", "supports", "leaves", "verdicts")
NO_ASSIGNMENT = -1


@dataclasses.dataclass(frozen=True, kw_only=True)
class DebateConfig:
  """Static rollout options (checked on construction: ``checks.FieldError`` names the field).

  A default here equals the default config's (``experiments/configs/default.py``, where the
  trainer's defaults live; tests/test_config.py checks they agree); ``early_exit`` and
  ``assign_prob``, whose defaults there depend on the size and the mode, have none.

  Attributes:
    t_max: maximum number of arguments per debate (>= 1).
    call_prob: probability of calling H in each Amp′ computation (claims, verdicts).
    confidence_threshold: also call H where M's confidence in its own answer, exp(sum of its
      log-probs), is below this (None: the Bernoulli rule alone).
    learned_stop: ask the stopper STOP(n, claims) once per node.
    force_stop_after: stop after this many arguments (None: never). 1 = pure amplification.
    early_exit: lax.while_loop over rounds (exits when all games are done) instead of lax.scan.
    assign_prob: fraction of self-play debates in which one side (even or odd, at random) defends
      an assigned claim other than the other side's (``sample_assignments``), so that refuting
      false claims is practised.
    p_flaw: the judge flaw: probability that an EXPLOIT claim fools H's leaf check (0: no flaw).
    distinct_claims: contest by construction (issue 28): where neither side is assigned a claim
      and odd's root claim is its player's own direct answer (H not called in it), a claim equal
      to even's is replaced by a sample of odd's answer distribution without even's claim
      (``answer_excluding``), so self-play never opens with a concession; both claims keep their
      policy-gradient rows.
    explore_prob: challenger exploration (issue 28): in the same games (unassigned, odd's root
      claim its player's own direct answer), with this probability odd's claim is replaced by a
      uniform draw from the task's answer vocabulary other than even's claim
      (``players.answer_vocabulary``); the policy-gradient row keeps it with M's own log-prob.
      Without it a policy sure of a wrong answer rarely meets the truth (both claims come from the
      same sharp distribution), so its gradient, weighted by π(true answer), all but vanishes.
    complete_supports: supports completed from their claims (issue 28): in a directly answered
      support, the rows the claim determines (``Task.complete_support``: the last row for the
      permutation task) are set from the claim, so H's recombination check passes by construction
      wherever the task can complete it, and a dispute is about a row the side chose. Those tokens
      carry no policy gradient. Without it, in pure debate at level 1 nearly every game was
      decided by the check, which tests whether M's support repeats its claim, not whether the
      claim is true (measured: ``experiments/support_probe.py``).
  """

  t_max: int = 12
  call_prob: float = 1.0
  confidence_threshold: float | None = None
  learned_stop: bool = False
  force_stop_after: int | None = None
  early_exit: bool
  assign_prob: float
  p_flaw: float = 0.0
  distinct_claims: bool = False
  explore_prob: float = 0.0
  complete_supports: bool = False

  def __post_init__(self):
    checks.check_fields(
        self, t_max=checks.integer(1), call_prob=checks.number(0.0, 1.0),
        confidence_threshold=checks.optional(checks.number(0.0, 1.0)),
        learned_stop=checks.boolean, force_stop_after=checks.optional(checks.integer(1)),
        early_exit=checks.boolean, assign_prob=checks.number(0.0, 1.0),
        p_flaw=checks.number(0.0, 1.0), distinct_claims=checks.boolean,
        explore_prob=checks.number(0.0, 1.0), complete_supports=checks.boolean)
    if self.assign_prob > 0 and not self.contested:
      raise checks.FieldError(type(self).__name__, "assign_prob",
                              f"must be 0 when the debate ends after the first claim (t_max="
                              f"{self.t_max}, force_stop_after={self.force_stop_after}): an "
                              f"assigned claim is never contested, and an assigned even seat "
                              f"computes nothing (got {self.assign_prob})")

  @property
  def num_rounds(self) -> int:
    """SUPPORT rounds (one argument per side) that fit after the two claims."""
    return max(0, -(-(self.t_max - 2) // 2))

  @property
  def num_nodes(self) -> int:
    """R: nodes with records (the root, and every node that gets supports)."""
    return max(1, self.num_rounds)

  @property
  def contested(self) -> bool:
    """Whether the second claim can be made at all (else every debate is one claim, a draw)."""
    stop = self.t_max if self.force_stop_after is None else min(self.t_max, self.force_stop_after)
    return stop >= 2


@flax.struct.dataclass
class Computation:
  """Amp′(H, M) computations with their traces, for any leading shape [...] (games, nodes, sides).

  Attributes:
    answer: int32[..., La] the computation's answer (H's recombination where called, else M's).
    called: bool[...] H was called.  is_leaf: bool[...] H answered alone (no subquestions).
    direct: int32[..., La] M's direct answer; direct_log_probs float32[..., La] its log-probs.
    subquestions: int32[..., S, Lq]; subanswers int32[..., S, La] M's answers to them;
    sub_log_probs: float32[..., S, La]; sub_valid bool[..., S] subquestions H actually posed.
    active: bool[...] the computation is part of the debate (its game was running and the side
      computes; an assigned side never does).
  """

  answer: jax.Array
  called: jax.Array
  is_leaf: jax.Array
  direct: jax.Array
  direct_log_probs: jax.Array
  subquestions: jax.Array
  subanswers: jax.Array
  sub_log_probs: jax.Array
  sub_valid: jax.Array
  active: jax.Array

  @classmethod
  def of(cls, amp: AmpOutput, active: jax.Array) -> "Computation":
    return cls(answer=amp.answers, called=amp.called & active, is_leaf=amp.is_leaf,
               direct=amp.direct, direct_log_probs=amp.direct_log_probs,
               subquestions=amp.subquestions, subanswers=amp.subanswers,
               sub_log_probs=amp.sub_log_probs, sub_valid=amp.sub_valid & active[..., None],
               active=active)

  def human_calls(self) -> jax.Array:
    return (self.called & self.active).sum().astype(jnp.int32)


@flax.struct.dataclass
class GameState:
  """Per-game state (B games).

  Attributes:
    node: int32[B, Lq] the node under debate.
    claims: int32[B, 2, La] each side's claim on ``node`` (even, odd).
    comp: Computation [B, 2] each side's computation of ``node``.
    done: bool[B]; winner: int32[B] (0 even, 1 odd, 2 draw); reason: int32[B] (index in REASONS).
    num_args: int32[B] arguments made so far.
    calls: {kind: int32[]} human calls so far, by ``CALL_KINDS``.
    judged: bool[B] the judge already gave its verdict on ``node`` (where the learned stop was
      asked); verdict: int32[B] that verdict, reused if the debate stops on the same node.
  """

  node: jax.Array
  claims: jax.Array
  comp: Computation
  done: jax.Array
  winner: jax.Array
  reason: jax.Array
  num_args: jax.Array
  calls: dict
  judged: jax.Array
  verdict: jax.Array

  @property
  def human_calls(self) -> jax.Array:
    """int32[]: all human calls of the batch."""
    return sum(self.calls.values())


@flax.struct.dataclass
class Transcript:
  """Every node of every game (R = ``DebateConfig.num_nodes``; inactive records are zeros/PAD).

  Attributes:
    nodes: int32[B, R, Lq] node r (node 0 is the root).  reached: bool[B, R] it was argued about.
    claims: int32[B, R, 2, La] each side's claim on node r.
    assigned: bool[B, 2] the side defends an assigned claim (no computations; direct supports).
    comps: Computation [B, R, 2] each side's Amp′ computation of node r (its claim at r = 0, the
      check of its committed claim and the source of its support for r >= 1).
    support_tokens: int32[B, R, 2, S*La] each side's support on node r.
    support_log_probs: float32[B, R, 2, S*La] their log-probs where M answered SUPPORT directly.
    support_sampled: bool[B, R, 2] M answered SUPPORT directly (not a computation's trace).
    support_fixed: bool[B, R, 2, S*La] tokens of a direct support set from its claim
      (``DebateConfig.complete_supports``), not sampled: no policy gradient reaches them.
    support_made: bool[B, R, 2] the support argument happened.
    judges: Computation [B, R] the judge's Amp′ of node r (computed where the stop was asked).
    stop_asked, stop_fired: bool[B, R]; stop_tokens int32[B, R]; stop_log_probs float32[B, R].
    stop_verdict: int32[B, R] the judge's verdict had the debate stopped at node r.
    stop_label: bool[B, R] H's hindsight: stopping at r would give the final verdict.
    stop_labelled: bool[B, R] the label exists (asked, did not fire).
    final_node: int32[B, Lq] the node the debate ended on.
    final_judge: Computation [B] the judge's Amp′ of the final node where a forced or T_MAX stop
      needed it (and the learned stop's judge had not already decided that node).
    leaf_reached: bool[B] H decided at a leaf the debate descended to.
    leaf_fooled: bool[B] the judge flaw changed H's leaf verdict (an EXPLOIT claim fooled H).
  """

  nodes: jax.Array
  reached: jax.Array
  claims: jax.Array
  assigned: jax.Array
  comps: Computation
  support_tokens: jax.Array
  support_log_probs: jax.Array
  support_sampled: jax.Array
  support_fixed: jax.Array
  support_made: jax.Array
  judges: Computation
  stop_asked: jax.Array
  stop_fired: jax.Array
  stop_tokens: jax.Array
  stop_log_probs: jax.Array
  stop_verdict: jax.Array
  stop_label: jax.Array
  stop_labelled: jax.Array
  final_node: jax.Array
  final_judge: Computation
  leaf_reached: jax.Array
  leaf_fooled: jax.Array


def sample_assignments(rng: jax.Array, batch: int, assign_prob: float | jax.Array) -> jax.Array:
  """int32[B]: the seat (0 even, 1 odd) that defends an assigned claim in each game, or -1."""
  assign_rng, seat_rng = jax.random.split(rng)
  seat = jax.random.bernoulli(seat_rng, 0.5, (batch,)).astype(jnp.int32)
  return jnp.where(jax.random.uniform(assign_rng, (batch,)) < assign_prob, seat, NO_ASSIGNMENT)


# ---- helpers -------------------------------------------------------------------------------------
def _where(mask, new, old):
  """Per-game select: mask bool[B] broadcast over the trailing dims of new/old ([B, ...])."""
  return jax.tree.map(lambda n, o: jnp.where(mask.reshape(mask.shape + (1,) * (n.ndim - mask.ndim)),
                                             n, o), new, old)


def _put(field, r, value, mask):
  """field[:, r] = value where mask (bool[B]); r may be traced."""
  def one(f, v):
    old = jax.lax.dynamic_index_in_dim(f, r, axis=1, keepdims=False)
    v = _where(mask, v.astype(f.dtype), old)
    return jax.lax.dynamic_update_index_in_dim(f, v, r, axis=1)
  return jax.tree.map(one, field, value)


def _finish(state: GameState, mask, winner, reason) -> GameState:
  """Ends the games in ``mask`` that are still running with this winner and reason."""
  mask = mask & ~state.done
  return state.replace(done=state.done | mask, winner=jnp.where(mask, winner, state.winner),
                       reason=jnp.where(mask, reason, state.reason))


def _count(state: GameState, kind: str, n) -> GameState:
  return state.replace(calls={**state.calls, kind: state.calls[kind] + jnp.asarray(n, jnp.int32)})


def _empty_computation(task: Task, shape) -> Computation:
  la, s, lq = task.answer_len, task.num_subquestions, task.question_len
  z = lambda *tail, dtype=jnp.int32: jnp.zeros(tuple(shape) + tail, dtype)
  return Computation(answer=z(la), called=z(dtype=bool), is_leaf=z(dtype=bool), direct=z(la),
                     direct_log_probs=z(la, dtype=jnp.float32), subquestions=z(s, lq),
                     subanswers=z(s, la), sub_log_probs=z(s, la, dtype=jnp.float32),
                     sub_valid=z(s, dtype=bool), active=z(dtype=bool))


def _empty_transcript(task: Task, batch: int, num_nodes: int) -> Transcript:
  b, r = batch, num_nodes
  z = lambda *shape, dtype=jnp.int32: jnp.zeros(shape, dtype)
  sl = protocol.support_len(task)
  return Transcript(
      nodes=z(b, r, task.question_len), reached=z(b, r, dtype=bool),
      claims=z(b, r, 2, task.answer_len), assigned=z(b, 2, dtype=bool),
      comps=_empty_computation(task, (b, r, 2)), support_tokens=z(b, r, 2, sl),
      support_log_probs=z(b, r, 2, sl, dtype=jnp.float32), support_sampled=z(b, r, 2, dtype=bool),
      support_fixed=z(b, r, 2, sl, dtype=bool), support_made=z(b, r, 2, dtype=bool),
      judges=_empty_computation(task, (b, r)),
      stop_asked=z(b, r, dtype=bool), stop_fired=z(b, r, dtype=bool), stop_tokens=z(b, r),
      stop_log_probs=z(b, r, dtype=jnp.float32), stop_verdict=z(b, r), stop_label=z(b, r, dtype=bool),
      stop_labelled=z(b, r, dtype=bool), final_node=z(b, task.question_len),
      final_judge=_empty_computation(task, (b,)), leaf_reached=z(b, dtype=bool),
      leaf_fooled=z(b, dtype=bool))


def _own_odd_claim(comp: Computation, assigned: jax.Array) -> jax.Array:
  """bool[B]: games where odd's root claim is its player's own direct answer (neither side
  assigned, H not called in it): the claims ``distinct_claims`` and ``explore_prob`` may replace."""
  return ~assigned.any(-1) & comp.active[:, 1] & ~comp.called[:, 1]


def _with_odd_claim(comp: Computation, where: jax.Array, tokens: jax.Array,
                    log_probs: jax.Array) -> Computation:
  """The root Computation [B, 2] with odd's answer and direct answer set to ``tokens`` int32[B, La]
  (log-probs float32[B, La]) where ``where`` bool[B]; unchanged elsewhere."""
  swap = lambda field, new: field.at[:, 1].set(jnp.where(where[:, None], new, field[:, 1]))
  return comp.replace(answer=swap(comp.answer, tokens), direct=swap(comp.direct, tokens),
                      direct_log_probs=swap(comp.direct_log_probs, log_probs))


class _Rollout:
  """The pieces of one rollout (task, players and config are static; methods are pure)."""

  def __init__(self, task, even, odd, config, stopper, judge):
    self.task, self.players, self.config = task, (even, odd), config
    self.stopper, self.judge = stopper, judge
    self.vmap = lambda f: jax.vmap(lambda *a: f(task, *a))

  def amplify(self, player, nodes, key) -> AmpOutput:
    return amplify(self.task, player.answer_fn(), nodes, key, call_prob=self.config.call_prob,
                   confidence_threshold=self.config.confidence_threshold)

  def both_sides(self, call, key, *per_side):
    """``call(player, key, *args)`` for each side on [B, ...] arguments (``per_side``: one array per
    side for each argument, or a shared array), stacked to [B, 2, ...]. In self-play (one player)
    both sides run as one batch of 2B."""
    even, odd = self.players
    args = [a if isinstance(a, tuple) else (a, a) for a in per_side]
    if even is odd:
      batch = args[0][0].shape[0]
      out = call(even, key, *[jnp.concatenate(a) for a in args])
      return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.swapaxes(
          x.reshape((2, batch) + x.shape[1:]), 0, 1), out)
    keys = jax.random.split(key)
    outs = [call(p, k, *[a[s] for a in args]) for s, (p, k) in enumerate(zip(self.players, keys))]
    return jax.tree.map(lambda a, b: a if a.ndim == 0 else jnp.stack([a, b], 1), *outs)

  def compute_sides(self, nodes, key, computing) -> Computation:
    """Each side's own Amp′ of ``nodes``: Computation [B, 2] (active = ``computing`` bool[B, 2])."""
    amp = self.both_sides(lambda p, k, n: self.amplify(p, n, k), key, nodes)
    return Computation.of(amp, computing)

  def direct_supports(self, nodes, claims, key, assigned):
    """Both sides' direct SUPPORT answers: (tokens int32[B, 2, S*La], log_probs float32[...]).

    In self-play with H called in every computation (call_prob 1, no confidence rule), only an
    assigned side answers SUPPORT directly (a computing side's support is its trace): then one
    support per game is sampled, the assigned seat's (``assigned`` bool[B, 2]; even's where
    none is), and the other seat's is zeros (never used)."""
    even, odd = self.players
    if not (even is odd and self.config.call_prob == 1
            and self.config.confidence_threshold is None):
      move = self.both_sides(lambda p, k, n, c: p.support(n, c, k), key, nodes,
                             (claims[:, 0], claims[:, 1]))
      return move.tokens, move.log_probs
    seat = assigned[:, 1]  # bool[B]: odd is the assigned seat
    claim = jnp.where(seat[:, None], claims[:, 1], claims[:, 0])
    move = even.support(nodes, claim, key)
    place = lambda x: jnp.stack([jnp.where(seat[:, None], 0, x), jnp.where(seat[:, None], x, 0)],
                                1).astype(x.dtype)
    return place(move.tokens), place(move.log_probs)

  def assigned_claims(self, questions, own, key, force_contest):
    """Each side's claim were it assigned one: its player's ``answer`` (a sample of M's answer
    distribution for the model), int32[B, 2, La]; with ``force_contest``, one equal to the other
    side's own claim is replaced by another answer. In self-play at most one seat per game is
    assigned, so one answer per game is sampled and offered to both seats."""
    answer_rng, wrong_rng = jax.random.split(key)
    even, odd = self.players
    if even is odd:  # self-play: one sample per game serves whichever seat is assigned
      one = even.answer(questions, answer_rng).tokens
      given = jnp.stack([one, one], 1)
    else:
      given = self.both_sides(lambda p, k, q: p.answer(q, k).tokens, answer_rng, questions)
    if force_contest:
      other = own[:, ::-1]
      same = (given == other).all(-1, keepdims=True)
      given = jnp.where(same, wrong_answer(self.task, other, wrong_rng), given)
    return given

  def distinct_odd_claim(self, questions, comp: Computation, assigned, key) -> Computation:
    """Contest by construction: where neither side is assigned, odd answered directly (H not
    called) and its answer equals even's claim, odd's direct answer is redrawn from its answer
    distribution without even's claim. Returns the root Computation [B, 2] with odd's answer,
    direct answer and log-probs replaced there."""
    odd = self.players[1]
    if not hasattr(odd, "answer_excluding"):
      raise ValueError(f"DebateConfig.distinct_claims needs an odd player with answer_excluding "
                       f"(a model debater); got {type(odd).__name__}")
    redraw = _own_odd_claim(comp, assigned) & (comp.answer[:, 0] == comp.answer[:, 1]).all(-1)
    move = odd.answer_excluding(questions, comp.answer[:, 0], key)
    return _with_odd_claim(comp, redraw, move.tokens, move.log_probs)

  def explored_odd_claim(self, questions, comp: Computation, assigned, key) -> Computation:
    """Challenger exploration: where neither side is assigned and odd answered directly (H not
    called), with probability ``explore_prob`` odd's claim becomes a uniform draw from the task's
    answer vocabulary without even's claim, recorded with M's own log-prob of it
    (``score_answers``). Returns the root Computation [B, 2] with odd's answer replaced there."""
    odd = self.players[1]
    if not hasattr(odd, "score_answers"):
      raise ValueError(f"DebateConfig.explore_prob needs an odd player with score_answers (a "
                       f"model debater); got {type(odd).__name__}")
    if self.task.answer_len != 1:
      raise ValueError(f"DebateConfig.explore_prob draws one-token answers; {self.task.name}'s "
                       f"answers have {self.task.answer_len} tokens")
    coin_rng, draw_rng = jax.random.split(key)
    batch = questions.shape[0]
    explore = _own_odd_claim(comp, assigned) & jax.random.bernoulli(
        coin_rng, self.config.explore_prob, (batch,))
    vocab = jnp.asarray(answer_vocabulary(self.task), jnp.int32)  # [V]
    allowed = vocab[None, :] != comp.answer[:, 0]  # [B, V] (La = 1)
    pick = jax.random.categorical(draw_rng, jnp.where(allowed, 0.0, -jnp.inf), axis=-1)
    tokens = vocab[pick][:, None]  # [B, 1]
    return _with_odd_claim(comp, explore, tokens, odd.score_answers(questions, tokens))

  def after_argument(self, state: GameState, active) -> GameState:
    """Counts an argument made by the ``active`` games, then applies the forced and T_MAX stops
    (the judge decides those after the rollout)."""
    state = state.replace(num_args=state.num_args + active.astype(jnp.int32))
    live = active & ~state.done
    if self.config.force_stop_after is not None:
      state = _finish(state, live & (state.num_args >= self.config.force_stop_after), DRAW, FORCED)
    return _finish(state, live & (state.num_args >= self.config.t_max), DRAW, T_MAX)

  def stops_at(self, num_args):
    """bool[B]: a forced or T_MAX stop fires once a game has made ``num_args`` (int32[B])
    arguments."""
    stop = num_args >= self.config.t_max
    if self.config.force_stop_after is not None:
      stop = stop | (num_args >= self.config.force_stop_after)
    return stop

  def leaf_verdict(self, nodes, claims, key):
    """H's verdict at a leaf for every game (int32[B]) and whether the judge flaw decided it
    (bool[B]). nodes int32[B, Lq], claims int32[B, 2, La]; ``key`` draws the flaw (p_flaw > 0)."""
    plain = self.vmap(protocol.leaf_verdict)(nodes, claims[:, 0], claims[:, 1])
    if not self.config.p_flaw:
      return plain, jnp.zeros(plain.shape, bool)
    fooled = jax.random.bernoulli(key, self.config.p_flaw, claims.shape[:2])
    verdict = self.vmap(protocol.flawed_leaf_verdict)(nodes, claims[:, 0], claims[:, 1], fooled)
    return verdict, verdict != plain

  def judge_verdict(self, amp: AmpOutput, claims):
    """The amplified judge's winner: the side whose claim equals Amp′(H, judge)(node)."""
    even_ok = (amp.answers == claims[:, 0]).all(-1)
    odd_ok = (amp.answers == claims[:, 1]).all(-1)
    return jnp.where(even_ok, EVEN_WINS, jnp.where(odd_ok, ODD_WINS, DRAW)).astype(jnp.int32)

  def learned_stop(self, state, transcript, r, key):
    """Node r's claims are in: the stopper samples STOP(n, claims); [YES] ends the game with the
    judge's verdict at this node (computed wherever the stop was asked, for the hindsight label)."""
    if not self.config.learned_stop:
      return state, transcript
    judge_rng, stop_rng = jax.random.split(key)
    asked = ~state.done
    amp = self.amplify(self.judge, state.node, judge_rng)
    verdict = self.judge_verdict(amp, state.claims)
    move = self.stopper.stop(state.node, state.claims[:, 0], state.claims[:, 1], stop_rng)
    fired = asked & (move.tokens[:, 0] == protocol.YES)
    judge = Computation.of(amp, asked)
    state = _count(state, "verdicts", judge.human_calls())
    state = state.replace(judged=state.judged | asked,
                          verdict=jnp.where(asked, verdict, state.verdict))
    state = _finish(state, fired, verdict, LEARNED_STOP)
    transcript = transcript.replace(
        judges=_put(transcript.judges, r, judge, asked),
        stop_asked=_put(transcript.stop_asked, r, asked, asked),
        stop_fired=_put(transcript.stop_fired, r, fired, asked),
        stop_tokens=_put(transcript.stop_tokens, r, move.tokens[:, 0], asked),
        stop_log_probs=_put(transcript.stop_log_probs, r, move.log_probs[:, 0], asked),
        stop_verdict=_put(transcript.stop_verdict, r, verdict, asked))
    return state, transcript

  def record_node(self, transcript, r, state, mask):
    return transcript.replace(
        nodes=_put(transcript.nodes, r, state.node, mask),
        reached=_put(transcript.reached, r, mask, mask),
        claims=_put(transcript.claims, r, state.claims, mask),
        comps=_put(transcript.comps, r, state.comp, mask))

  # ---- node 0: the claims ----------------------------------------------------------------------
  def claims(self, questions, key, assigned_seat, force_contest):
    task, config = self.task, self.config
    batch = questions.shape[0]
    comp_rng, assign_rng, stop_rng = jax.random.split(key, 3)
    if assigned_seat is None:
      assigned = jnp.zeros((batch, 2), bool)
    else:
      assigned = jnp.stack([assigned_seat == 0, assigned_seat == 1], 1)  # bool[B, 2]
    if config.contested:
      comp = self.compute_sides(questions, comp_rng, ~assigned)
    else:  # odd never claims: only even's computation is part of the debate (odd's is empty)
      even = Computation.of(self.amplify(self.players[0], questions, comp_rng), ~assigned[:, 0])
      comp = jax.tree.map(lambda e, o: jnp.stack([e, o], 1), even,
                          _empty_computation(task, (batch,)))
    if config.distinct_claims and config.contested:
      comp = self.distinct_odd_claim(questions, comp, assigned, jax.random.fold_in(key, 11))
    if config.explore_prob > 0 and config.contested:
      comp = self.explored_odd_claim(questions, comp, assigned, jax.random.fold_in(key, 12))
    claims = comp.answer  # [B, 2, La]
    if assigned_seat is not None:
      claims = jnp.where(assigned[..., None], self.assigned_claims(
          questions, claims, assign_rng, force_contest), claims)
    everyone = jnp.ones((batch,), bool)
    state = GameState(
        node=questions, claims=claims, comp=comp, done=~everyone,
        winner=jnp.full((batch,), DRAW, jnp.int32), reason=jnp.full((batch,), RUNNING, jnp.int32),
        num_args=jnp.zeros((batch,), jnp.int32),
        calls={kind: jnp.zeros((), jnp.int32) for kind in CALL_KINDS},
        judged=~everyone, verdict=jnp.full((batch,), DRAW, jnp.int32))
    state = _count(state, "claims", comp.human_calls())
    state = self.after_argument(state, everyone)  # t = 0: even's claim
    if config.contested:
      active = ~state.done  # t = 1: odd's claim; H checks concession and a leaf root first
      state = state.replace(num_args=state.num_args + active.astype(jnp.int32))
      state = _finish(state, active & (claims[:, 0] == claims[:, 1]).all(-1), DRAW, CONCEDE)
      at_leaf = active & ~state.done & task.batch_is_leaf(questions)
      # The flaw's key is folded in, so runs without the flaw keep their random streams.
      verdict, fooled = self.leaf_verdict(questions, claims, jax.random.fold_in(key, 7))
      fooled = at_leaf & fooled
      state = _finish(state, at_leaf, verdict, LEAF)
      state = _count(state, "leaves", at_leaf.sum())
      live = active & ~state.done
      if config.force_stop_after is not None:
        state = _finish(state, live & (state.num_args >= config.force_stop_after), DRAW, FORCED)
      state = _finish(state, live & (state.num_args >= config.t_max), DRAW, T_MAX)
    transcript = _empty_transcript(task, batch, config.num_nodes).replace(assigned=assigned)
    if config.contested:
      transcript = transcript.replace(leaf_fooled=fooled)
    transcript = self.record_node(transcript, 0, state, everyone)
    if config.contested:
      state, transcript = self.learned_stop(state, transcript, 0, stop_rng)
    return state, transcript

  # ---- node r: arrival (r >= 1) and supports ---------------------------------------------------
  def arrive(self, state, transcript, r, key):
    """After a descent to node r (not a leaf): each side computes Amp′ of the node and must agree
    with the claim it committed to."""
    comp_rng, stop_rng = jax.random.split(key)
    live = ~state.done
    computing = ~transcript.assigned & live[:, None]
    comp = self.compute_sides(state.node, comp_rng, computing)
    state = _count(state, "claims", comp.human_calls())
    bad = computing & ~(comp.answer == state.claims).all(-1)  # [B, 2]
    winner = jnp.where(bad[:, 0] & bad[:, 1], DRAW, jnp.where(bad[:, 0], ODD_WINS, EVEN_WINS))
    state = _finish(state.replace(comp=_where(live, comp, state.comp)), bad.any(-1), winner,
                    INCONSISTENT)
    transcript = self.record_node(transcript, r, state, live)
    return self.learned_stop(state, transcript, r, stop_rng)

  def supports(self, state, transcript, r, key):
    """Node r's SUPPORT arguments (t = 2+2r even, 3+2r odd), the dispute and the descent."""
    task = self.task
    direct_tokens, direct_log_probs = self.direct_supports(state.node, state.claims, key,
                                                           transcript.assigned)
    if self.config.complete_supports:
      complete = jax.vmap(self.vmap(protocol.complete_support), in_axes=(None, 1, 1), out_axes=1)
      direct_tokens, fixed = complete(state.node, state.claims, direct_tokens)
      direct_log_probs = jnp.where(fixed, 0.0, direct_log_probs)
    else:
      fixed = jnp.zeros(direct_tokens.shape, bool)
    comp = state.comp
    trace = comp.subanswers.reshape(direct_tokens.shape)
    direct = transcript.assigned | ~comp.called  # [B, 2]: M answers SUPPORT itself
    tokens = jnp.where(direct[..., None], direct_tokens, trace)
    log_probs = jnp.where(direct[..., None], direct_log_probs, 0.0)
    check = jax.vmap(self.vmap(protocol.check_support), in_axes=(None, 1, 1), out_axes=1)
    consistent = check(state.node, state.claims, tokens) | ~direct  # traces recombine by design

    # Both supports are made before either is checked, so the check is symmetric: exactly one
    # inconsistent support loses, both inconsistent is a draw (never decided by seat order). Where a
    # forced or T_MAX stop falls right after even's support (t = 2+2r), only even's is made.
    even_made = ~state.done
    odd_made = even_made & ~self.stops_at(state.num_args + 1)
    state = _count(state, "supports", (even_made & direct[:, 0]).sum())
    state = _count(state, "supports", (odd_made & direct[:, 1]).sum())
    bad = jnp.stack([even_made, odd_made], 1) & ~consistent  # [B, 2]
    winner = jnp.where(bad[:, 0] & bad[:, 1], DRAW, jnp.where(bad[:, 0], ODD_WINS, EVEN_WINS))
    state = _finish(state, bad.any(-1), winner, INCONSISTENT)
    state = self.after_argument(state, even_made)  # even's support: the stop between the two
    state = state.replace(num_args=state.num_args + odd_made.astype(jnp.int32))
    made = jnp.stack([even_made, odd_made], 1)
    transcript = transcript.replace(
        support_tokens=_put(transcript.support_tokens, r, jnp.where(made[..., None], tokens, 0),
                            made[:, 0]),
        support_log_probs=_put(transcript.support_log_probs, r,
                               jnp.where(made[..., None], log_probs, 0.0), made[:, 0]),
        support_sampled=_put(transcript.support_sampled, r, direct & made, made[:, 0]),
        support_fixed=_put(transcript.support_fixed, r, fixed & (direct & made)[..., None],
                           made[:, 0]),
        support_made=_put(transcript.support_made, r, made, made[:, 0]))

    moving = ~state.done
    state = _count(state, "supports", moving.sum())
    index, agree = self.vmap(protocol.first_dispute)(state.node, tokens[:, 0], tokens[:, 1])
    state = _finish(state, moving & agree, DRAW, CONCEDE)
    moving = moving & ~agree
    node, claim_even, claim_odd = self.vmap(protocol.descend)(
        state.node, tokens[:, 0], tokens[:, 1], index)
    state = state.replace(node=_where(moving, node, state.node), judged=state.judged & ~moving,
                          claims=_where(moving, jnp.stack([claim_even, claim_odd], 1), state.claims))
    at_leaf = moving & task.batch_is_leaf(state.node)
    verdict, fooled = self.leaf_verdict(state.node, state.claims, jax.random.fold_in(key, 7))
    state = _finish(state, at_leaf, verdict, LEAF)
    state = _count(state, "leaves", at_leaf.sum())
    transcript = transcript.replace(leaf_reached=transcript.leaf_reached | at_leaf,
                                    leaf_fooled=transcript.leaf_fooled | (at_leaf & fooled))
    live = moving & ~state.done
    if self.config.force_stop_after is not None:
      state = _finish(state, live & (state.num_args >= self.config.force_stop_after), DRAW, FORCED)
    state = _finish(state, live & (state.num_args >= self.config.t_max), DRAW, T_MAX)
    return state, transcript


def concat_games(parts) -> tuple[GameState, Transcript]:
  """Several rollouts' (GameState, Transcript) as one batch, in order: every per-game field
  concatenated, the human-call totals (``GameState.calls``, scalars) summed. The parts must share
  the config (and so every shape but the batch)."""
  states, transcripts = zip(*parts)
  state = jax.tree.map(lambda *x: sum(x) if x[0].ndim == 0 else jnp.concatenate(x), *states)
  return state, jax.tree.map(lambda *x: jnp.concatenate(x), *transcripts)


def rollout(task: Task, even, odd, questions: jax.Array, rng: jax.Array, config: DebateConfig, *,
            stopper=None, judge=None, assigned: jax.Array | None = None,
            force_contest: bool = True, opening=None) -> tuple[GameState, Transcript]:
  """Plays B debates on ``questions`` (int32[B, Lq]).

  Args:
    task: the task (H).
    even, odd: debaters (``players`` interface); in self-play both are M_target (pass the same
      object: both sides then run as one batch).
    questions: int32[B, Lq] root questions.
    rng: PRNG key.
    config: DebateConfig (static).
    stopper: answers STOP (default: ``even``).  judge: M of the amplified verdict Amp′(H, judge)
      (default: ``even``).
    assigned: int32[B], per game the seat (0 even, 1 odd) that defends an assigned claim (its
      player's ``answer``), or -1 (``sample_assignments``); None: no assignments. Scripted liars
      play in assigned seats.
    force_contest: an assigned claim equal to the other side's claim is replaced by another answer
      (self-play practice); False keeps it (a liar's claim that M's own claim equals is a
      concession, which evaluation counts).
    opening: None, or (even, odd) players of the opening moves (the claims and the root's
      supports, ``rollout_start``) in place of ``even`` and ``odd``; they must play those moves as
      ``even`` and ``odd`` would (e.g. ``players.Copies``, which computes a deterministic player's
      moves once for games tiled over the same questions). Stopper and judge are unchanged.
  Returns:
    (final GameState, Transcript).

  The same game in three pieces (``rollout_start``, ``rollout_round`` for r = 1 ..
  num_rounds - 1, ``rollout_finish``) can be driven from a host loop (benchmarks/rollout.py
  compares that with this on-device loop); the results are identical.
  """
  stopper, judge = _referees(even, stopper, judge)
  players = dict(stopper=stopper, judge=judge)
  first_even, first_odd = (even, odd) if opening is None else opening
  carry = rollout_start(task, first_even, first_odd, questions, rng, config, assigned=assigned,
                        force_contest=force_contest, **players)
  if config.num_rounds >= 2:
    body = lambda c, r: (rollout_round(task, even, odd, c, r, rng, config, **players), None)
    carry, _ = game_lib.masked_loop(body, carry, 1, config.num_rounds,
                                    lambda c: c[0].done.all(), early_exit=config.early_exit,
                                    outputs=False)
  return rollout_finish(task, even, odd, carry, rng, config, **players)


def rollout_start(task: Task, even, odd, questions: jax.Array, rng: jax.Array,
                  config: DebateConfig, *, stopper=None, judge=None,
                  assigned: jax.Array | None = None,
                  force_contest: bool = True) -> tuple[GameState, Transcript]:
  """The claims and the root's supports (round 0): the (GameState, Transcript) carry that
  ``rollout_round`` advances. Arguments as in ``rollout``."""
  chex.assert_rank(questions, 2)
  chex.assert_type(questions, jnp.int32)
  if assigned is not None:
    chex.assert_shape(assigned, (questions.shape[0],))
  game = _Rollout(task, even, odd, config, *_referees(even, stopper, judge))
  state, transcript = game.claims(questions, jax.random.fold_in(rng, 0), assigned, force_contest)
  if config.num_rounds >= 1:
    state, transcript = game.supports(state, transcript, 0, jax.random.fold_in(rng, 1_000_000))
  return state, transcript


def rollout_round(task: Task, even, odd, carry: tuple[GameState, Transcript], r, rng: jax.Array,
                  config: DebateConfig, *, stopper=None,
                  judge=None) -> tuple[GameState, Transcript]:
  """Round ``r`` (int or int32[], 1 <= r < num_rounds): every running game moves to the disputed
  subquestion and argues it; finished games stay frozen. ``rng``: the rollout's key."""
  game = _Rollout(task, even, odd, config, *_referees(even, stopper, judge))
  state, transcript = carry
  arrive_rng, support_rng = jax.random.split(jax.random.fold_in(rng, r))
  state, transcript = game.arrive(state, transcript, r, arrive_rng)
  return game.supports(state, transcript, r, support_rng)


def rollout_finish(task: Task, even, odd, carry: tuple[GameState, Transcript], rng: jax.Array,
                   config: DebateConfig, *, stopper=None,
                   judge=None) -> tuple[GameState, Transcript]:
  """The amplified verdict of debates stopped by force or T_MAX, and the stop's hindsight labels:
  the final (GameState, Transcript). ``rng``: the rollout's key."""
  stopper, judge = _referees(even, stopper, judge)
  game = _Rollout(task, even, odd, config, stopper, judge)
  state, transcript = carry
  batch = state.done.shape[0]
  final_judge = _empty_computation(task, (batch,))
  if config.contested:
    pending = ((state.reason == T_MAX) | (state.reason == FORCED)) & (state.num_args >= 2)
    # Only where some game stopped by force or T_MAX with no verdict yet (often none: every game
    # conceded, was caught or reached a leaf); under vmap both branches run.
    judge_rng = jax.random.fold_in(rng, 2_000_000)
    judged = lambda: game.amplify(judge, state.node, judge_rng)
    zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(judged))
    amp = jax.lax.cond((pending & ~state.judged).any(), judged, zeros)
    # A node the judge already decided for the learned stop keeps that verdict (H counted once).
    final_judge = Computation.of(amp, pending & ~state.judged)
    state = _count(state, "verdicts", final_judge.human_calls())
    verdict = jnp.where(state.judged, state.verdict, game.judge_verdict(amp, state.claims))
    state = state.replace(winner=jnp.where(pending, verdict, state.winner).astype(jnp.int32))
  labelled = transcript.stop_asked & ~transcript.stop_fired
  transcript = transcript.replace(
      final_node=state.node, final_judge=final_judge, stop_labelled=labelled,
      stop_label=labelled & (transcript.stop_verdict == state.winner[:, None]))
  return state, transcript


def _referees(even, stopper, judge):
  """(stopper, judge), each ``even`` where not given."""
  return (even if stopper is None else stopper), (even if judge is None else judge)


def metrics(state: GameState, transcript: Transcript, t_max: int) -> dict[str, jax.Array]:
  """Win rates by side, stop reasons, debate-length histogram, human calls by kind (per debate)."""
  batch = state.winner.shape[0]
  out = {
      "win/even": (state.winner == EVEN_WINS).mean(),
      "win/odd": (state.winner == ODD_WINS).mean(),
      "win/draw": (state.winner == DRAW).mean(),
      "debate/mean_length": state.num_args.mean(),
      "debate/length_hist": jnp.bincount(state.num_args, length=t_max + 1),
      "debate/assigned": transcript.assigned.any(-1).mean(),
      "human_calls": state.human_calls,
      "human_calls/per_debate": state.human_calls / batch,
  }
  for kind in CALL_KINDS:
    out[f"human_calls/{kind}"] = state.calls[kind] / batch
  for i, name in enumerate(REASONS):
    out[f"stop/{name}"] = (state.reason == i).mean()
  asked = transcript.stop_asked.sum()
  out["stop/asked_fired"] = transcript.stop_fired.sum() / jnp.maximum(asked, 1)
  out["debate/leaf_fooled"] = transcript.leaf_fooled.mean()
  return out
