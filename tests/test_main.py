"""The main entry point and its config handling; the H-baseline table."""

import os
import subprocess
import sys

import pytest

from amp_debate.train import h_baselines
from experiments.configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_h_baselines_table(tmp_path):
  config = default.get_config("task=permutation,runlocal")
  config.task_options.n = 6
  config.task_options.max_exponent = 4
  config.eval.examples_per_difficulty = 64
  config.eval.data_dir = str(tmp_path / "data")
  rows = h_baselines.run(config, str(tmp_path / "work"))
  assert [r["difficulty"] for r in rows] == [0, 1, 2]
  assert all(r["questions"] == 64 for r in rows)
  assert rows[0]["alone"] == 1.0                     # H is exact at leaves
  assert rows[1]["amp_alone"] == 1.0                 # one level of decomposition suffices at level 1
  assert rows[2]["amp_alone"] < 1.0 and rows[1]["alone"] < 1.0
  assert all(r["amp_oracle"] == 1.0 and r["calls"] == 1.0 for r in rows)
  text = (tmp_path / "work" / "h_baselines.md").read_text()
  assert "amp_debate_eval/permutation" in text and "| 2 | 64 |" in text


def test_config_arg_errors():
  with pytest.raises(ValueError, match="unknown key 'tsk'"):
    default.get_config("tsk=permutation")
  with pytest.raises(ValueError, match="mode='hybird'"):
    default.get_config("mode=hybird")


def _main(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "amp_debate.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_main_reports_bad_task_without_a_traceback(tmp_path):
  result = _main("--config=experiments/configs/default.py:task=chess", f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert "unknown task 'chess'" in result.stderr and "Traceback" not in result.stderr


def test_main_reports_bad_task_option_without_a_traceback(tmp_path):
  result = _main("--config=experiments/configs/default.py:task=permutation",
                 "--config.task_options.n=1", f"--workdir={tmp_path}")
  assert result.returncode != 0, result.stderr
  assert "option n=1 is out of range" in result.stderr and "Traceback" not in result.stderr


def test_main_reports_an_invalid_field_before_compiling(tmp_path):
  result = _main("--config=experiments/configs/default.py:task=permutation,runlocal",
                 "--config.debate.t_max=0", f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert "config.debate.t_max must be >= 1" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_main_reports_an_unknown_field_without_a_traceback(tmp_path):
  result = _main("--config=experiments/configs/default.py:task=permutation,runlocal",
                 "--config.debate.tmax=3", f"--workdir={tmp_path}")
  assert result.returncode != 0
  assert "tmax" in result.stderr and "Traceback" not in result.stderr
