"""Task suite: pure-JAX question distributions with a simulated human H.

``get(name, **options)`` builds a task; ``names()`` lists them. See ``base.Task`` for the interface.
"""

from __future__ import annotations

import dataclasses

from amp_debate.tasks.base import Batch, Task, check_option
from amp_debate.tasks.tokenizer import PAD, PROTOCOL_TOKENS, SEP, Tokenizer, protocol_id
from amp_debate.tasks.permutation import Permutation
from amp_debate.tasks.assignments import Assignments
from amp_debate.tasks.wildcard import Wildcard
from amp_debate.tasks.shortest_path import ShortestPath
from amp_debate.tasks.union_find import UnionFind

REGISTRY: dict[str, type[Task]] = {
    cls.name: cls for cls in (Permutation, Assignments, Wildcard, ShortestPath, UnionFind)
}


def names() -> list[str]:
  """The registered task names."""
  return sorted(REGISTRY)


def get(name: str, **options) -> Task:
  """Builds task ``name`` with difficulty ``options`` (each validated; bad values raise ValueError)."""
  if name not in REGISTRY:
    raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(names())}")
  cls = REGISTRY[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise ValueError(f"{name}: unknown option(s) {unknown}; allowed options: {sorted(fields)}")
  return cls(**options)


__all__ = [
    "Batch", "Task", "Tokenizer", "PAD", "SEP", "PROTOCOL_TOKENS", "protocol_id", "check_option",
    "REGISTRY", "names", "get",
    "Permutation", "Assignments", "Wildcard", "ShortestPath", "UnionFind",
]
