"""Field checks: how the frozen config dataclasses (and pure functions' options) reject bad values.

A check is a function ``value -> problem or None``, the problem completing the sentence
"<field> ...", e.g. ``"must be >= 1, got 0"``. ``check_fields(instance, field=check, ...)`` applies
checks to a dataclass's fields in its ``__post_init__``; ``check(owner, name, value, check)`` applies
one to an option of a function. Both raise ``FieldError``, a one-line ValueError
(``"DebateConfig.t_max must be >= 1, got 0"``) that keeps the field name and the problem apart, so
``train.config_lib`` reports the same problem under the config's name for the field
(``"config.debate.t_max must be >= 1, got 0"``). Each rule is written once, where the value is
consumed; a config that feeds it applies the same check (the module that owns it exports it).

This module imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], "str | None"]


class FieldError(ValueError):
  """A bad value of one named field or option: ``"<owner>.<field> <problem>"``.

  Attributes:
    owner: what holds the field ("DebateConfig") or takes the option ("update_target").
    field: the field's or option's name ("t_max").
    problem: what is wrong with it ("must be >= 1, got 0").
  """

  def __init__(self, owner: str, field: str, problem: str):
    super().__init__(f"{owner}.{field} {problem}")
    self.owner, self.field, self.problem = owner, field, problem

  def __reduce__(self):
    return type(self), (self.owner, self.field, self.problem)


def is_integer(value) -> bool:
  """An int (numpy ints included), not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
  """A finite real number, not a bool."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


# ---- checks ------------------------------------------------------------------------------------
def integer(lo: int | None = None, hi: int | None = None) -> Check:
  """An integer, at least ``lo`` and at most ``hi`` where given."""

  def check_integer(value):
    if not is_integer(value):
      return f"must be an integer, got {value!r}"
    if lo is not None and hi is not None and not lo <= value <= hi:
      return f"must be in [{lo}, {hi}], got {value!r}"
    if lo is not None and value < lo:
      return f"must be >= {lo}, got {value!r}"
    if hi is not None and value > hi:
      return f"must be <= {hi}, got {value!r}"
    return None

  return check_integer


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Check:
  """A finite number in [lo, hi] (either bound optional; ``*_open`` excludes it)."""

  def check_number(value):
    if not is_number(value):
      return f"must be a finite number, got {value!r}"
    if lo is not None and (value < lo or (lo_open and value == lo)):
      return f"must be {'>' if lo_open else '>='} {lo}, got {value!r}"
    if hi is not None and (value > hi or (hi_open and value == hi)):
      return f"must be {'<' if hi_open else '<='} {hi}, got {value!r}"
    return None

  return check_number


def choice(*options) -> Check:
  """One of ``options``."""

  def check_choice(value):
    if value in options:
      return None
    return f"must be one of {', '.join(map(repr, options))}, got {value!r}"

  return check_choice


def boolean(value) -> str | None:
  """True or False."""
  return None if isinstance(value, bool) else f"must be True or False, got {value!r}"


def string(value) -> str | None:
  """A str."""
  return None if isinstance(value, str) else f"must be a string, got {value!r}"


def of_type(cls: type) -> Check:
  """An instance of ``cls``."""

  def check_type(value):
    if isinstance(value, cls):
      return None
    return f"must be a {cls.__name__}, got {type(value).__name__}"

  return check_type


def optional(inner: Check) -> Check:
  """None, or a value that passes ``inner``."""
  return lambda value: None if value is None else inner(value)


# ---- applying them -----------------------------------------------------------------------------
def check(owner: str, field: str, value, rule: Check) -> None:
  """Raises FieldError(owner, field, problem) if ``rule`` finds a problem with ``value``."""
  problem = rule(value)
  if problem:
    raise FieldError(owner, field, problem)


def check_fields(instance: Any, **rules: Check) -> None:
  """Checks the named fields of a dataclass instance, in order; FieldError names the first bad one
  (owner: the class name)."""
  for field, rule in rules.items():
    check(type(instance).__name__, field, getattr(instance, field), rule)
