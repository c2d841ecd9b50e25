"""What the losses learn from a batch of debates: policy-gradient rows and distillation targets.

Both are read off the rollout's ``Transcript`` (no re-run of any computation), as flat *rows*: a
protocol prompt (int32[Lp]), a token row padded to L = S*La (int32[L]) and a mask (bool[L]).

Policy-gradient rows (``policy_rows``) are exactly the tokens M_target sampled, laid out
[B, R, 2, K] (game, node, side, K = S + 2 kinds): k = 0 M's direct answer to ANSWER(n) where H was
not called (it *is* the side's claim, or its check of a committed claim); k = 1..S its answers to
the subquestions H posed where H was called (the trace; H's recombination carries no gradient);
k = S + 1 its direct answer to SUPPORT(n, claim) where no trace supplied the support. Each row
belongs to one *argument* of its side: the claim (node 0, k <= S), the root support (node 0,
k = S + 1) and the support on node r >= 1 (with the computation behind it) — A = R + 1 arguments
per side.

Credit (``argument_rewards``): zero-sum per game, +1 spread evenly over the winner's arguments that
carry sampled tokens, -1 over the loser's, 0 in a draw; within an argument every token weighs
1 / (its argument's token count), so an argument counts once whatever its length. The shaped reward
compares each row with the amplified target of its question (``policy_targets``, ``row_mismatch``).

The learned stop's sampled decisions (``stop_rows``, [B, R]) are policy rows too when the step
credits them (``StepConfig.stop_cost``), with their own reward (``stop_rewards``): the stop is not
a side of the zero-sum game.

Distillation targets (``distill_rows``) come from the debate's own computations, each human call
used once: ANSWER(n) -> the computation's answer and SUPPORT(n, answer) -> its subanswers wherever
H was called in a side's or the judge's Amp′ of n; ANSWER(leaf) -> H's answer at a leaf reached by
descent; STOP(n, claims) -> H's hindsight label where the learned stop was asked and did not fire;
optionally (``subquestion_targets``) ANSWER(q′) -> a fresh Amp′(H, M_target)(q′) for every
subquestion q′ H posed in those computations. A distillation row whose question (the node, or q′)
lies in the evaluation part of the task's space (``tasks.base.is_eval_question``) is dropped: the
root questions come from the training part, but H's subquestions and the nodes a descent reaches can
be any question of a lower level, and distilling H's answers (at a leaf, the truth) on them would
train M on questions the eval sets hold out (DESIGN.md section 2). For the same reason a SUPPORT
row's loss skips the subanswers to evaluation-part subquestions, and the policy gradient skips
every sampled answer to an evaluation-part question (``policy_rows(drop_eval_part=True)``).
"""

from __future__ import annotations

import chex
import flax.struct
import jax
import jax.numpy as jnp

from amp_debate.procedure import debate, protocol
from amp_debate.procedure.amplify import AmpOutput
from amp_debate.tasks.base import Task, in_part
from amp_debate.tasks.tokenizer import PAD


@flax.struct.dataclass
class Rows:
  """Flat rows of (prompt, tokens) with masks. N rows (any leading shape), L = S*La.

  Attributes:
    prompts: int32[..., Lp]; questions: int32[..., Lq] the question each row answers (the node for
      SUPPORT/STOP rows); tokens: int32[..., L]; mask: bool[..., L] tokens that count;
    log_probs: float32[..., L] log-probs at sampling time (policy rows; zeros for targets).
  """

  prompts: jax.Array
  questions: jax.Array
  tokens: jax.Array
  mask: jax.Array
  log_probs: jax.Array

  @property
  def active(self) -> jax.Array:
    """bool[...]: rows with at least one token."""
    return self.mask.any(-1)

  def flatten(self) -> "Rows":
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[-1:]), self)


def _pad_to(x, length, value):
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, length - x.shape[-1])], constant_values=value)


def _rows(task: Task, prompts, questions, tokens, active, log_probs=None) -> Rows:
  """Rows from prompts [..., Lp], questions [..., Lq], tokens [..., l <= L], active bool[...]."""
  length = protocol.support_len(task)
  mask = _pad_to(jnp.broadcast_to(active[..., None], tokens.shape), length, False)
  log_probs = jnp.zeros(tokens.shape, jnp.float32) if log_probs is None else log_probs
  return Rows(prompts=prompts, questions=questions,
              tokens=jnp.where(mask, _pad_to(tokens.astype(jnp.int32), length, PAD), PAD),
              mask=mask,
              log_probs=jnp.where(mask, _pad_to(log_probs.astype(jnp.float32), length, 0.0), 0.0))


def _training_part_only(rows: Rows) -> Rows:
  """``rows`` with every row whose question lies in the evaluation part masked out."""
  keep = in_part(rows.questions, "train")[..., None]
  return rows.replace(mask=rows.mask & keep, tokens=jnp.where(keep, rows.tokens, PAD),
                      log_probs=jnp.where(keep, rows.log_probs, 0.0))


def _training_part_subanswers(task: Task, rows: Rows, subquestions: jax.Array) -> Rows:
  """SUPPORT ``rows`` [...] (tokens: S subanswers of La tokens) with the loss masked on every
  subanswer whose subquestion (int32[..., S, Lq]) lies in the evaluation part. Only the mask
  changes: the tokens stay, so the later subanswers are still scored in their real context.
  (Subquestions marked invalid by the task carry no question; their rows are kept as they are.)"""
  keep = jnp.repeat(in_part(subquestions, "train"), task.answer_len, axis=-1)  # [..., S * La]
  return rows.replace(mask=rows.mask & keep, log_probs=jnp.where(keep, rows.log_probs, 0.0))


def _posed_from_support(task: Task, nodes: jax.Array, supports: jax.Array) -> jax.Array:
  """int32[..., S, Lq]: the subquestions H poses from each support's own answers
  (``protocol.subquestions_of``) for nodes [..., Lq] and supports [..., S * La]."""
  return _prompts(lambda t, n, s: protocol.subquestions_of(t, n, s)[0], task, nodes, supports)


def _prompts(fn, task, *args):
  """Applies a per-example prompt builder over any leading shape."""
  lead = args[0].shape[:-1]
  flat = [a.reshape((-1,) + a.shape[len(lead):]) for a in args]
  out = jax.vmap(lambda *a: fn(task, *a))(*flat)
  return out.reshape(lead + out.shape[1:])


def concat(rows: list[Rows], axis: int = 0) -> Rows:
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis), *rows)


# ---- policy gradient ----------------------------------------------------------------------------
def num_arguments(num_nodes: int) -> int:
  """A: arguments per side (claim, root support, one support per later node)."""
  return num_nodes + 1


def _argument_one_hot(num_nodes: int, num_kinds: int, dtype) -> jax.Array:
  """[R, K, A]: which argument each policy row kind at each node belongs to."""
  return jax.nn.one_hot(row_arguments(num_nodes, num_kinds - 2), num_arguments(num_nodes),
                        dtype=dtype)


def row_arguments(num_nodes: int, num_subquestions: int) -> jax.Array:
  """int32[R, K]: the argument index (< A) of each policy row kind at each node."""
  k = num_subquestions + 2
  r = jnp.arange(num_nodes)[:, None]
  kinds = jnp.arange(k)[None, :]
  return jnp.where(r == 0, jnp.where(kinds == k - 1, 1, 0), r + 1).astype(jnp.int32)


def policy_rows(task: Task, transcript: debate.Transcript, drop_eval_part: bool = True) -> Rows:
  """The tokens M_target sampled in the debates: Rows [B, R, 2, K] (module docstring).

  With ``drop_eval_part`` (the trainer's setting), no policy gradient reaches an answer to an
  evaluation-part question: rows whose question (the node, or H's subquestion) lies in the
  evaluation part are masked out, and in a support the subanswers to evaluation-part subquestions
  (their tokens stay as context). ``False`` gives every sampled token (what the trainer counts to
  log how many it dropped)."""
  comps = transcript.comps
  s = task.num_subquestions
  nodes2 = jnp.broadcast_to(transcript.nodes[:, :, None], comps.active.shape + (
      task.question_len,))  # [B, R, 2, Lq]
  direct = _rows(task, _prompts(protocol.answer_prompt, task, nodes2), nodes2, comps.direct,
                 comps.active & ~comps.called, comps.direct_log_probs)
  sub = _rows(task, _prompts(protocol.answer_prompt, task, comps.subquestions),
              comps.subquestions, comps.subanswers, comps.called[..., None] & comps.sub_valid,
              comps.sub_log_probs)
  support = _rows(task, _prompts(protocol.support_prompt, task, nodes2, transcript.claims), nodes2,
                  transcript.support_tokens, transcript.support_sampled,
                  transcript.support_log_probs)
  chosen = ~_pad_to(transcript.support_fixed, support.mask.shape[-1], False)  # set from the claim
  support = support.replace(mask=support.mask & chosen,
                            log_probs=jnp.where(chosen, support.log_probs, 0.0))
  out = concat([jax.tree.map(lambda x: x[..., None, :], direct), sub,
              jax.tree.map(lambda x: x[..., None, :], support)], axis=3)
  chex.assert_shape(out.tokens, transcript.claims.shape[:3] + (s + 2, protocol.support_len(task)))
  return training_part_policy(task, out) if drop_eval_part else out


def with_assigned_claims(task: Task, rows: Rows, transcript: debate.Transcript,
                         log_probs: jax.Array) -> Rows:
  """Policy Rows [B, R, 2, K] with every assigned root claim as its side's claim row (node 0,
  k = 0, empty otherwise: an assigned side computes nothing), scored with ``log_probs``
  float32[B, 2, La], M_target's log-probs of the claims as its direct answers
  (``ModelDebater.score_answers``). The claim then shares its side's game outcome like a claim M
  sampled (``argument_rewards``), so an assigned game teaches the claim too: a false assigned claim
  that loses is pushed down, whatever M's own claim was. Assigned claims are M_target's samples or,
  where equal to the other side's claim, another answer: the row is an off-policy sample weighed by
  M's own probability, like an explored claim."""
  chex.assert_shape(log_probs, transcript.claims.shape[:1] + (2, task.answer_len))
  assigned = transcript.assigned  # [B, 2]
  claim = _rows(task, rows.prompts[:, 0, :, 0], rows.questions[:, 0, :, 0],
                transcript.claims[:, 0], assigned, log_probs)  # [B, 2]
  claim = _training_part_only(claim)
  put = lambda field, new: field.at[:, 0, :, 0].set(
      jnp.where(assigned.reshape(assigned.shape + (1,) * (new.ndim - 2)), new,
                field[:, 0, :, 0]))
  return rows.replace(tokens=put(rows.tokens, claim.tokens), mask=put(rows.mask, claim.mask),
                      log_probs=put(rows.log_probs, claim.log_probs))


def only_seats(rows: Rows, seat: jax.Array) -> Rows:
  """Policy Rows [B, R, 2, K] with the other side's rows masked out in each game where ``seat``
  int32[B] is 0 or 1 (games against an opponent that is not M_target: only M's own samples get a
  policy gradient); games with seat −1 unchanged."""
  chex.assert_shape(seat, rows.mask.shape[:1])
  keep = (seat[:, None] < 0) | (seat[:, None] == jnp.arange(2)[None, :])  # [B, 2]
  keep = keep[:, None, :, None, None]
  return rows.replace(mask=rows.mask & keep, tokens=jnp.where(keep, rows.tokens, PAD),
                      log_probs=jnp.where(keep, rows.log_probs, 0.0))


def training_part_policy(task: Task, rows: Rows) -> Rows:
  """Policy Rows [B, R, 2, K] with no policy gradient on an answer to an evaluation-part question:
  rows whose question lies there are masked out, and in each support (kind K - 1) the subanswers
  to evaluation-part subquestions, posed from the support's own answers (tokens kept as context)."""
  rows = _training_part_only(rows)
  support = jax.tree.map(lambda x: x[..., -1, :], rows)
  support = _training_part_subanswers(
      task, support, _posed_from_support(task, support.questions, support.tokens))
  return rows.replace(mask=rows.mask.at[..., -1, :].set(support.mask),
                      log_probs=rows.log_probs.at[..., -1, :].set(support.log_probs))


def argument_rewards(winner: jax.Array, rows: Rows, num_nodes: int) -> tuple[jax.Array, jax.Array]:
  """Zero-sum per-argument rewards.

  Args:
    winner: int32[B] (0 even, 1 odd, 2 draw).
    rows: policy Rows [B, R, 2, K].
  Returns:
    (rewards float32[B, 2, A], has_tokens bool[B, 2, A]): +1/n over the winner's n arguments with
    sampled tokens, -1/m over the loser's m, 0 in draws and for arguments without tokens.
  """
  one_hot = _argument_one_hot(num_nodes, rows.mask.shape[3], jnp.bool_)
  has_tokens = (rows.active[..., None] & one_hot[None, :, None]).any((1, 3))  # [B, 2, A]
  count = has_tokens.sum(-1, keepdims=True)
  sign = side_outcomes(winner)[..., None]  # [B, 2, 1]
  rewards = jnp.where(has_tokens, sign / jnp.maximum(count, 1), 0.0).astype(jnp.float32)
  return rewards, has_tokens


def stop_rows(task: Task, transcript: debate.Transcript) -> Rows:
  """The learned stop's sampled decisions as policy Rows [B, R]: STOP(n, claims) -> the token
  M_target sampled there ([YES] stops) with its recorded log-prob, where the stop was asked.
  Decisions on evaluation-part nodes are masked out, as their hindsight labels are."""
  claims = transcript.claims
  prompts = _prompts(protocol.stop_prompt, task, transcript.nodes, claims[:, :, 0],
                     claims[:, :, 1])
  rows = _rows(task, prompts, transcript.nodes, transcript.stop_tokens[..., None],
               transcript.stop_asked, transcript.stop_log_probs[..., None])
  return _training_part_only(rows)


def stop_rewards(transcript: debate.Transcript, num_args: jax.Array,
                 cost: float | jax.Array) -> jax.Array:
  """float32[B, R]: the RL reward of each learned-stop decision (0 where none was asked).

  [YES] at node r: 0 (the debate ends there). Any other token (the debate goes on): 1 if going on
  changed the verdict (H's hindsight: stopping at r would have given another verdict than the one
  the debate reached, ``Transcript.stop_label`` false) minus ``cost`` per argument made after the
  decision (the stop at node r is asked once 2 + 2r arguments are in). So E[R | go on] −
  E[R | stop] = P(the verdict changes) − cost · E[arguments after]: the stop learns to fire where
  going on changes no verdict, from quantities pure debate has (H's leaf verdicts and the amplified
  judge's), no ground truth.

  Args:
    transcript: the debates (R nodes); num_args: int32[B] arguments each debate made in all.
    cost: per-argument cost >= 0.
  """
  chex.assert_rank(num_args, 1)
  nodes = transcript.stop_asked.shape[1]
  after = jnp.maximum(num_args[:, None] - (2 + 2 * jnp.arange(nodes))[None, :], 0)
  changed = transcript.stop_labelled & ~transcript.stop_label
  go_on = changed.astype(jnp.float32) - cost * after.astype(jnp.float32)
  return jnp.where(transcript.stop_labelled, go_on, 0.0).astype(jnp.float32)


def support_truth(task: Task, transcript: debate.Transcript,
                  per_row: bool = False) -> dict[str, jax.Array]:
  """Evaluation only (ground truth): how true the root supports M answered directly are. Each
  support row is checked against ``task.solve`` of the subquestion H poses from the support's own
  earlier rows. Returns {"debate/support_rows_true": float32[], the share of valid rows that are
  true, "debate/support_true": float32[], the share of supports whose valid rows all are}, over
  the root supports M sampled (0 when there are none). In pure debate a level-1 game is decided by
  the supports' rows, so this is what the root claims' credit rests on. ``per_row`` adds
  "debate/support_row<i>_true" for each row i < S (the share of valid row-i answers that are
  true)."""
  sampled = transcript.support_sampled[:, 0] & transcript.support_made[:, 0]  # [B, 2]
  nodes = jnp.broadcast_to(transcript.nodes[:, 0, None], sampled.shape + (task.question_len,))
  supports = transcript.support_tokens[:, 0]  # [B, 2, S*La]
  flat = jax.vmap(lambda n, sup: protocol.subquestions_of(task, n, sup))(
      nodes.reshape(-1, task.question_len), supports.reshape(-1, supports.shape[-1]))
  subs, valid, rows = jax.tree.map(lambda x: x.reshape(sampled.shape + x.shape[1:]), flat)
  truth = _prompts(lambda t, q: t.solve(q), task, subs)  # [B, 2, S, La]
  right = (truth == rows).all(-1) | ~valid  # [B, 2, S]
  counted = valid & sampled[..., None]
  rows_true = (right & counted).sum() / jnp.maximum(counted.sum(), 1)
  has_rows = sampled & valid.any(-1)
  all_true = (right.all(-1) & has_rows).sum() / jnp.maximum(has_rows.sum(), 1)
  out = {"debate/support_rows_true": rows_true.astype(jnp.float32),
         "debate/support_true": all_true.astype(jnp.float32)}
  if per_row:
    for i in range(task.num_subquestions):
      count = counted[..., i].sum()
      out[f"debate/support_row{i}_true"] = ((right[..., i] & counted[..., i]).sum() / jnp.maximum(
          count, 1)).astype(jnp.float32)
  return out


def claim_tested_games(game: debate.GameState) -> jax.Array:
  """bool[B]: games whose outcome tested the claims' truth rather than only a support's form:
  those decided at a leaf by H or by the amplified judge (a learned, T_MAX or forced stop), i.e.
  every decided game except the ones a failed consistency check ended (a support that does not
  recombine to its claim, or a side's own computation on a node disagreeing with what it
  committed to). Measured (issue 28): in pure debate at level 1, 98% of games ended by a support
  check, won by the side whose claim agreed with M's own support, whatever the truth (the true
  claim won 55% of the games where exactly one claim was true): crediting the claims there
  teaches M to agree with itself."""
  return (game.reason == debate.LEAF) | (game.reason == debate.T_MAX) | (
      game.reason == debate.LEARNED_STOP) | (game.reason == debate.FORCED)


def without_untested_claims(rows: Rows, num_nodes: int, tested: jax.Array) -> Rows:
  """Policy Rows [B, R, 2, K] with the claim rows (argument 0: the root's direct answer and its
  trace) masked out in the games where ``tested`` bool[B] is False, so the claims get no credit
  there and the outcome is spread over the side's other arguments (``argument_rewards``)."""
  chex.assert_shape(tested, rows.mask.shape[:1])
  claim = row_arguments(num_nodes, rows.mask.shape[3] - 2) == 0  # [R, K]
  drop = claim[None, :, None, :] & ~tested[:, None, None, None]  # [B, R, 1, K]
  keep = ~drop[..., None]
  return rows.replace(mask=rows.mask & keep, log_probs=jnp.where(keep, rows.log_probs, 0.0))


def side_outcomes(winner: jax.Array) -> jax.Array:
  """float32[B, 2]: each side's game outcome, +1 won, -1 lost, 0 draw, from winner int32[B]."""
  side = jnp.arange(2)[None, :]
  won = winner[:, None] == side
  return jnp.where(winner[:, None] == debate.DRAW, 0.0, jnp.where(won, 1.0, -1.0)).astype(
      jnp.float32)


def token_weights(rows: Rows, num_nodes: int) -> jax.Array:
  """float32[B, R, 2, K, L]: 1 / (tokens of the row's argument) on real tokens, else 0; summing to
  the number of arguments with tokens."""
  one_hot = _argument_one_hot(num_nodes, rows.mask.shape[3], jnp.float32)
  per_row = rows.mask.sum(-1).astype(jnp.float32)  # [B, R, 2, K]
  per_arg = jnp.einsum("brsk,rka->bsa", per_row, one_hot)
  row_count = jnp.einsum("bsa,rka->brsk", per_arg, one_hot)
  return jnp.where(rows.mask, 1.0 / jnp.maximum(row_count, 1.0)[..., None], 0.0)


def row_values(per_argument: jax.Array, num_nodes: int, num_subquestions: int) -> jax.Array:
  """float32[B, 2, A] -> float32[B, R, 2, K]: each row takes its argument's value."""
  index = row_arguments(num_nodes, num_subquestions)  # [R, K]
  return jnp.moveaxis(per_argument[:, :, index], 1, 2)


def row_mismatch(rows: Rows, targets: jax.Array, has_target: jax.Array) -> jax.Array:
  """float32[B, R, 2, K]: per policy row, the fraction of its sampled tokens that differ from the
  amplified target of its question (0 where the row has no target).

  Args:
    rows: policy Rows [B, R, 2, K]; targets int32[B, R, 2, K, L]; has_target bool[B, R, 2, K].
  """
  counted = rows.mask & has_target[..., None]
  wrong = (counted & (rows.tokens != targets)).sum(-1).astype(jnp.float32)
  total = counted.sum(-1).astype(jnp.float32)
  return jnp.where(total > 0, wrong / jnp.maximum(total, 1.0), 0.0)


def policy_targets(transcript: debate.Transcript, rows: Rows, sub_amp: AmpOutput | None = None,
                   sub_posed: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Amplified targets of the policy rows' questions, for the shaped reward (``row_mismatch``).

  Direct answers on node r: the other side's computation of node r where H was called;
  subanswers: the subquestion pass ``sub_amp`` over ``posed_subquestions`` flattened to
  [B*R*2*S] (none without it); supports: none.

  Args:
    transcript: the debates; rows: their policy Rows [B, R, 2, K].
    sub_amp: the Amp′ pass over the posed subquestions, or None; sub_posed: bool[B*R*2*S].
  Returns:
    (targets int32[B, R, 2, K, L], has_target bool[B, R, 2, K]).
  """
  comps = transcript.comps
  length = rows.tokens.shape[-1]
  pad = lambda x: _pad_to(x, length, PAD)
  other = comps.answer[:, :, ::-1]
  other_ok = (comps.active & comps.called)[:, :, ::-1]
  b, r, _, k, _ = rows.tokens.shape
  s = k - 2
  if sub_amp is None:
    sub_targets = jnp.zeros((b, r, 2, s, length), jnp.int32)
    sub_ok = jnp.zeros((b, r, 2, s), bool)
  else:
    sub_targets = pad(sub_amp.answers).reshape(b, r, 2, s, length)
    sub_ok = (sub_posed & sub_amp.called).reshape(b, r, 2, s)
  targets = jnp.concatenate([pad(other)[:, :, :, None], sub_targets,
                             jnp.zeros((b, r, 2, 1, length), jnp.int32)], axis=3)
  has = jnp.concatenate([other_ok[..., None], sub_ok, jnp.zeros((b, r, 2, 1), bool)], axis=3)
  return targets, has


# ---- distillation -------------------------------------------------------------------------------
def per_game(rows: Rows, num_games: int | None = None) -> Rows:
  """Rows [B, ...] (any leading shape after the game axis), or flat Rows [B * G] in game-major
  order with ``num_games`` = B, as Rows [B, G]."""
  return jax.tree.map(lambda x: x.reshape((num_games or x.shape[0], -1) + x.shape[-1:]), rows)


def distill_rows(task: Task, transcript: debate.Transcript, config: debate.DebateConfig,
                 by_game: bool = False, drop_eval_part: bool = True) -> Rows:
  """Distillation targets from the debate's own computations (no subquestion pass; see
  ``subquestion_targets``). ``config`` (static) leaves out the groups that cannot have targets
  (judges and stops without the learned stop, verdicts without a contest).

  Returns Rows [N, ...] flattened group by group (every game's ANSWER rows, then every game's
  SUPPORT rows, ...), or with ``by_game`` Rows [B, G], each game's rows together. Rows whose
  question lies in the evaluation part are masked out unless ``drop_eval_part`` is False (what the
  trainer counts to log how many it dropped)."""
  lq = task.question_len
  comps = transcript.comps
  used = comps.active & comps.called  # [B, R, 2]
  nodes2 = jnp.broadcast_to(transcript.nodes[:, :, None], used.shape + (lq,))
  rows = [
      # ANSWER(n) -> Amp(H, M)(n) of each side's computation where H was called.
      _rows(task, _prompts(protocol.answer_prompt, task, nodes2), nodes2, comps.answer, used),
      # SUPPORT(n, answer) -> the subanswers that recombine to it.
      _rows(task, _prompts(protocol.support_prompt, task, nodes2, comps.answer), nodes2,
            comps.subanswers.reshape(used.shape + (-1,)), used & ~comps.is_leaf),
  ]
  if config.learned_stop and config.contested:
    # The judge's Amp′ at each node where the stop was asked, and H's hindsight labels.
    judges = transcript.judges
    rows.append(_rows(task, _prompts(protocol.answer_prompt, task, transcript.nodes),
                      transcript.nodes, judges.answer, judges.active & judges.called))
    claims = transcript.claims
    stop_prompts = _prompts(protocol.stop_prompt, task, transcript.nodes, claims[:, :, 0],
                            claims[:, :, 1])
    label = jnp.where(transcript.stop_label, protocol.YES, protocol.NO)[..., None]
    rows.append(_rows(task, stop_prompts, transcript.nodes, label, transcript.stop_labelled))
  if config.contested:
    final = transcript.final_judge
    final_prompts = _prompts(protocol.answer_prompt, task, transcript.final_node)
    rows.append(_rows(task, final_prompts, transcript.final_node, final.answer,
                      final.active & final.called))
    rows.append(_rows(task, final_prompts, transcript.final_node,
                      task.batch_leaf_answer(transcript.final_node), transcript.leaf_reached))
  if drop_eval_part:
    rows = [_training_part_only(r) for r in rows]
    # SUPPORT(n, answer) lists H's subquestions' answers: none for an evaluation-part subquestion.
    rows[1] = _training_part_subanswers(task, rows[1], comps.subquestions)
  if by_game:
    return concat([per_game(r) for r in rows], axis=1)
  return concat([r.flatten() for r in rows], axis=0)


def posed_subquestions(transcript: debate.Transcript) -> tuple[jax.Array, jax.Array]:
  """(subquestions int32[B, R, 2, S, Lq], posed bool[B, R, 2, S]): subquestions H posed in the
  sides' computations."""
  comps = transcript.comps
  return comps.subquestions, comps.active[..., None] & comps.called[..., None] & comps.sub_valid


def subquestion_targets(task: Task, subquestions: jax.Array, amp: AmpOutput,
                        posed: jax.Array) -> Rows:
  """Rows [N] of ANSWER(q′) -> Amp′(H, M_target)(q′) for posed subquestions where H was called
  and q′ lies in the training part.

  Args:
    subquestions: int32[N, Lq]; amp: that Amp′ pass over them; posed: bool[N].
  """
  chex.assert_rank(subquestions, 2)
  return _training_part_only(_rows(task, _prompts(protocol.answer_prompt, task, subquestions),
                                  subquestions, amp.answers, posed & amp.called))
