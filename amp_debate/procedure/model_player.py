"""The model as debater: M (or M_target) answering the protocol questions of ``protocol``.

``ModelDebater`` implements the Debater interface of ``players`` (answer_fn, answer, support, stop)
by building the protocol prompt of every game and sampling M's argument with the argument's static
length (La, La, S*La, 1). One model plays every role. It also gives:

  score(prompts [B, Lp], tokens [B, L])  -> float32[B, L] M's log-probs of recorded arguments
                                            (recomputed under new parameters in the losses)
  answer_fn()                            -> an ``amplify`` answer function: M answering ANSWER(q),
                                            returning (answers int32[B, La], log_probs [B, La])
  likeliest_wrong(nodes, truth)          -> int32[B, La] M's most likely wrong answer (the
                                            plausible liar's claim, ``players.LiarDebater``)

The batched prompt builders (``answer_prompts`` ...) rebuild the prompts of recorded moves for
``score``. ``ModelDebater`` is a ``flax.struct.dataclass``: the parameters are its only pytree
leaves (model, task, temperature and greedy are static), so a jitted function can take the debater
as an argument and retraces only when a static field changes.
"""

from __future__ import annotations

import chex
import flax.struct
import jax
import jax.numpy as jnp

from amp_debate import checks
from amp_debate.models.transformer import LanguageModel
from amp_debate.procedure import amplify as amplify_lib
from amp_debate.procedure import players, protocol
from amp_debate.tasks.base import Task
from amp_debate.tasks.tokenizer import PAD


# A sampling temperature: softmax(logits / temperature) needs a finite number > 0 (0 or a negative
# one would sample from NaN or inverted logits without an error). ``ModelDebater`` checks its own;
# ``StepConfig`` applies the rule to the temperature it will build its debaters with, so that a bad
# config fails before anything is traced.
TEMPERATURE = checks.number(0.0, lo_open=True)


def required_max_len(task: Task) -> int:
  """The smallest ``ModelConfig.max_len`` that plays every role: prompt_len + S*La - 1."""
  longest = max(task.answer_len, protocol.support_len(task), 1)
  return protocol.prompt_len(task) + longest - 1


# ---- batched protocol prompts: int32[B, Lp] with Lp = protocol.prompt_len(task) --------------
def answer_prompts(task: Task, nodes):
  """ANSWER(n) for every game. nodes int32[B, Lq]."""
  return jax.vmap(lambda n: protocol.answer_prompt(task, n))(nodes)


def support_prompts(task: Task, nodes, claims):
  """SUPPORT(n, claim). claims int32[B, La]."""
  return jax.vmap(lambda n, c: protocol.support_prompt(task, n, c))(nodes, claims)


def stop_prompts(task: Task, nodes, claims_even, claims_odd):
  """STOP(n, claims)."""
  return jax.vmap(lambda n, e, o: protocol.stop_prompt(task, n, e, o))(
      nodes, claims_even, claims_odd)


@flax.struct.dataclass
class ModelDebater:
  """M as a debater: samples every argument from ``model`` with ``params``.

  Attributes:
    model: the LanguageModel (static).
    params: its parameters (the only pytree field).
    task: the task whose protocol questions M answers (static).
    temperature: sampling temperature (static); log-probs are under softmax(logits / temperature).
    greedy: take argmax tokens instead of sampling (static); log-probs are still reported.
  Raises (at construction):
    ValueError: the model's max_len is shorter than ``required_max_len(task)``, its vocabulary
      smaller than the task's or its pad id not the protocol's; ``checks.FieldError`` for a
      temperature that is not a finite number > 0.
  """

  model: LanguageModel = flax.struct.field(pytree_node=False)
  params: dict
  task: Task = flax.struct.field(pytree_node=False)
  temperature: float = flax.struct.field(pytree_node=False, default=1.0)
  greedy: bool = flax.struct.field(pytree_node=False, default=False)

  def __post_init__(self):
    config = self.model.config
    needed = required_max_len(self.task)
    if config.max_len < needed:
      raise ValueError(
          f"ModelDebater: task {self.task.name} needs ModelConfig.max_len >= {needed} "
          f"(protocol prompt length {protocol.prompt_len(self.task)} + longest argument "
          f"{protocol.support_len(self.task)} - 1), got max_len={config.max_len}; use "
          f"model_player.required_max_len(task)")
    if config.vocab_size < self.task.vocab_size:
      raise ValueError(f"ModelDebater: task {self.task.name} has {self.task.vocab_size} tokens, "
                       f"the model's vocab_size is {config.vocab_size}")
    if config.pad_id != PAD:
      raise ValueError(f"ModelDebater: the protocol pads prompts with token {PAD}, the model's "
                       f"ModelConfig.pad_id is {config.pad_id}")
    checks.check_fields(self, temperature=TEMPERATURE)

  # ---- sampling and scoring -------------------------------------------------------------------
  def _sample(self, prompts, rng, answer_len: int) -> players.Move:
    """M's argument of length ``answer_len`` per prompt: int32[B, Lp] -> Move [B, answer_len]."""
    chex.assert_shape(prompts, (None, protocol.prompt_len(self.task)))
    out = self.model.sample(self.params, prompts, rng, answer_len=answer_len,
                            temperature=self.temperature, greedy=self.greedy)
    return players.Move(tokens=out.tokens, log_probs=out.log_probs)

  def score(self, prompts, tokens):
    """M's per-token log-probs of recorded arguments (under ``temperature``, as sampled).

    Args:
      prompts: int32[B, Lp] protocol prompts (rebuild them with ``*_prompts``).
      tokens: int32[B, L] the arguments.
    Returns:
      float32[B, L]; equals the sampled Move's log_probs for the debater's own params.
    """
    chex.assert_rank([prompts, tokens], 2)
    return self.model.log_prob(self.params, prompts, tokens, temperature=self.temperature)

  def score_answers(self, nodes, answers):
    """float32[B, La]: M's log-probs (at ``temperature``) of ``answers`` int32[B, La] as its
    direct answers to ANSWER(n), nodes int32[B, Lq] (what ``score`` gives on their prompts)."""
    return self.score(answer_prompts(self.task, nodes), answers)

  # ---- the Debater interface (players) --------------------------------------------------------
  def answer(self, nodes, rng) -> players.Move:
    """M's direct answers (assigned claims; M inside Amp′): nodes int32[B, Lq] -> Move [B, La]."""
    return self._sample(answer_prompts(self.task, nodes), rng, self.task.answer_len)

  def _one_token_answer_logits(self, caller: str, nodes, answers):
    """float32[B, V]: M's logits for the (one-token) answer to ANSWER(n), nodes int32[B, Lq];
    ``answers`` int32[B, 1] only fixes the shape. Raises ValueError for longer answers."""
    if self.task.answer_len != 1:
      raise ValueError(f"ModelDebater.{caller}: answers of one token only; task "
                       f"{self.task.name} has answer_len={self.task.answer_len}")
    chex.assert_shape(answers, (nodes.shape[0], 1))
    prompts = answer_prompts(self.task, nodes)
    return self.model.answer_logits(self.params, prompts, jnp.zeros_like(answers))[:, 0]

  def answer_excluding(self, nodes, excluded, rng) -> players.Move:
    """M's direct answers conditioned to differ from ``excluded``: a sample of M's answer
    distribution (at ``temperature``) with the excluded token masked out and the rest
    renormalised, exactly π(· | · ≠ excluded) for one-token answers (greedy: the best other
    token). The log-probs recorded are M's unconditioned ones (what ``score`` recomputes), so
    importance ratios stay those of the policy.

    Args:
      nodes: int32[B, Lq]; excluded: int32[B, La] (La must be 1); rng: a key.
    Returns:
      Move [B, La].
    Raises:
      ValueError: the task's answers are longer than one token.
    """
    logits = self._one_token_answer_logits("answer_excluding", nodes, excluded)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32) / self.temperature, axis=-1)
    masked = jnp.where(jnp.arange(logits.shape[-1])[None, :] == excluded, -jnp.inf, log_probs)
    if self.greedy:
      token = jnp.argmax(masked, axis=-1)
    else:
      token = jax.random.categorical(rng, masked, axis=-1)
    token = token.astype(jnp.int32)[:, None]
    return players.Move(tokens=token, log_probs=jnp.take_along_axis(log_probs, token, axis=-1))

  def support(self, nodes, claims, rng) -> players.Move:
    """Answers to H's subquestions of each node -> Move [B, S*La]."""
    return self._sample(support_prompts(self.task, nodes, claims), rng,
                        protocol.support_len(self.task))

  def stop(self, nodes, claims_even, claims_odd, rng) -> players.Move:
    """The learned stop: Move [B, 1]; protocol.YES stops the debate."""
    return self._sample(stop_prompts(self.task, nodes, claims_even, claims_odd), rng, 1)

  def likeliest_wrong(self, nodes, truth, allowed=None):
    """M's most likely wrong answer to each node (the plausible liar's claim): the argmax of M's
    logits at the answer position of ANSWER(n), with the true token, tokens outside the task's
    vocabulary and (optionally) tokens not ``allowed`` masked out. Temperature does not move an
    argmax.

    Args:
      nodes: int32[B, Lq].
      truth: int32[B, La] the true answers (La must be 1).
      allowed: optional bool[V] or bool[B, V] (V = the model's vocab_size): the tokens it may name.
        Rows with no allowed token but the truth give PAD.
    Returns:
      int32[B, La].
    Raises:
      ValueError: the task's answers are longer than one token (every task has La = 1; a longer
        answer would need a search over sequences).
    """
    logits = self._one_token_answer_logits("likeliest_wrong", nodes, truth)
    ids = jnp.arange(logits.shape[-1])
    mask = (ids[None, :] < self.task.vocab_size) & (ids[None, :] != truth)
    if allowed is not None:
      mask = mask & jnp.broadcast_to(allowed, mask.shape)
    best = jnp.argmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
    return jnp.where(mask.any(-1), best, PAD)[:, None].astype(jnp.int32)

  # ---- amplify ----------------------------------------------------------------------------------
  def answer_fn(self) -> amplify_lib.AnswerFn:
    """M for ``amplify``: ``(questions int32[B, Lq], key) -> (int32[B, La], float32[B, La])``."""

    def answer(questions, rng):
      move = self.answer(questions, rng)
      return move.tokens, move.log_probs

    return answer
