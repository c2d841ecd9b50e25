"""The ``study`` tests (out of CI) and the script that records a run of them."""

import configparser
import os
import re

from experiments import study_checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="3">
<testcase classname="tests.test_credit" name="test_a" time="9.40"/>
<testcase classname="tests.test_overseer" name="test_b" time="23.01"><failure message="no"/></testcase>
<testcase classname="tests.test_x" name="test_c" time="0.01"><skipped message="why"/></testcase>
</testsuite></testsuites>"""


def test_outcomes_and_report_read_pytests_junit_xml():
  rows = study_checks.outcomes(JUNIT)
  assert rows == [("tests/test_credit.py::test_a", "passed", 9.4),
                  ("tests/test_overseer.py::test_b", "failed", 23.01),
                  ("tests/test_x.py::test_c", "skipped", 0.01)]
  text = study_checks.report(rows, "pytest -m study tests", "abc1234", "2026-12-08")
  assert "**2 of 3 passed.**" in text  # a skip is not a failure; the failure is counted
  assert "| `tests/test_overseer.py::test_b` | failed | 23.0 |" in text
  assert "commit abc1234; 2026-12-08" in text


def test_study_tests_are_left_out_of_the_default_run_and_recorded_passing():
  config = configparser.ConfigParser()
  config.read(os.path.join(REPO, "setup.cfg"))
  assert '-m "not study"' in config["tool:pytest"]["addopts"]
  assert "study:" in config["tool:pytest"]["markers"]
  marked = []
  for name in sorted(os.listdir(os.path.join(REPO, "tests"))):
    if name.startswith("test_") and name.endswith(".py"):
      with open(os.path.join(REPO, "tests", name)) as f:
        marked += [(name, m) for m in re.findall(r"@pytest\.mark\.study\s*\ndef (\w+)", f.read())]
  assert marked
  # Each is in the committed record of the last run (experiments/study_checks.py), passed.
  with open(os.path.join(REPO, "experiments", "results", "study_checks.md")) as f:
    record = f.read()
  for name, test in marked:
    assert f"| `tests/{name}::{test}` | passed |" in record, (name, test)
