"""Runs vmapped in one process (``train.run_group``) and the sweep's --vmap mode: a group's runs
match the same runs trained alone, grouping is exact (a run's own optimiser state equals the
group's with its hyperparameters set), a crashed vmapped sweep resumes its group from its runs'
checkpoints, and configs that cannot share a step are refused in one line."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import tiny
from amp_debate import sweep, train
from amp_debate.train import config_lib, metrics_io
from amp_debate.train import programs as group
from amp_debate.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, ".jax_cache", "eval_data")
BASE = "experiments/configs/default.py:task=permutation,quickstart"
SWEEPS = os.path.join(REPO, "experiments", "sweeps")


def _config(steps=4, **overrides):
  """tests/test_trainer.py's tiny run (eval and checkpoint every 2 steps)."""
  return tiny.config("hybrid", steps, **{
      "eval__examples_per_difficulty": 16, "eval__batch_size": 16, "eval__every": 2,
      "eval__data_dir": DATA_DIR, "checkpoint__every": 2, "eval__debates": False, **overrides})


def _max_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
      a, b)))


def test_a_group_matches_its_runs_trained_alone(tmp_path, capsys):
  """Two runs differing in seed, learning rate and λ_sup trained as one vmapped group end where
  each ends alone (parameters to float rounding, the evaluation exactly), and each run directory
  holds what a run alone writes, including a checkpoint the trainer resumes from."""
  configs = [_config(seed=0),
             _config(seed=1, optimizer__learning_rate=3e-3, combination__weights__sup=0.5)]
  workdirs = [str(tmp_path / "a"), str(tmp_path / "b")]
  results = train.run_group(configs, workdirs)
  assert [r.status for r in results] == ["done", "done"] and results[0].step == 4
  assert results[0].eval != results[1].eval  # different runs ...
  for config, workdir, result in zip(configs, workdirs, results):
    alone = train.run(config, workdir + "_alone")
    assert result.eval == alone.eval  # ... each exactly its run alone
    grouped_state, saved_config, step = train.load_state(workdir)
    alone_state, _, _ = train.load_state(workdir + "_alone")
    assert step == 4 and saved_config.seed == config.seed
    assert _max_diff(grouped_state.params, alone_state.params) < 1e-5
    assert int(grouped_state.step) == 4
    for name in ("metrics.jsonl", "results.md", "config.json", "curves.png"):
      assert os.path.isfile(os.path.join(workdir, name)), name
    logged = [r["step"] for r in metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
              if "loss/sup" in r]
    assert logged == [1, 2, 3, 4]
  # The learning rates really differed: each run's optimiser state carries its own.
  import optax  # pylint: disable=import-outside-toplevel
  rates = [float(optax.tree_utils.tree_get(train.load_state(w)[0].opt_state, "learning_rate"))
           for w in workdirs]
  assert rates == pytest.approx([1e-3, 3e-3])
  # A group cut off while saving its runs one by one (run b's step-4 checkpoint lost) resumes from
  # the last step both runs hold, replays to step 4 and ends exactly where it ended before.
  before = train.load_state(workdirs[1])[0].params
  shutil.rmtree(os.path.join(workdirs[1], "checkpoints", "4"))
  assert train.load_state(workdirs[1])[2] == 2
  capsys.readouterr()
  again = train.run_group(configs, workdirs)
  assert "Resumed the group of 2 runs from step 2" in capsys.readouterr().out
  assert [r.eval for r in again] == [r.eval for r in results]
  state, _, step = train.load_state(workdirs[1])
  assert step == 4 and _max_diff(state.params, before) == 0.0
  # A run of the group continues alone, from its own checkpoint.
  longer = _config(steps=6, seed=0)
  resumed = train.run(longer, workdirs[0])
  assert resumed.status == "done" and resumed.step == 6


def test_hparams_of_a_config_rebuild_its_own_optimiser_state():
  """For every kind of combination, a state built from one config's optimiser and given another
  config's ``config_lib.hparams`` equals the state that config's own optimiser builds (the exact
  condition for the two to share a group)."""
  for kind, changes in [
      ("weighted", dict(optimizer__learning_rate=3e-3, combination__weights__sup=0.5,
                        combination__weights_end__rl=0.0, combination__anneal_steps=7)),
      ("constrained", dict(combination__limit=0.3, combination__multiplier_lr=0.2,
                           combination__weights__cat=2.0)),
      ("shaped", dict(combination__beta=1.5, optimizer__learning_rate=2e-4))]:
    base = _config(combination__kind=kind)
    other = _config(combination__kind=kind, **changes)
    assert group.group_key(base) == group.group_key(other)
    built = []
    for config in (base, other):
      task = config_lib.make_task(config)
      model = config_lib.make_model(config, task)
      built.append((task, model, config_lib.make_optimizer(config),
                    config_lib.make_step_config(config)))
    (task, model, tx, step_config), (_, _, own_tx, _) = built
    rng = jax.random.key(0)
    shared = step_lib.init_state(task, model, tx, step_config, rng,
                                 hparams=config_lib.hparams(other))
    own = step_lib.init_state(task, model, own_tx, step_config, rng)
    assert jax.tree.structure(shared) == jax.tree.structure(own), kind
    assert _max_diff(shared.opt_state, own.opt_state) == 0.0, kind
    unchanged = step_lib.init_state(task, model, tx, step_config, rng)
    assert _max_diff(unchanged.opt_state, own.opt_state) > 0.0, kind  # the change is visible


def test_configs_that_cannot_share_a_step_are_refused_in_one_line(tmp_path):
  with pytest.raises(ValueError, match=r"runs 0 and 1 cannot share a compiled step: they differ "
                                       r"in debate\.call_prob"):
    train.run_group([_config(), _config(debate__call_prob=0.5)],
                    [str(tmp_path / "a"), str(tmp_path / "b")])
  assert not os.path.exists(tmp_path / "a")
  with pytest.raises(ValueError, match="num_steps"):
    group.check_group([_config(steps=4), _config(steps=6)])


def test_sweep_files_group_what_shares_a_step():
  """The shipped sweeps: seeds and data hyperparameters group, static settings do not."""
  def units(name, vmap):
    runs = sweep.build_runs(os.path.join(SWEEPS, name), BASE, "/nonexistent")
    return [[r.index for r in unit] for unit in sweep.make_units(runs, vmap)]

  # call_prob: mode x p x seed (p is static): 8 pairs of seeds.
  assert units("call_prob.py", 8) == [[2 * i, 2 * i + 1] for i in range(8)]
  # anneal: the three weight schedules are data, so all six runs share one step.
  assert units("anneal.py", 8) == [[0, 1, 2, 3, 4, 5]]
  assert units("anneal.py", 4) == [[0, 1, 2, 3], [4, 5]]
  assert units("anneal.py", 1) == [[i] for i in range(6)]


def test_vmapped_sweep_resumes_its_group_after_a_crash(tmp_path, monkeypatch, capsys):
  """A sweep of 3 runs with --vmap: two seeds share a group, a third setting runs alone. The
  sweep dies inside the group after its step-2 checkpoint; the rerun resumes the group from step 2
  (not from scratch), then runs the third, and tabulates all three."""
  runs_spec = [{**_tiny_overrides(), "seed": 0}, {**_tiny_overrides(), "seed": 1},
               {**_tiny_overrides(), "seed": 0, "debate.call_prob": 0.5}]
  path = tmp_path / "s.py"
  path.write_text("def get_sweep():\n  return " + repr(runs_spec) + "\n")
  workdir = str(tmp_path / "sweep")
  runs = sweep.build_runs(str(path), BASE, workdir)
  units = sweep.make_units(runs, 4)
  assert [[r.index for r in u] for u in units] == [[0, 1], [2]]
  write = metrics_io.MetricWriter.write_scalars

  def crash(self, step, scalars):
    if self.logdir == runs[1].workdir and step >= 3:
      raise KeyboardInterrupt("killed")
    return write(self, step, scalars)

  monkeypatch.setattr(metrics_io.MetricWriter, "write_scalars", crash)
  with pytest.raises(KeyboardInterrupt):
    sweep.run_all(units, workdir)
  assert not any(r.done for r in runs)
  monkeypatch.setattr(metrics_io.MetricWriter, "write_scalars", write)
  capsys.readouterr()
  runs = sweep.build_runs(str(path), BASE, workdir)
  assert sweep.run_all(sweep.make_units(runs, 4), workdir)
  out = capsys.readouterr().out
  assert "3 runs, 0 finished, 3 to run" in out and "2 of them vmapped in groups" in out
  assert "Resumed the group of 2 runs from step 2" in out, out
  assert all(r.done for r in runs)
  for run in runs[:2]:
    with open(os.path.join(run.workdir, "summary.json")) as f:
      summary = json.load(f)
    assert summary["vmap_group"] == [0, 1] and summary["steps"] == 4
    steps = [r["step"] for r in metrics_io.read_jsonl(os.path.join(run.workdir, "metrics.jsonl"))
             if "loss/sup" in r]
    assert steps == [1, 2, 3, 4], steps  # step 3 (logged by run 0 before the crash) once
  text = sweep.aggregate(runs, workdir, "vmapped")
  assert text.count("| done |") == 3


def _tiny_overrides():
  from test_sweep import TINY  # pylint: disable=import-outside-toplevel
  return dict(TINY, num_steps=4)
