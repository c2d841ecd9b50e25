"""The debate rollout over H's decomposition tree (DESIGN.md section 3), for a batch of games.

Turns (one argument each; ``t`` counts arguments):
  t = 0  even CLAIM      Amp′(H, even)(root): the first argument *is* the amplified answer
  t = 1  odd COUNTER     odd's answer to the root, knowing even's claim; the same answer concedes
  t = 2, 4, ...  even SUPPORT    answers to H's subquestions of the node; H checks that they
                                 recombine to even's claim (inconsistent: even loses at once)
  t = 3, 5, ...  odd CHALLENGE   an alternative support; the first valid row that differs is the
                                 challenge (none differs: odd accepts) and its subquestion becomes
                                 the node, with both sides' answers to it as their new claims;
                                 at a leaf H decides
After every argument the debate may stop: ``force_stop_after`` arguments (a relaxation knob), the
learned stop (the stopper's sampled answer to STOP(n, claims) is YES), or ``t_max`` arguments.

Outcomes (winner 0 = even, 1 = odd, 2 = draw), by stop reason:
  CONCEDE       odd repeats even's claim: draw (both sides agree; nothing to reward)
  ACCEPT        odd accepts every supported subanswer: even wins (H checked the support)
  INCONSISTENT  even's support does not recombine to its claim: odd wins
  LEAF          the node is a leaf: H's direct answer decides (neither claim matches: draw)
  T_MAX, LEARNED_STOP, FORCED  the amplified judge Amp′(H, judge)(node) decides: the side whose
                claim matches it wins, neither: draw. A debate stopped before odd argued is a draw
                (no contest), so ``force_stop_after=1`` gives one argument and zero reward.

The rollout is ``lax.scan`` over rounds (one SUPPORT + one CHALLENGE) with a per-game ``done`` mask:
finished games are frozen and their later turns are inactive (``Transcript.active`` False, which the
losses use to give them zero weight). ``early_exit=True`` runs the same round body in a
``lax.while_loop`` that stops when every game is done; transcripts are identical (each turn's key is
``fold_in(rng, t)``, and masked rounds change nothing).
"""

from __future__ import annotations

import dataclasses

import chex
import flax.struct
import jax
import jax.numpy as jnp

from amp_debate.procedure import protocol
from amp_debate.procedure.amplify import amplify
from amp_debate.tasks.base import Task
from amp_debate.tasks.tokenizer import PAD

# Turn kinds and stop reasons.
CLAIM, COUNTER, SUPPORT, CHALLENGE = 0, 1, 2, 3
REASONS = ("running", "concede", "accept", "inconsistent", "leaf", "t_max", "learned_stop", "forced")
RUNNING, CONCEDE, ACCEPT, INCONSISTENT, LEAF, T_MAX, LEARNED_STOP, FORCED = range(len(REASONS))
EVEN_WINS, ODD_WINS, DRAW = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class DebateConfig:
  """Static rollout options.

  Attributes:
    t_max: maximum number of arguments per debate (>= 1).
    call_prob: probability of calling H in Amp′ (the claim and the amplified verdict).
    confidence_threshold: also call H where the debater's confidence in its own answer,
      exp(sum of its log-probs), is below this (None: the Bernoulli rule alone).
    learned_stop: ask the stopper STOP(n, claims) after every argument.
    force_stop_after: stop after this many arguments (None: never). 1 = pure amplification.
    early_exit: lax.while_loop over rounds (exits when all games are done) instead of lax.scan.
  """

  t_max: int = 12
  call_prob: float = 1.0
  confidence_threshold: float | None = None
  learned_stop: bool = True
  force_stop_after: int | None = None
  early_exit: bool = False

  def __post_init__(self):
    if isinstance(self.t_max, bool) or not isinstance(self.t_max, int) or self.t_max < 1:
      raise ValueError(f"debate: t_max must be an integer >= 1, got {self.t_max!r}")
    if not 0.0 <= self.call_prob <= 1.0:
      raise ValueError(f"debate: call_prob must be in [0, 1], got {self.call_prob!r}")
    if self.confidence_threshold is not None and not 0.0 <= self.confidence_threshold <= 1.0:
      raise ValueError(f"debate: confidence_threshold must be None or in [0, 1], "
                       f"got {self.confidence_threshold!r}")
    if self.force_stop_after is not None and (
        not isinstance(self.force_stop_after, int) or self.force_stop_after < 1):
      raise ValueError(f"debate: force_stop_after must be None or an integer >= 1, "
                       f"got {self.force_stop_after!r}")

  @property
  def num_rounds(self) -> int:
    """SUPPORT + CHALLENGE rounds that fit after the first two arguments."""
    return max(0, -(-(self.t_max - 2) // 2))


@flax.struct.dataclass
class GameState:
  """Per-game state (B games).

  Attributes:
    node: int32[B, Lq] the question under debate.
    claim_even, claim_odd: int32[B, La] each side's answer to ``node``.
    support: int32[B, S*La] even's latest support.
    done: bool[B]; winner: int32[B] (0 even, 1 odd, 2 draw); reason: int32[B] (index in REASONS).
    num_args: int32[B] arguments made so far.
    human_calls: int32[] H calls so far (Amp′ calls, support checks, leaf verdicts).
  """

  node: jax.Array
  claim_even: jax.Array
  claim_odd: jax.Array
  support: jax.Array
  done: jax.Array
  winner: jax.Array
  reason: jax.Array
  num_args: jax.Array
  human_calls: jax.Array


@flax.struct.dataclass
class Transcript:
  """Every turn of every game (T = t_max turns; inactive turns are zeros/PAD).

  Attributes:
    prompts: int32[B, T, Lp] the protocol question each argument answered.
    tokens: int32[B, T, S*La] the argument (claims/counters use the first La tokens).
    token_mask: bool[B, T, S*La] real argument tokens (False on inactive turns).
    log_probs: float32[B, T, S*La] the behaviour policy's log-probs at sampling time; for the claim
      at t = 0, 0 where H was called (the claim is then H's recombination, not a sample). The step
      recomputes M_target's log-probs of every argument by teacher forcing for importance ratios.
    nodes: int32[B, T, Lq] the node under debate.
    side: int32[B, T] 0 even, 1 odd.  kind: int32[B, T] CLAIM/COUNTER/SUPPORT/CHALLENGE.
    active: bool[B, T] the turn happened (its game was not done before it).
    stop: bool[B, T] the learned stop fired after this argument.
  """

  prompts: jax.Array
  tokens: jax.Array
  token_mask: jax.Array
  log_probs: jax.Array
  nodes: jax.Array
  side: jax.Array
  kind: jax.Array
  active: jax.Array
  stop: jax.Array


def _empty_transcript(task: Task, batch: int, t_max: int) -> Transcript:
  arg_len = protocol.support_len(task)
  zeros = lambda *shape, dtype=jnp.int32: jnp.zeros((batch, t_max) + shape, dtype)
  return Transcript(
      prompts=zeros(protocol.prompt_len(task)), tokens=zeros(arg_len),
      token_mask=zeros(arg_len, dtype=bool), log_probs=zeros(arg_len, dtype=jnp.float32),
      nodes=zeros(task.question_len), side=zeros(), kind=zeros(), active=zeros(dtype=bool),
      stop=zeros(dtype=bool))


def _record(transcript: Transcript, t, active, *, prompts, tokens, log_probs, nodes, side, kind):
  """Writes turn t (traced) for the active games; others keep what they had (t is clamped)."""
  arg_len = transcript.tokens.shape[-1]
  length = tokens.shape[-1]
  pad = lambda x, v: jnp.pad(x, ((0, 0), (0, arg_len - length)), constant_values=v)
  batch = active.shape[0]
  new = dict(
      prompts=prompts, tokens=pad(tokens, PAD), log_probs=pad(log_probs.astype(jnp.float32), 0.0),
      token_mask=pad(jnp.ones((batch, length), bool), False) & active[:, None], nodes=nodes,
      side=jnp.full((batch,), side, jnp.int32), kind=jnp.full((batch,), kind, jnp.int32),
      active=active, stop=jnp.zeros((batch,), bool))
  index = jnp.clip(t, 0, transcript.active.shape[1] - 1)
  updates = {}
  for name, value in new.items():
    field = getattr(transcript, name)
    old = jax.lax.dynamic_index_in_dim(field, index, axis=1, keepdims=False)
    keep = active.reshape((batch,) + (1,) * (value.ndim - 1))
    value = jnp.where(keep, value.astype(field.dtype), old)
    updates[name] = jax.lax.dynamic_update_index_in_dim(field, value, index, axis=1)
  return transcript.replace(**updates)


def _finish(state: GameState, mask, winner, reason) -> GameState:
  """Ends the games in ``mask`` that are still running with this winner and reason."""
  mask = mask & ~state.done
  return state.replace(done=state.done | mask, winner=jnp.where(mask, winner, state.winner),
                       reason=jnp.where(mask, reason, state.reason))


def _after_argument(task, config, stopper, state, transcript, t, active, rng):
  """Counts the argument, then applies the forced, learned and T_max stops to running games."""
  state = state.replace(num_args=state.num_args + active.astype(jnp.int32))
  live = active & ~state.done
  if config.force_stop_after is not None:
    state = _finish(state, live & (state.num_args >= config.force_stop_after), DRAW, FORCED)
  if config.learned_stop:
    move = stopper.stop(state.node, state.claim_even, state.claim_odd, rng)
    fired = live & ~state.done & (move.tokens[:, 0] == protocol.YES)
    state = _finish(state, fired, DRAW, LEARNED_STOP)
    index = jnp.clip(t, 0, transcript.stop.shape[1] - 1)
    stop = jax.lax.dynamic_update_index_in_dim(transcript.stop, fired, index, axis=1)
    transcript = transcript.replace(stop=stop)
  state = _finish(state, live & (state.num_args >= config.t_max), DRAW, T_MAX)
  return state, transcript


def _round(task, config, even, odd, stopper, rng, carry, r):
  """One SUPPORT (even) + CHALLENGE (odd) round; r may be traced."""
  state, transcript = carry
  vmap = lambda f: jax.vmap(lambda *a: f(task, *a))

  # SUPPORT: even answers H's subquestions of the node; H checks the recombination.
  t = 2 + 2 * r
  move_rng, stop_rng = jax.random.split(jax.random.fold_in(rng, t))
  active = ~state.done
  move = even.support(state.node, state.claim_even, move_rng)
  prompts = vmap(protocol.support_prompt)(state.node, state.claim_even)
  transcript = _record(transcript, t, active, prompts=prompts, tokens=move.tokens,
                       log_probs=move.log_probs, nodes=state.node, side=0, kind=SUPPORT)
  consistent = vmap(protocol.check_support)(state.node, state.claim_even, move.tokens)
  state = state.replace(support=jnp.where(active[:, None], move.tokens, state.support),
                        human_calls=state.human_calls + active.sum())
  state = _finish(state, active & ~consistent, ODD_WINS, INCONSISTENT)
  state, transcript = _after_argument(task, config, stopper, state, transcript, t, active, stop_rng)

  # CHALLENGE: odd disputes the first differing subanswer, or accepts; descend to that subquestion.
  t = 3 + 2 * r
  move_rng, stop_rng = jax.random.split(jax.random.fold_in(rng, t))
  active = ~state.done
  move = odd.challenge(state.node, state.claim_even, state.support, move_rng)
  prompts = vmap(protocol.challenge_prompt)(state.node, state.claim_even, state.support)
  transcript = _record(transcript, t, active, prompts=prompts, tokens=move.tokens,
                       log_probs=move.log_probs, nodes=state.node, side=1, kind=CHALLENGE)
  index, accepted = vmap(protocol.first_challenge)(state.node, state.support, move.tokens)
  state = _finish(state, active & accepted, EVEN_WINS, ACCEPT)
  node, claim_even, claim_odd = vmap(protocol.descend)(state.node, state.support, move.tokens, index)
  moved = active & ~accepted
  keep = lambda new, old: jnp.where(moved.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
  state = state.replace(node=keep(node, state.node), claim_even=keep(claim_even, state.claim_even),
                        claim_odd=keep(claim_odd, state.claim_odd))
  at_leaf = moved & task.batch_is_leaf(state.node)
  verdict = vmap(protocol.leaf_verdict)(state.node, state.claim_even, state.claim_odd)
  state = _finish(state, at_leaf, verdict, LEAF)
  state = state.replace(human_calls=state.human_calls + at_leaf.sum())
  state, transcript = _after_argument(task, config, stopper, state, transcript, t, active, stop_rng)
  return state, transcript


def rollout(task: Task, even, odd, questions: jax.Array, rng: jax.Array, config: DebateConfig, *,
            stopper=None, judge=None) -> tuple[GameState, Transcript]:
  """Plays B debates on ``questions`` (int32[B, Lq]).

  Args:
    task: the task (H).
    even, odd: debaters (``players`` interface); in self-play both are M_target.
    questions: int32[B, Lq] root questions.
    rng: PRNG key.
    config: DebateConfig (static).
    stopper: answers STOP (default: ``even``).  judge: answers for the amplified verdict (default:
      ``even``), i.e. Amp′(H, judge).
  Returns:
    (final GameState, Transcript).
  """
  chex.assert_rank(questions, 2)
  chex.assert_type(questions, jnp.int32)
  stopper = even if stopper is None else stopper
  judge = even if judge is None else judge
  batch = questions.shape[0]
  transcript = _empty_transcript(task, batch, config.t_max)
  vmap = lambda f: jax.vmap(lambda *a: f(task, *a))

  def answer_fn(player):  # M for Amp′: answers with their log-probs (for the confidence rule)
    def answer(q, key):
      move = player.answer(q, key)
      return move.tokens, move.log_probs
    return answer

  def amplified(player, nodes, key):
    return amplify(task, answer_fn(player), nodes, key, call_prob=config.call_prob,
                   confidence_threshold=config.confidence_threshold)

  # t = 0: even's claim is Amp′(H, even)(root).
  claim_rng, stop_rng = jax.random.split(jax.random.fold_in(rng, 0))
  amp = amplified(even, questions, claim_rng)
  everyone = jnp.ones((batch,), bool)
  # Where H was called the claim is H's recombination, which even did not sample: log-prob 0.
  claim_log_probs = jnp.where(amp.called[:, None], 0.0, amp.direct_log_probs)
  state = GameState(
      node=questions, claim_even=amp.answers, claim_odd=jnp.full_like(amp.answers, PAD),
      support=jnp.full((batch, protocol.support_len(task)), PAD, jnp.int32),
      done=~everyone, winner=jnp.full((batch,), DRAW, jnp.int32),
      reason=jnp.full((batch,), RUNNING, jnp.int32), num_args=jnp.zeros((batch,), jnp.int32),
      human_calls=amp.human_calls)
  transcript = _record(transcript, 0, everyone, prompts=vmap(protocol.answer_prompt)(questions),
                       tokens=amp.answers, log_probs=claim_log_probs, nodes=questions, side=0,
                       kind=CLAIM)
  state, transcript = _after_argument(task, config, stopper, state, transcript, 0, everyone, stop_rng)

  # t = 1: odd counter-claims or concedes.
  if config.t_max >= 2:
    move_rng, stop_rng = jax.random.split(jax.random.fold_in(rng, 1))
    active = ~state.done
    move = odd.counter(questions, state.claim_even, move_rng)
    transcript = _record(
        transcript, 1, active, prompts=vmap(protocol.counter_prompt)(questions, state.claim_even),
        tokens=move.tokens, log_probs=move.log_probs, nodes=questions, side=1, kind=COUNTER)
    state = state.replace(claim_odd=jnp.where(active[:, None], move.tokens, state.claim_odd))
    state = _finish(state, active & (move.tokens == state.claim_even).all(-1), DRAW, CONCEDE)
    # A leaf root needs no support: H decides between the two claims directly.
    at_leaf = active & ~state.done & task.batch_is_leaf(questions)
    verdict = vmap(protocol.leaf_verdict)(questions, state.claim_even, state.claim_odd)
    state = _finish(state, at_leaf, verdict, LEAF)
    state = state.replace(human_calls=state.human_calls + at_leaf.sum())
    state, transcript = _after_argument(task, config, stopper, state, transcript, 1, active,
                                        stop_rng)

  # Rounds of SUPPORT + CHALLENGE.
  body = lambda carry, r: _round(task, config, even, odd, stopper, rng, carry, r)
  carry = (state, transcript)
  if config.early_exit:
    def cond(c):
      r, (s, _) = c
      return (r < config.num_rounds) & ~s.done.all()
    _, carry = jax.lax.while_loop(cond, lambda c: (c[0] + 1, body(c[1], c[0])), (0, carry))
  else:
    carry, _ = jax.lax.scan(lambda c, r: (body(c, r), None), carry, jnp.arange(config.num_rounds))
  state, transcript = carry

  # Amplified verdict for debates stopped early (T_MAX, LEARNED_STOP, FORCED).
  pending = (state.reason == T_MAX) | (state.reason == LEARNED_STOP) | (state.reason == FORCED)
  verdict_rng = jax.random.fold_in(rng, config.t_max + 1)
  amp = amplified(judge, state.node, verdict_rng)
  even_ok = (amp.answers == state.claim_even).all(-1)
  odd_ok = (amp.answers == state.claim_odd).all(-1)
  amplified_winner = jnp.where(even_ok, EVEN_WINS, jnp.where(odd_ok, ODD_WINS, DRAW))
  amplified_winner = jnp.where(state.num_args >= 2, amplified_winner, DRAW)  # no contest
  state = state.replace(winner=jnp.where(pending, amplified_winner, state.winner).astype(jnp.int32),
                        human_calls=state.human_calls + (amp.called & pending).sum())
  return state, transcript


def metrics(state: GameState, transcript: Transcript, t_max: int) -> dict[str, jax.Array]:
  """Win rates by side, stop reasons, debate-length histogram and human calls (scalars/arrays)."""
  batch = state.winner.shape[0]
  out = {
      "win/even": (state.winner == EVEN_WINS).mean(),
      "win/odd": (state.winner == ODD_WINS).mean(),
      "win/draw": (state.winner == DRAW).mean(),
      "debate/mean_length": state.num_args.mean(),
      "debate/length_hist": jnp.bincount(state.num_args, length=t_max + 1),
      "human_calls": state.human_calls,
      "human_calls/per_debate": state.human_calls / batch,
  }
  for i, name in enumerate(REASONS):
    out[f"stop/{name}"] = (state.reason == i).mean()
  return out
