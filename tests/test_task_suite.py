"""experiments/task_suite.py: the per-task table, the first step at 95%, which runs the table
holds (the workdir's finished runs, else recorded ones of today's recipe), bad arguments (no
training runs here: the suite's runs are the sweep runner's, tested in test_sweep.py and
test_studies.py)."""

import json
import pathlib
import sys

import pytest

from amp_debate import sweep
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


def test_first_reached():
  curve = [[100, 0.5], [200, 0.96], [300, 0.99]]
  seconds = [[100, 10.0], [200, 21.0], [300, 30.0]]
  assert task_suite.first_reached(curve, seconds, 0.95) == (200, 21.0)
  assert task_suite.first_reached(curve, seconds, 0.995) == (None, None)
  assert task_suite.first_reached(curve, [], 0.95) == (200, None)


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


def _finish(run, eval_min):
  """Marks a sweep run finished as the trainer and the sweep do: summary.json, metrics.jsonl."""
  workdir = pathlib.Path(run.workdir)
  workdir.mkdir(parents=True)
  e = _eval([1.0, 1.0, eval_min], [1.0, 1.0, 1.0], [1.0, 0.1, 0.1])
  (workdir / "summary.json").write_text(json.dumps(
      {"mode": run.config.mode, "task": run.config.task, "seed": 0, "steps": 1200,
       "task_options": dict(run.config.task_options), "eval_set": "E:2.0.0", "eval": e,
       "human_calls": {}, "wall_s": 12.5}))
  rows = [{"step": 600, "perf/train_seconds": 6.0, "eval/accuracy/model/min": 0.5},
          {"step": 1200, "perf/train_seconds": 12.0, "eval/accuracy/model/min": eval_min}]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_table_holds_finished_runs_then_recorded_ones_of_todays_recipe(tmp_path):
  workdir = str(tmp_path / "work")
  runs = {(r.config.task, r.config.mode): r
          for r in sweep.build_runs(f"{task_suite.SWEEP}:seed=0", None, workdir)}
  run = runs[("union_find", "supervised")]
  _finish(run, 0.97)
  # A recorded run of today's recipe fills in where the workdir has none; another recipe does not.
  config = runs[("wildcard", "supervised")].config
  recorded = dict(_summary("supervised", [1.0, 1.0, 1.0]), task="wildcard",
                  options=dict(config.task_options), num_layers=config.model.num_layers,
                  d_model=config.model.d_model, steps=config.num_steps)
  stale = dict(recorded, task="permutation", steps=1)
  recorded_path = tmp_path / "results.json"
  recorded_path.write_text(json.dumps([recorded, stale, dict(_summary("hybrid", [0.5] * 3))]))
  by_task = task_suite.collect(workdir, 0, task_suite.recorded_summaries(str(recorded_path)))
  assert list(by_task) == ["union_find", "wildcard"]
  assert by_task["wildcard"] == [recorded]
  (made,) = by_task["union_find"]  # the recorded union_find hybrid is not today's recipe
  assert made["reached_step"] == 1200 and made["reached_train_s"] == 12.0
  assert made["curve"] == [[600, 0.5], [1200, 0.97]] and made["eval_set"] == "E:2.0.0"
  assert made["num_layers"] == run.config.model.num_layers and made["wall_s"] == 12.5
  assert made["human_calls_per_question"] is None
  assert task_suite.recorded_summaries(str(tmp_path / "missing.json")) == {}


@pytest.mark.parametrize("flag, message", [("--tasks=chess", "unknown task 'chess'"),
                                           ("--modes=debate", "'debate' is not one of")])
def test_bad_arguments_stop_before_any_run(tmp_path, flag, message):
  with pytest.raises(SystemExit) as exit_info:
    task_suite.command_line([f"--workdir={tmp_path}", flag])
  assert str(exit_info.value.code).startswith("error: --tasks/--modes: ")
  assert message in str(exit_info.value.code)
  assert not list(tmp_path.iterdir())


def test_plot_and_eval_set_line(tmp_path):
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
