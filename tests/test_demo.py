"""The task demo CLI (``python -m amp_debate.data.demo``): its text and its option parsing."""

import pytest

from amp_debate import tasks
from amp_debate.data import demo


def test_describe_shows_decompositions_and_the_ground_truth():
  text = demo.describe(tasks.get("permutation", n=4, max_exponent=2), num=3, seed=0, difficulty=1)
  assert text.startswith("task permutation") and text.count("ground truth:") == 3
  assert text.count("H recombines:") == 3 and "-> M says" in text


def test_parse_options_errors_are_clear():
  assert demo.parse_options(["n=6", "max_exponent=8"]) == {"n": 6, "max_exponent": 8}
  with pytest.raises(ValueError, match="key=value"):
    demo.parse_options(["n6"])
  with pytest.raises(ValueError, match="expected an integer"):
    demo.parse_options(["n=six"])
