"""The task demo CLI (``python -m amp_debate.data.demo``): its text and its option errors."""

import pytest

from amp_debate import options, tasks
from amp_debate.data import demo


def test_describe_shows_decompositions_and_the_ground_truth():
  text = demo.describe(tasks.get("permutation", n=4, max_exponent=2), num=3, seed=0, difficulty=1)
  assert text.startswith("task permutation") and text.count("ground truth:") == 3
  assert text.count("H recombines:") == 3 and "-> M says" in text


def test_option_errors_are_clear():
  """The demo builds its task from ``options.parse(--option ...)``; the task checks the values."""
  assert options.parse(["n=6", "max_exponent=8"]) == {"n": 6, "max_exponent": 8}
  with pytest.raises(ValueError, match="--option 'n6' is not key=value"):
    options.parse(["n6"])
  with pytest.raises(ValueError, match="permutation.n must be an integer, got 'six'"):
    tasks.get("permutation", **options.parse(["n=six"]))
