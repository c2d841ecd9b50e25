"""``key=value`` options as command lines spell them: the one parser.

  parse("task=permutation,mode=hybrid,runlocal", bare=True)  # a config arg (``path.py:arg``)
    -> {"task": "permutation", "mode": "hybrid", "runlocal": True}
  parse(["n=8", "max_exponent=16"])                         # repeated --option flags
    -> {"n": 8, "max_exponent": 16}

Values are typed by ``parse_value`` (bools, ints and floats; anything else stays a string), so task
options parse to what ``tasks.get`` checks. This module imports nothing from the package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def parse_value(text: str) -> bool | int | float | str:
  """A bool ("True"/"False"), int or float if ``text`` spells one, else ``text`` itself."""
  if text in ("True", "False"):
    return text == "True"
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return text


def parse(items: str | Iterable[str], *, keys: Sequence[str] | None = None, bare: bool = False,
          what: str = "--option") -> dict[str, bool | int | float | str]:
  """``key=value`` items as {key: parse_value(value)}; a later item overrides an earlier one.

  Args:
    items: one comma-separated string, or the items themselves (e.g. repeated flags).
    keys: the keys allowed (default: any).
    bare: a key alone ("runlocal") means True; otherwise it is an error.
    what: what the items are, for error messages ("--option", "config arg").
  Raises:
    ValueError: an item is not ``key=value`` (or a bare key where allowed), or its key is not one
      of ``keys``; the message names ``what`` and the item.
  """
  if isinstance(items, str):
    items = items.split(",")
  parsed = {}
  for item in filter(None, (s.strip() for s in items)):
    key, sep, value = (part.strip() for part in item.partition("="))
    if not key or not (sep or bare):
      raise ValueError(f"{what} {item!r} is not key=value")
    if keys is not None and key not in keys:
      raise ValueError(f"{what}: unknown key {key!r}; allowed keys: {', '.join(keys)}")
    parsed[key] = parse_value(value) if sep else True
  return parsed
