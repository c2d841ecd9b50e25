"""The sweep runner: a tiny sweep end to end (table, CSV, plots), a killed sweep resumed without
redoing finished runs, and bad sweep files refused in one line before anything runs."""

import csv
import json
import os
import subprocess
import sys

import pytest

import test_studies
from amp_debate import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, ".jax_cache", "eval_data")
BASE = "experiments/configs/default.py:task=permutation,quickstart"

# The tiny run of tests/tiny.py as overrides (same compiled step as the trainer tests).
TINY = {"task_options.n": 4, "task_options.max_exponent": 4, "model.num_layers": 1,
        "model.d_model": 32, "model.num_heads": 2, "model.d_ff": 64, "batch_size": 8,
        "log_every": 1, "debate.t_max": 4, "debate.learned_stop": True,
        "step.distill_subquestions": True, "eval.examples_per_difficulty": 16,
        "eval.batch_size": 16, "eval.every": 2, "eval.data_dir": DATA_DIR, "checkpoint.every": 2,
        # No debates in the evaluation: the sweep's bookkeeping does not read them, and compiling
        # them (eleven rollouts) took most of this module's and tests/test_trainer.py's group tests' time.
        "eval.debates": False}


def _sweep_file(tmp_path, runs, name="tiny.py"):
  path = tmp_path / name
  path.write_text("def get_sweep():\n  return " + repr(runs) + "\n")
  return str(path)


def _cli(*args, **kw):
  return subprocess.run([sys.executable, "-m", "amp_debate.sweep", *args], capture_output=True,
                        text=True, cwd=REPO, check=False, **kw)


def test_product_and_chain():
  runs = sweep.product({"mode": ["a", "b"]}, {"x": [1, 2], "y": [3, 4]})
  assert runs == [{"mode": "a", "x": 1, "y": 3}, {"mode": "a", "x": 2, "y": 4},
                  {"mode": "b", "x": 1, "y": 3}, {"mode": "b", "x": 2, "y": 4}]
  assert sweep.chain(runs[:1], [{"z": 0}]) == [runs[0], {"z": 0}]
  with pytest.raises(sweep.SweepError, match="different numbers of values"):
    sweep.product({"x": [1, 2], "y": [3]})


@pytest.mark.parametrize("runs, message", [
    ([{"debate.no_such_field": 1}], "the config has no field 'debate.no_such_field'"),
    ([{"nope.call_prob": 1}], "the config has no field 'nope'"),
    ([{"debate.call_prob": "often"}], "'debate.call_prob' must be float, got 'often'"),
    ([{"debate.learned_stop": 1}], "'debate.learned_stop' must be bool, got 1"),
    ([{"debate.call_prob": 2.0}], "config.debate.call_prob"),
    ([{"mode": "telepathy"}], "mode='telepathy' is not one of"),
    ([{"seed": 0}, {"seed": 0}], "repeats run 1"),
])
def test_bad_runs_are_refused_before_anything_runs(tmp_path, runs, message):
  path = _sweep_file(tmp_path, [{"seed": 5}] + runs)
  with pytest.raises(sweep.SweepError, match=message.replace("(", r"\(").replace(")", r"\)")):
    sweep.build_runs(path, BASE, str(tmp_path / "w"))


def test_cli_errors_are_one_line_and_nothing_is_written(tmp_path):
  bad_field = _sweep_file(tmp_path, [{"seed": 0}, {"debate.colour": "red"}])
  not_a_list = tmp_path / "nolist.py"
  not_a_list.write_text("def get_sweep():\n  return {'seed': 0}\n")
  broken = tmp_path / "broken.py"
  broken.write_text("def get_sweep(:\n")
  cases = [(bad_field, "sweep run 1 (colour=red): the config has no field 'debate.colour'"),
           (str(not_a_list), "get_sweep() must return a non-empty list of dicts"),
           (str(broken), "failed to load: SyntaxError"),
           (str(tmp_path / "missing.py"), "does not exist")]
  for path, message in cases:
    result = _cli(f"--sweep={path}", f"--config={BASE}", f"--workdir={tmp_path}/w")
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
  assert not os.path.exists(tmp_path / "w")
  count = _cli(f"--sweep={_sweep_file(tmp_path, [{'seed': 0}, {'seed': 1}], 'ok.py')}", "--count")
  assert count.returncode == 0 and count.stdout.strip() == "2"


def test_summary_and_table_carry_honesty_worst_seat_and_level(tmp_path):
  """The honesty columns are the worst seat's final win rate (already the worst level) against each
  liar, and self-play's true-winner rate, read from the run's last evaluation."""
  from amp_debate.train import evaluation  # pylint: disable=import-outside-toplevel
  record = {"step": 4, "eval/accuracy/model/mean": 0.5, "eval/accuracy/model/d0": 0.5,
            "eval/debate/winner_true/mean": 0.25}
  for i, liar in enumerate(evaluation.LIARS):
    record[f"eval/honesty/own/{liar}/even/win/min"] = 0.9 - 0.1 * i
    record[f"eval/honesty/own/{liar}/odd/win/min"] = 0.7 - 0.1 * i
  old = {"step": 2, "eval/accuracy/model/mean": 0.1, "eval/debate/winner_true/mean": 0.0,
         **{k: 0.0 for k in record if k.startswith("eval/honesty")}}
  (tmp_path / "metrics.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(record) + "\n")
  out = sweep._final_metrics(str(tmp_path))  # pylint: disable=protected-access
  for i, liar in enumerate(evaluation.LIARS):
    assert out[f"honesty/{liar}/win/worst"] == pytest.approx(0.7 - 0.1 * i)
  assert out["selfplay/winner_true/mean"] == 0.25
  runs = sweep.build_runs(_sweep_file(tmp_path, [dict(TINY, seed=0)]), BASE, str(tmp_path / "w"))
  os.makedirs(runs[0].workdir)
  with open(os.path.join(runs[0].workdir, "summary.json"), "w") as f:
    json.dump(dict(index=0, name=runs[0].name, overrides=runs[0].overrides, seed=0, **out), f)
  text = sweep.aggregate(runs, str(tmp_path / "w"), "honesty")
  assert "wins vs consistent liar | wins vs early liar | wins vs plausible liar | self-play winner true" in text
  assert "| 0.700 | 0.600 | 0.500 | 0.250 |" in text


def test_a_run_killed_between_the_trainers_summary_and_the_sweeps_reads_its_columns_from_its_log(
    tmp_path):
  """The trainer wrote summary.json, the sweep died before merging its keys into it: the run counts
  as finished and its table row still carries the columns its metrics.jsonl holds (no wall time)."""
  runs = sweep.build_runs(_sweep_file(tmp_path, [dict(TINY, seed=0)]), BASE, str(tmp_path / "w"))
  os.makedirs(runs[0].workdir)
  record = {"step": 4, "eval/accuracy/model/mean": 0.75, "eval/accuracy/model/d0": 0.625,
            "eval/debate/winner_true/mean": 0.25}
  with open(os.path.join(runs[0].workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps(record) + "\n")
  with open(os.path.join(runs[0].workdir, "summary.json"), "w") as f:
    json.dump({"mode": "hybrid", "seed": 0, "steps": 4, "eval_set": "amp_debate_eval/x:1.0.0"}, f)
  summary = runs[0].summary
  assert runs[0].done and "wall_s" not in summary and summary["name"] == runs[0].name
  assert summary["dataset"] == "amp_debate_eval/x:1.0.0"
  text = sweep.aggregate(runs, str(tmp_path / "w"), "killed")
  assert "| 0.625 |" in text and "| done |" in text, text


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path, monkeypatch, capsys):
  """The sweep dies in run 1 after its step-2 checkpoint (a crash: no summary, nothing tidied);
  the rerun skips run 0 and resumes run 1 from step 2."""
  from amp_debate.train import metrics_io  # pylint: disable=import-outside-toplevel
  path = _sweep_file(tmp_path, [dict(TINY, num_steps=2, seed=0), dict(TINY, num_steps=4, seed=1)])
  runs = sweep.build_runs(path, BASE, str(tmp_path / "sweep"))
  write = metrics_io.MetricWriter.write_scalars

  def crash_in_run_1(self, step, scalars):
    if self.logdir == runs[1].workdir and step >= 3:
      raise KeyboardInterrupt("killed")
    return write(self, step, scalars)

  monkeypatch.setattr(metrics_io.MetricWriter, "write_scalars", crash_in_run_1)
  with pytest.raises(KeyboardInterrupt):
    sweep.run_all(sweep.make_units(runs, 1), str(tmp_path / "sweep"))
  assert runs[0].done and not runs[1].done and runs[1].started
  first_summary = os.path.getmtime(os.path.join(runs[0].workdir, "summary.json"))
  monkeypatch.setattr(metrics_io.MetricWriter, "write_scalars", write)
  executed = []
  execute = sweep.execute
  monkeypatch.setattr(sweep, "execute", lambda run: executed.append(run.index) or execute(run))
  capsys.readouterr()
  assert sweep.run_all(sweep.make_units(sweep.build_runs(path, BASE, str(tmp_path / "sweep")), 1),
                       str(tmp_path / "sweep"))
  out = capsys.readouterr().out
  assert "2 runs, 1 finished, 1 to run (1 to resume)" in out
  assert executed == [1] and "Resumed from step 2" in out, out
  assert runs[1].done
  assert os.path.getmtime(os.path.join(runs[0].workdir, "summary.json")) == first_summary
  # What every study script reads of a run is in its summary (tests/test_studies.py).
  test_studies.assert_studies_read(runs[0])
  with open(os.path.join(runs[1].workdir, "summary.json")) as f:
    assert json.load(f)["steps"] == 4


def test_tiny_sweep_runs_end_to_end_in_parallel_and_tabulates(tmp_path):
  """The CLI with --parallel=2: each run in its own process (its progress in its own log), the
  runs' summaries, the table, the CSV and the plots; a rerun finds everything done. (In-process
  execution and resume: test_killed_sweep_resumes_without_redoing_finished_runs.) Amplification
  runs: each child compiles its own step, and amplification's is the quickest that calls H."""
  path = _sweep_file(tmp_path, [dict(TINY, num_steps=2, seed=0, mode="amplification"),
                                dict(TINY, num_steps=2, seed=1, mode="amplification",
                                     **{"debate.call_prob": 0.5})])
  workdir = tmp_path / "sweep"
  result = _cli(f"--sweep={path}", f"--config={BASE}", f"--workdir={workdir}", "--parallel=2",
                timeout=900)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  pids = {line.split("(pid ")[1].rstrip(")") for line in result.stdout.splitlines()
          if "started" in line}
  assert len(pids) == 2, result.stdout
  runs = sweep.build_runs(path, BASE, str(workdir))
  assert [r.config.seed for r in runs] == [0, 1] and all(r.done for r in runs)
  assert runs[1].config.debate.call_prob == 0.5 and runs[0].config.debate.call_prob == 1.0
  for run in runs:
    with open(os.path.join(run.workdir, "sweep.log")) as f:
      assert "100%" in f.read()  # the child's own progress bar went to its log
  text = (workdir / "results.md").read_text()
  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["seed"] for r in rows] == ["0", "1"] and [r["debate.call_prob"] for r in rows] == ["", "0.500"]
  for row, run in zip(rows, runs):
    with open(os.path.join(run.workdir, "summary.json")) as f:
      summary = json.load(f)
    assert summary["steps"] == 2
    assert row["dataset"].startswith("amp_debate_eval/permutation") and row["status"] == "done"
    assert float(row["accuracy d0"]) == pytest.approx(summary["eval/accuracy/model/d0"], abs=1e-3)
    assert 0 < float(row["human calls / question"])
    assert float(row["wall time (s)"]) > 0
  # p = 0.5 calls the human about half as often as p = 1.
  calls = [float(r["human calls / question"]) for r in rows]
  assert calls[1] < 0.8 * calls[0], calls
  assert "| run | debate.call_prob | seed |" in text and "`model.d_model=32`" in text
  assert "| 1 |" in text and os.path.isfile(workdir / "accuracy.png")
  assert os.path.isfile(workdir / "curves.png")
  again = _cli(f"--sweep={path}", f"--config={BASE}", f"--workdir={workdir}", "--parallel=2")
  assert "2 runs, 2 finished, 0 to run" in again.stdout and "started" not in again.stdout


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "experiments",
                                                                               "sweeps"))
                                        if f.endswith(".py") and not f.startswith("_")))
def test_shipped_sweeps_build_on_every_task_at_runlocal(name, tmp_path):
  """Every shipped sweep file is runnable on every registered task's runlocal config: each run's
  config builds and passes the config's checks (nothing trains). A sweep whose runs name their
  own task (retune.py, task_suite.py) gets exactly those tasks whatever the base config's; one
  whose ``CONFIG`` is another config file (self_review.py) is built on that."""
  from amp_debate import tasks
  path = os.path.join(REPO, "experiments", "sweeps", f"{name}.py")
  own_tasks = {run["task"] for run in sweep.load_sweep(path) if "task" in run}
  expected = len(sweep.load_sweep(path))
  config = sweep.sweep_config(path)
  if not config.startswith("experiments/configs/default.py"):  # a study's own config file
    runs = sweep.build_runs(path, None, str(tmp_path))
    assert len(runs) == expected and len({r.name for r in runs}) == expected
    return
  for task in tasks.names():
    runs = sweep.build_runs(path, f"experiments/configs/default.py:task={task},runlocal",
                            str(tmp_path))
    assert len(runs) == expected
    assert {r.config.task for r in runs} == (own_tasks or {task})
    assert len({r.name for r in runs}) == expected


def test_plot_labels_name_only_what_varies_across_the_sweep():
  varying = ["debate.distinct_claims", "step.entropy_coef"]
  overrides = {"curriculum.kind": "fixed", "debate.distinct_claims": True, "seed": 2}
  assert sweep._label(overrides, varying, 2) == "distinct_claims=True,seed=2"  # pylint: disable=protected-access
  assert sweep._label({"curriculum.kind": "fixed"}, varying, 0) == "base,seed=0"  # pylint: disable=protected-access


def test_sweep_arg_base_config_run_names_and_the_workdir_placeholder(tmp_path):
  """``path.py:arg`` reaches ``get_sweep(arg)``; ``CONFIG`` is the base config when none is
  given; a run's ``name`` names its directory; ``{workdir}`` in a value becomes the sweep's
  workdir, while the run's overrides (its table row) keep the placeholder."""
  path = tmp_path / "chained.py"
  path.write_text(
      'CONFIG = "experiments/configs/default.py:task=union_find,runlocal"\n'
      "def get_sweep(arg=''):\n"
      "  n = int(arg.partition('=')[2] or 1)\n"
      "  return [{'name': 'first', 'seed': 0}] + [\n"
      "      {'seed': s, 'init_from': '{workdir}/first'} for s in range(1, n + 1)]\n")
  workdir = str(tmp_path / "w")
  runs = sweep.build_runs(f"{path}:n=2", None, workdir)
  assert [r.name for r in runs] == ["first", "seed=1,init_from=_workdir__first",
                                    "seed=2,init_from=_workdir__first"]
  assert {r.config.task for r in runs} == {"union_find"}
  assert runs[0].workdir == os.path.join(workdir, "first") and "name" not in runs[0].overrides
  assert runs[2].config.init_from == os.path.join(workdir, "first")
  assert runs[2].overrides["init_from"] == "{workdir}/first"
  assert len(sweep.build_runs(str(path), BASE, workdir)) == 2  # no arg; --config given
  assert sweep.build_runs(str(path), BASE, workdir)[0].config.task == "permutation"
  with pytest.raises(sweep.SweepError, match=r"get_sweep\('n=x'\) failed: ValueError"):
    sweep.build_runs(f"{path}:n=x", None, workdir)
  path.write_text("def get_sweep():\n  return [{'name': ''}]\n")
  with pytest.raises(sweep.SweepError, match="name must be a non-empty string"):
    sweep.load_sweep(str(path))


def test_override_checks_like_a_sweep_and_history_reads_a_runs_log(tmp_path):
  from experiments.configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config("task=permutation,quickstart")
  assert sweep.override(config, {"debate.call_prob": 0.5, "seed": 3}) is config
  assert config.debate.call_prob == 0.5 and config.seed == 3
  for bad, message in [({"debate.colour": 1}, "tiny: the config has no field 'debate.colour'"),
                       ({"debate": 1}, "'debate' is a section"),
                       ({"seed": "three"}, "'seed' must be int")]:
    with pytest.raises(sweep.SweepError, match=message):
      sweep.override(config, bad, "tiny")
  rows = [{"step": 100, "eval/accuracy/model/min": 0.5}, {"step": 100, "loss": 1.0},
          {"step": 200, "eval/accuracy/model/min": 0.9},
          {"step": 200, "eval/accuracy/model/min": 0.97}]  # re-evaluated after a resume
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert sweep.history(str(tmp_path), "eval/accuracy/model/min") == [[100, 0.5], [200, 0.97]]
  assert sweep.history(str(tmp_path), "nope") == [] == sweep.history(str(tmp_path / "x"), "loss")
