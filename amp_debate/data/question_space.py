"""How large is a task's question space, as D draws it? (Host side; README's question-space table.)

The eval sets are held out by construction (``tasks.base.is_eval_question``), so no run ever trains
on an evaluation question; the size of each level's space still matters, because a run that draws
most of a small space has seen nearly every *training* question, and "held-out accuracy" then says
little about generalisation. DESIGN.md section 2: every size used for results has a question space
far larger than what a run draws.

The size that matters is D's own: the **effective size** 1 / Σ_q p(q)² (the number of equally
likely questions with the same chance that two draws coincide; the exact count for a uniform D).
It is estimated from N draws by counting coinciding pairs C: E[C] = N(N-1)/2 · Σ p², so
K ≈ N(N-1) / (2C). With no coincidence at all only a lower bound is known: K > N(N-1)/6 at 95%
(a Poisson count with mean above 3 is 0 with probability under 5%).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from amp_debate.tasks.base import Task


@dataclasses.dataclass(frozen=True)
class SpaceEstimate:
  """One level's space, estimated from ``draws`` questions of D (either part).

  Attributes:
    level: the difficulty.
    draws: questions drawn.
    distinct: distinct questions among them.
    pairs: coinciding pairs among the draws (Σ c(c-1)/2 over distinct questions).
    effective_size: N(N-1)/(2·pairs) (None when pairs == 0).
    lower_bound: N(N-1)/6 when pairs == 0 (95% lower bound), else None.
  """

  level: int
  draws: int
  distinct: int
  pairs: int
  effective_size: float | None
  lower_bound: float | None

  def text(self) -> str:
    """"≈ 6.0e+02" or "> 1.7e+09" (the lower bound)."""
    if self.effective_size is not None:
      return f"≈ {self.effective_size:.2g}"
    return f"> {self.lower_bound:.2g}"

  def size(self) -> float:
    """The estimate, or the lower bound where there is no estimate."""
    return self.effective_size if self.effective_size is not None else self.lower_bound


@functools.cache
def _sampler(task: Task, draws: int):
  return jax.jit(lambda key, level: task.sample(key, draws, difficulty=level, part="any"))


def estimate(task: Task, level: int, draws: int = 100_000, seed: int = 0) -> SpaceEstimate:
  """Estimates level ``level``'s effective question-space size from ``draws`` questions of D."""
  questions = np.asarray(jax.device_get(
      _sampler(task, draws)(jax.random.fold_in(jax.random.key(seed), level), level).questions))
  _, counts = np.unique(questions, axis=0, return_counts=True)
  pairs = int((counts * (counts - 1) // 2).sum())
  total = draws * (draws - 1) / 2
  return SpaceEstimate(level=level, draws=draws, distinct=len(counts), pairs=pairs,
                       effective_size=total / pairs if pairs else None,
                       lower_bound=None if pairs else total / 3)
