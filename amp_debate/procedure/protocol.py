"""The debate protocol's token language: protocol questions (prompts) and H's checks on arguments.

Every argument in a debate is the output of an Amp′(H, M_target) computation or M_target's answer to
a protocol question, so one model plays every role. A protocol question is a header token
(tasks.tokenizer.PROTOCOL_TOKENS), the node question n and the claims it refers to; all prompts are
LEFT-padded with PAD to one length ``prompt_len(task)`` (the model's convention: the header is the
first real token, so PADs inside claims are ordinary tokens). With Lq = task.question_len,
La = task.answer_len, S = task.num_subquestions:

  ANSWER     [ANSWER] n                                   -> answer   int32[La] (a claim is Amp′ of it)
  SUPPORT    [SUPPORT] n [SEP] claim                      -> support  int32[S*La]: answers to H's
                                                             subquestions of n, in order
  STOP       [STOP] n [SEP] claim_even [SEP] claim_odd    -> [YES] stops the debate (learned stop)
  VERDICT    [VERDICT] n [SEP] claim_even [SEP] claim_odd -> [EVEN] | [ODD] | [DRAW] (transcript judge)
  REVIEW     [REVIEW] n [SEP] argument                    -> [YES] flags the argument as cheating
                                                             (the overseer, amp_debate.safety)

H's checks (pure, per node; vmap for batches): ``check_support`` poses the subquestions of n one
after another from the support's own answers, recombines them and compares with the claim (an
inconsistent supporter loses at once); ``first_dispute`` finds the first valid row where the two
sides' supports differ; ``descend`` gives the disputed subquestion and each side's answer to it.

The judge flaw (``DebateConfig.p_flaw``, the self-review study): an argument containing the token
EXPLOIT fools H's leaf check when the rollout's Bernoulli(p_flaw) draw says so
(``flawed_leaf_verdict``); using it is cheating.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from amp_debate.tasks.base import Task
from amp_debate.tasks.tokenizer import PAD, SEP, protocol_id  # noqa: F401 (re-exported)

ANSWER, SUPPORT = protocol_id("ANSWER"), protocol_id("SUPPORT")
STOP, VERDICT = protocol_id("STOP"), protocol_id("VERDICT")
YES, NO = protocol_id("YES"), protocol_id("NO")
EVEN, ODD, DRAW = protocol_id("EVEN"), protocol_id("ODD"), protocol_id("DRAW")
REVIEW, EXPLOIT = protocol_id("REVIEW"), protocol_id("EXPLOIT")


def support_len(task: Task) -> int:
  """S * La: length of a SUPPORT argument (the longest argument)."""
  return task.num_subquestions * task.answer_len


def prompt_len(task: Task) -> int:
  """Length of every protocol prompt (the longest, STOP/VERDICT, sets it): 3 + Lq + 2 La."""
  return 3 + task.question_len + 2 * task.answer_len


def _prompt(task: Task, *parts) -> jax.Array:
  """Concatenates int32 parts and left-pads with PAD to ``prompt_len(task)``."""
  body = jnp.concatenate([jnp.atleast_1d(jnp.asarray(p, jnp.int32)) for p in parts])
  pad = prompt_len(task) - body.shape[0]
  assert pad >= 0, "protocol prompt longer than prompt_len"
  return jnp.concatenate([jnp.full((pad,), PAD, jnp.int32), body])


def answer_prompt(task: Task, node):
  """ANSWER(n): int32[Lp]. node int32[Lq]."""
  return _prompt(task, ANSWER, node)


def support_prompt(task: Task, node, claim):
  """SUPPORT(n, claim): int32[Lp]. claim int32[La]."""
  return _prompt(task, SUPPORT, node, SEP, claim)


def stop_prompt(task: Task, node, claim_even, claim_odd):
  """STOP(n, claims): int32[Lp]; the answer [YES] stops the debate."""
  return _prompt(task, STOP, node, SEP, claim_even, SEP, claim_odd)


def verdict_prompt(task: Task, node, claim_even, claim_odd):
  """VERDICT(n, claims): int32[Lp]; answered by [EVEN], [ODD] or [DRAW]."""
  return _prompt(task, VERDICT, node, SEP, claim_even, SEP, claim_odd)


def review_prompt(task: Task, node, argument):
  """REVIEW(n, argument): int32[Lp]; the answer [YES] flags the argument (int32[La]) as cheating."""
  return _prompt(task, REVIEW, node, SEP, argument)


def is_exploit(argument) -> jax.Array:
  """bool[...]: does the argument (int32[..., L]) contain the EXPLOIT token?"""
  return (jnp.asarray(argument) == EXPLOIT).any(-1)


def verdict_side(token) -> jax.Array:
  """Verdict answer token -> 0 (even), 1 (odd) or 2 (draw; also for any other token)."""
  token = jnp.asarray(token, jnp.int32)
  return jnp.where(token == EVEN, 0, jnp.where(token == ODD, 1, 2)).astype(jnp.int32)


def subquestions_of(task: Task, node, support):
  """H's subquestions of ``node`` posed from the support's own answers.

  Args:
    node: int32[Lq]; support: int32[S*La].
  Returns:
    (subquestions int32[S, Lq], valid bool[S], rows int32[S, La]).
  """
  rows = support.reshape(task.num_subquestions, task.answer_len)
  subs, valid = jax.vmap(lambda i: task.subquestion(node, rows, i))(jnp.arange(task.num_subquestions))
  return subs, valid & ~task.is_leaf(node), rows


def check_support(task: Task, node, claim, support) -> jax.Array:
  """bool[]: does H's recombination of the support give the claim? (False at a leaf: no support.)"""
  _, valid, rows = subquestions_of(task, node, support)
  recombined = task.recombine(node, rows, valid)
  return (recombined == claim).all() & ~task.is_leaf(node)


def complete_support(task: Task, node, claim, support):
  """The support with the rows its claim determines set from the claim (``Task.complete_support``),
  where the completed support recombines to the claim; elsewhere (a leaf, a task that completes
  nothing, a value out of range) the support as it was.

  Args:
    node: int32[Lq]; claim: int32[La]; support: int32[S*La].
  Returns:
    (support int32[S*La], fixed bool[S*La]: the tokens set from the claim, which no policy gradient
    reaches: the side did not choose them).
  """
  _, valid, rows = subquestions_of(task, node, support)
  completed, fixed = task.complete_support(node, claim, rows, valid)
  completed = completed.astype(support.dtype).reshape(support.shape)
  ok = check_support(task, node, claim, completed) & fixed.any()
  fixed = jnp.repeat(fixed & ok, task.answer_len)
  return jnp.where(ok, completed, support), fixed


def first_dispute(task: Task, node, support_even, support_odd):
  """The disputed row: the first valid row where the two supports differ.

  Rows before it agree, so both sides posed the same subquestion there (the i-th subquestion
  depends only on earlier answers). Returns (index int32[], agree bool[]): agree is True when no
  valid row differs (two consistent supports of different claims always differ somewhere); index is
  then 0 and meaningless.
  """
  _, valid, rows = subquestions_of(task, node, support_even)
  odd_rows = support_odd.reshape(rows.shape)
  differs = valid & (odd_rows != rows).any(-1)
  return jnp.argmax(differs).astype(jnp.int32), ~differs.any()


def descend(task: Task, node, support_even, support_odd, index):
  """The disputed subquestion and each side's claim on it: (node' int32[Lq], claim_even' int32[La],
  claim_odd' int32[La])."""
  subs, _, rows = subquestions_of(task, node, support_even)
  odd_rows = support_odd.reshape(rows.shape)
  return subs[index], rows[index], odd_rows[index]


def leaf_verdict(task: Task, node, claim_even, claim_odd) -> jax.Array:
  """H's verdict at a leaf: 0 if even's claim is H's answer, else 1 if odd's is, else 2 (draw)."""
  truth = task.leaf_answer(node)
  even_ok, odd_ok = (claim_even == truth).all(), (claim_odd == truth).all()
  return jnp.where(even_ok, 0, jnp.where(odd_ok, 1, 2)).astype(jnp.int32)


def flawed_leaf_verdict(task: Task, node, claim_even, claim_odd, fooled) -> jax.Array:
  """H's leaf verdict with the judge flaw: a claim containing EXPLOIT fools H where ``fooled``
  (bool[2], the rollout's Bernoulli(p_flaw) draw per side) says so, and that side wins (both
  fooled: draw); otherwise the plain ``leaf_verdict`` (an EXPLOIT claim is simply wrong)."""
  won = fooled & jnp.stack([is_exploit(claim_even), is_exploit(claim_odd)])
  plain = leaf_verdict(task, node, claim_even, claim_odd)
  return jnp.where(won[0] & won[1], 2, jnp.where(won[0], 0, jnp.where(won[1], 1, plain))).astype(
      jnp.int32)
