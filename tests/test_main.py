"""The main entry point and its config handling; the H-baseline table."""

import os
import subprocess
import sys

import pytest

from amp_debate.tools import h_baselines
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
  assert "config.task_options.n must be in [2, 64], got 1" in result.stderr and "Traceback" not in result.stderr


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


def test_main_reports_a_missing_config_file_without_a_traceback(tmp_path):
  for overrides in ([], ["--config.seed=3"]):  # ml_collections defers the error; overrides raise it
    result = _main("--config=experiments/configs/nosuch.py:task=permutation", *overrides,
                   f"--workdir={tmp_path}")
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: cannot load --config: No such file or directory: 'experiments/configs/nosuch.py'")


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_main_reports_a_bad_workdir_before_compiling(tmp_path, kind):
  blocker = tmp_path / "blocker"
  blocker.write_text("not a directory")
  workdir = blocker if kind == "file" else blocker / "run"
  result = _main("--config=experiments/configs/default.py:task=permutation,runlocal",
                 f"--workdir={workdir}")
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
  expected = (f"error: workdir {workdir} is a file, not a directory" if kind == "file" else
              f"error: cannot create workdir {workdir}: Not a directory")
  assert result.stderr.strip().splitlines()[-1] == expected
  assert blocker.read_text() == "not a directory"


def test_reference_file_errors_are_value_errors(tmp_path):
  """``main`` turns ValueErrors into one-line messages (the tests above)."""
  from amp_debate import main
  path = tmp_path / "reference.json"
  with pytest.raises(ValueError, match="cannot read --reference .*reference.json: No such file"):
    main.load_reference(str(path))
  path.write_text("{")
  with pytest.raises(ValueError, match="is not valid JSON"):
    main.load_reference(str(path))
  path.write_text('{"amp_debate_eval/permutation:1.0.0": 1.0}')
  with pytest.raises(ValueError, match="must map eval-set names"):
    main.load_reference(str(path))
  path.write_text('{"amp_debate_eval/permutation:1.0.0": {"0": 1.0}}')
  assert main.load_reference(str(path)) == {"amp_debate_eval/permutation:1.0.0": {"0": 1.0}}
  stored = os.path.join(REPO, "experiments", "results", "supervised_reference.json")
  assert all(isinstance(v, dict) for v in main.load_reference(stored).values())


def test_stored_reference_covers_the_main_job():
  """The README main job's eval set (at the current dataset version) has a stored supervised
  reference, so its final table shows the supervised column; a version bump must regenerate it
  (``python -m experiments.supervised_reference``)."""
  from amp_debate import main
  from amp_debate.data import eval_sets
  from amp_debate.train import config_lib
  config = default.get_config("task=permutation,mode=hybrid,quickstart")
  task = config_lib.make_task(config)
  name = (f"{eval_sets.DATASET_NAME}/{eval_sets.get_config(task).name}:"
          f"{eval_sets.AmpDebateEval.VERSION}")
  stored = main.load_reference(os.path.join(REPO, "experiments", "results",
                                            "supervised_reference.json"))
  assert set(stored[name]) >= {"0", "1", "mean"}
