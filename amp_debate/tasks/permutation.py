"""Permutation powering: given σ (in context), x and k, what is σ^k(x)?

Question (Lq = n + 2): ``[σ(0), ..., σ(n-1), x, k]``, all integer tokens. Answer (La = 1): ``[σ^k(x)]``.
H: at k = 1 looks up σ(x); otherwise asks y = σ^⌈k/2⌉(x), then σ^⌊k/2⌋(y), and returns the latter.
Difficulty d = ⌈log2 k⌉ (k = 1 at d = 0, k in (2^(d-1), 2^d] otherwise), the depth of H's tree.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from amp_debate.tasks.base import Task, check_option
from amp_debate.tasks.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Permutation(Task):
  """Options: ``n`` (permutation size, 2..64), ``max_exponent`` (largest k, 1..1024)."""

  name = "permutation"
  n: int = 8
  max_exponent: int = 8

  def __post_init__(self):
    check_option(self.name, "n", self.n, 2, 64)
    check_option(self.name, "max_exponent", self.max_exponent, 1, 1024)

  @property
  def tokenizer(self) -> Tokenizer:
    return Tokenizer(num_lo=0, num_hi=max(self.n - 1, self.max_exponent))

  @property
  def question_len(self) -> int:
    return self.n + 2

  @property
  def num_subquestions(self) -> int:
    return 2

  @property
  def max_difficulty(self) -> int:
    return math.ceil(math.log2(self.max_exponent)) if self.max_exponent > 1 else 0

  # ---- parsing -------------------------------------------------------------------------------
  def _parse(self, question):
    tok = self.tokenizer
    sigma = jnp.clip(tok.to_number(question[: self.n]), 0, self.n - 1)
    x = jnp.clip(tok.to_number(question[self.n]), 0, self.n - 1)
    k = tok.to_number(question[self.n + 1])
    return sigma, x, k

  def _question(self, sigma, x, k):
    tok = self.tokenizer
    return jnp.concatenate([tok.number(sigma), tok.number(x)[None], tok.number(k)[None]])

  def _power(self, sigma, x, k):
    return jax.lax.fori_loop(0, self.max_exponent, lambda i, y: jnp.where(i < k, sigma[y], y), x)

  # ---- D -------------------------------------------------------------------------------------
  def sample_one(self, rng, difficulty):
    sigma_rng, x_rng, k_rng = jax.random.split(rng, 3)
    d = jnp.clip(jnp.asarray(difficulty, jnp.int32), 0, self.max_difficulty)
    sigma = jax.random.permutation(sigma_rng, self.n).astype(jnp.int32)
    x = jax.random.randint(x_rng, (), 0, self.n)
    low = jnp.where(d == 0, 1, 2 ** jnp.maximum(d - 1, 0) + 1)
    high = jnp.minimum(2**d, self.max_exponent)
    k = jax.random.randint(k_rng, (), low, high + 1)
    question = self._question(sigma, x, k)
    return question, self.solve(question)

  # ---- H -------------------------------------------------------------------------------------
  def is_leaf(self, question):
    _, _, k = self._parse(question)
    return k <= 1

  def leaf_answer(self, question):
    sigma, x, _ = self._parse(question)
    return self.tokenizer.number(sigma[x])[None]

  def subquestion(self, question, subanswers, i):
    sigma, x, k = self._parse(question)
    y = jnp.clip(self.tokenizer.to_number(subanswers[0, 0]), 0, self.n - 1)
    first = self._question(sigma, x, (k + 1) // 2)
    second = self._question(sigma, y, k // 2)
    return jnp.where(i == 0, first, second), (k >= 2) & (i < 2)

  def recombine(self, question, subanswers, valid):
    del question, valid
    return subanswers[1]

  def complete_support(self, question, claim, subanswers, valid):
    """σ^k(x) = σ^⌊k/2⌋(a) for the first row's a: the last row is the claim."""
    del question
    return self._with_row(subanswers, valid, 1, claim)

  # ---- ground truth --------------------------------------------------------------------------
  def solve(self, question):
    sigma, x, k = self._parse(question)
    return self.tokenizer.number(self._power(sigma, x, k))[None]

  def format_question(self, question) -> str:
    q = np.asarray(question)
    values = [self.tokenizer.decode(q[i : i + 1]) for i in range(self.n)]
    x, k = self.tokenizer.decode(q[self.n : self.n + 1]), self.tokenizer.decode(q[self.n + 1 :])
    return f"σ = [{' '.join(values)}], x = {x}, k = {k}: σ^k(x)?"
