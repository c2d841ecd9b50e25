"""Token vocabulary shared by every task: protocol header tokens, then task tokens.

A vocabulary is a list of unique, whitespace-free strings. Ids ``0 .. len(PROTOCOL_TOKENS) - 1`` are
the protocol tokens every task shares (so one model can play every debate role); task tokens follow:
a contiguous range of integers, optionally variable names ``v0 .. v{N-1}``, then task symbols.

``decode``/``encode`` are exact inverses on id sequences (host-side, numpy). ``number``/``to_number``
and friends are pure ``jnp`` functions usable under ``jit``/``vmap``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np

# Shared protocol tokens. Their ids are identical in every task's vocabulary.
PROTOCOL_TOKENS: tuple[str, ...] = (
    "<pad>",      # padding; also "no answer"
    "<sep>",      # separates fields of a protocol question
    "ANSWER",     # "what is the answer to n?"
    "SUPPORT",    # "support your claim with answers to H's subquestions of n"
    "CHALLENGE",  # "challenge one subanswer, or accept all"
    "STOP",       # "is the last argument a sufficient answer?"
    "VERDICT",    # "which side's claims were more helpful?"
    "REVIEW",     # "is this trajectory cheating?"
    "EXPLOIT",    # the judge-flaw argument of the self-review study
    "YES",
    "NO",
    "ACCEPT",     # the challenger accepts every subanswer
    "EVEN",
    "ODD",
    "DRAW",
)
PAD = 0
SEP = 1


def protocol_id(name: str) -> int:
  """Id of a protocol token, e.g. ``protocol_id("SUPPORT")``."""
  return PROTOCOL_TOKENS.index(name)


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """Vocabulary = protocol tokens + integers [num_lo, num_hi] + variables + symbols.

  Attributes:
    num_lo, num_hi: inclusive range of integer tokens (strings ``str(v)``).
    num_vars: number of variable tokens ``v0 .. v{num_vars-1}`` (0 for none).
    symbols: task symbols (e.g. ``"*"``, ``"inf"``), each a unique whitespace-free string.
  """

  num_lo: int
  num_hi: int
  num_vars: int = 0
  symbols: tuple[str, ...] = ()

  def __post_init__(self):
    if self.num_hi < self.num_lo:
      raise ValueError(f"Tokenizer: num_hi={self.num_hi} < num_lo={self.num_lo}")
    vocab = self.vocab
    if len(set(vocab)) != len(vocab):
      raise ValueError(f"Tokenizer: duplicate token strings in {vocab}")
    if any(not s or any(c.isspace() for c in s) for s in vocab):
      raise ValueError("Tokenizer: token strings must be non-empty and contain no whitespace")

  # ---- layout -------------------------------------------------------------------------------
  @property
  def num_offset(self) -> int:
    return len(PROTOCOL_TOKENS)

  @property
  def var_offset(self) -> int:
    return self.num_offset + (self.num_hi - self.num_lo + 1)

  @property
  def symbol_offset(self) -> int:
    return self.var_offset + self.num_vars

  @property
  def vocab(self) -> tuple[str, ...]:
    nums = tuple(str(v) for v in range(self.num_lo, self.num_hi + 1))
    names = tuple(f"v{i}" for i in range(self.num_vars))
    return PROTOCOL_TOKENS + nums + names + tuple(self.symbols)

  @property
  def vocab_size(self) -> int:
    return self.symbol_offset + len(self.symbols)

  # ---- jnp conversions (jit/vmap friendly) ----------------------------------------------------
  def number(self, value):
    """Integer value(s) -> token id(s). Values are clipped into [num_lo, num_hi]."""
    value = jnp.clip(jnp.asarray(value, jnp.int32), self.num_lo, self.num_hi)
    return (value - self.num_lo + self.num_offset).astype(jnp.int32)

  def is_number(self, token):
    token = jnp.asarray(token, jnp.int32)
    return (token >= self.num_offset) & (token < self.var_offset)

  def to_number(self, token):
    """Token id(s) -> integer value(s). Non-number tokens map to the nearest end of the range."""
    token = jnp.asarray(token, jnp.int32)
    index = jnp.clip(token - self.num_offset, 0, self.num_hi - self.num_lo)
    return (index + self.num_lo).astype(jnp.int32)

  def variable(self, index):
    """Variable index(es) -> token id(s) (clipped into range)."""
    index = jnp.clip(jnp.asarray(index, jnp.int32), 0, max(self.num_vars - 1, 0))
    return (index + self.var_offset).astype(jnp.int32)

  def is_variable(self, token):
    token = jnp.asarray(token, jnp.int32)
    return (token >= self.var_offset) & (token < self.symbol_offset)

  def to_variable(self, token):
    """Token id(s) -> variable index(es); non-variable tokens are clipped into range."""
    token = jnp.asarray(token, jnp.int32)
    return jnp.clip(token - self.var_offset, 0, max(self.num_vars - 1, 0)).astype(jnp.int32)

  def symbol(self, name: str) -> int:
    """Id of a task symbol (a Python int, usable as a constant under jit)."""
    try:
      return self.symbol_offset + self.symbols.index(name)
    except ValueError:
      raise ValueError(f"unknown symbol {name!r}; this tokenizer has {self.symbols}") from None

  # ---- host-side text round trip --------------------------------------------------------------
  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Token ids -> space-separated token strings (exact inverse of ``encode``)."""
    ids = np.asarray(ids).reshape(-1)
    vocab = self.vocab
    bad = [int(i) for i in ids if not 0 <= int(i) < len(vocab)]
    if bad:
      raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {len(vocab)})")
    return " ".join(vocab[int(i)] for i in ids)

  def encode(self, text: str) -> np.ndarray:
    """Space-separated token strings -> int32 ids."""
    index = {s: i for i, s in enumerate(self.vocab)}
    words = text.split()
    unknown = [w for w in words if w not in index]
    if unknown:
      raise ValueError(f"unknown tokens {unknown[:5]}; vocabulary is {self.vocab}")
    return np.asarray([index[w] for w in words], dtype=np.int32)
