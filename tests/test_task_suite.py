"""experiments/task_suite.py: the per-task table, the first step at 95%, skipping finished runs,
bad arguments (no training runs here: the suite's runs are the trainer's, tested elsewhere)."""

import json
import sys

import pytest

from experiments import task_suite


def _eval(model, amp, alone):
  e = {}
  for key, values in (("model", model), ("amp_h_m", amp), ("h_alone", alone)):
    for d, v in enumerate(values):
      e[f"eval/accuracy/{key}/d{d}"] = v
    e[f"eval/accuracy/{key}/mean"] = sum(values) / len(values)
    e[f"eval/accuracy/{key}/min"] = min(values)
  return e


def _summary(mode, model, reached=None):
  return {"task": "union_find", "mode": mode, "seed": 0, "steps": 1200,
          "options": {"num_vars": 8, "max_depth": 2}, "num_layers": 4, "d_model": 64,
          "wall_s": 190.4,
          "eval": _eval(model, [1.0, 0.9, 0.8], [1.0, 0.125, 0.08]),
          "reached_step": reached, "reached_train_s": 110.8 if reached else None,
          "human_calls_per_question": None if mode == "supervised" else 0.75}


def test_first_reached(tmp_path):
  rows = [{"step": 100, "perf/train_seconds": 10.0, "eval/accuracy/model/min": 0.5},
          {"step": 200, "perf/train_seconds": 21.0},
          {"step": 200, "eval/accuracy/model/min": 0.96},
          {"step": 300, "perf/train_seconds": 30.0, "eval/accuracy/model/min": 0.99}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert task_suite._first_reached(str(tmp_path), 0.95) == (200, 21.0)
  assert task_suite._first_reached(str(tmp_path), 0.995) == (None, None)


def test_tables():
  summaries = [_summary("supervised", [1.0, 0.998, 0.996], reached=800),
               _summary("amplification", [1.0, 0.7, 0.3])]
  table = task_suite.task_table(summaries).splitlines()
  assert table[0].split(" | ")[2:5] == ["d0", "d1", "d2"]
  supervised = table[2].split(" | ")
  assert supervised[:5] == ["| supervised", "M", "1.000", "0.998", "0.996"]
  assert "800 (111 s)" in supervised and "190" in table[2]
  assert "not reached" in table[4] and "0.750" in table[4]  # amplification's M row
  assert table[3].startswith("| supervised | Amp(H, M) | 1.000 | 0.900 | 0.800")
  assert table[-1].startswith("| – | H alone | 1.000 | 0.125 | 0.080")
  overview = task_suite.overview({"union_find": summaries}).splitlines()
  assert overview[2].split(" | ")[:7] == [
      "| union_find", "max_depth=2, num_vars=8", "4 × 64", "3", "0.996", "0.300", "–"]


def test_finished_runs_are_read_not_rerun(tmp_path):
  run_dir = tmp_path / "union_find" / "supervised_s0"
  run_dir.mkdir(parents=True)
  stored = _summary("supervised", [1.0, 1.0, 1.0], reached=400)
  (run_dir / "summary.json").write_text(json.dumps(stored))
  assert task_suite.run_one("union_find", "supervised", 0, str(tmp_path)) == stored
  # A summary from before the width column gets it from the run's config.
  del stored["d_model"]
  (run_dir / "summary.json").write_text(json.dumps(stored))
  (run_dir / "config.json").write_text(json.dumps({"model": {"d_model": 32}}))
  assert task_suite.run_one("union_find", "supervised", 0, str(tmp_path))["d_model"] == 32


@pytest.mark.parametrize("flag, message", [("--tasks=chess", "unknown task 'chess'"),
                                           ("--modes=debate", "'debate' is not one of")])
def test_bad_arguments_stop_before_any_run(tmp_path, monkeypatch, capsys, flag, message):
  monkeypatch.setattr(sys, "argv", ["task_suite", f"--workdir={tmp_path}", flag])
  with pytest.raises(SystemExit) as exit_info:
    task_suite.main()
  assert exit_info.value.code == 2 and message in capsys.readouterr().err
  assert not list(tmp_path.iterdir())


def test_recorded_runs_with_todays_recipe_are_not_rerun(tmp_path, monkeypatch):
  config = task_suite._config("union_find", "supervised", 0)
  stored = _summary("supervised", [1.0, 1.0, 1.0], reached=400)
  stored.update(options=dict(config.task_options), num_layers=config.model.num_layers,
                d_model=config.model.d_model, steps=config.num_steps)
  results = tmp_path / "results.json"
  results.write_text(json.dumps([stored]))
  recorded = task_suite.recorded_summaries(str(results))
  assert list(recorded) == [("union_find", "supervised", 0)]
  assert task_suite.recorded_summaries(str(tmp_path / "missing.json")) == {}

  def train_run(config, workdir):
    raise RuntimeError(f"trained {workdir}")

  monkeypatch.setattr(task_suite.train, "run", train_run)
  workdir = str(tmp_path / "work")
  assert task_suite.run_one("union_find", "supervised", 0, workdir, recorded) == stored
  # Another recipe (here: more steps than recorded) is trained again.
  recorded[("union_find", "supervised", 0)] = dict(stored, steps=stored["steps"] - 1)
  with pytest.raises(RuntimeError, match="trained .*union_find/supervised_s0"):
    task_suite.run_one("union_find", "supervised", 0, workdir, recorded)


def test_curve_plot_and_eval_set_line(tmp_path):
  rows = [{"step": 100, "eval/accuracy/model/min": 0.5}, {"step": 100, "loss": 1.0},
          {"step": 200, "eval/accuracy/model/min": 0.9},
          {"step": 200, "eval/accuracy/model/min": 0.97}]  # re-evaluated after a resume
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert task_suite._curve(str(tmp_path)) == [[100, 0.5], [200, 0.97]]
  summaries = [dict(_summary("supervised", [1.0, 1.0, 1.0]), curve=[[100, 0.5], [200, 0.97]],
                    eval_set="E:1.1.0"),
               dict(_summary("hybrid", [1.0, 1.0, 1.0]), eval_set="E:1.2.0")]  # no curve
  assert task_suite.eval_sets_line(summaries[:1]) == "Eval set E:1.1.0."
  assert task_suite.eval_sets_line(summaries) == (
      "Eval sets E:1.1.0 (supervised) and E:1.2.0 (hybrid).")
  pytest.importorskip("matplotlib")
  png = task_suite.plot({"union_find": summaries, "wildcard": summaries[:1]},
                        str(tmp_path / "out" / "suite.png"))
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
  assert task_suite.plot({"union_find": [_summary("supervised", [1.0])]},
                         str(tmp_path / "suite.png")) is None
  assert not (tmp_path / "suite.png").exists()
