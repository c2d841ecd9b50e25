"""The training loop: outputs, evaluation, resume (in process and after SIGTERM), refusals, NaN, and
several runs as one group (``train.run_group``)."""

import json
import os
import shutil
import signal
import threading

import jax
import numpy as np
import pytest

import tiny
from amp_debate import sweep, train
from amp_debate.train import checkpoint as checkpoint_lib
from amp_debate.train import config_lib, evaluation, metrics_io
from amp_debate.train import programs as programs_lib
from amp_debate.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, ".jax_cache", "eval_data")  # built once, reused by every test here
BASE = "experiments/configs/default.py:task=permutation,quickstart"
SWEEPS = os.path.join(REPO, "experiments", "sweeps")


def _config(mode="hybrid", steps=4, **overrides):
  """The tiny run (tests/tiny.py) with a 16-question-per-level eval set every 2 steps and a
  checkpoint every 2 steps."""
  return tiny.config(mode, steps, **{
      "eval__examples_per_difficulty": 16, "eval__batch_size": 16, "eval__every": 2,
      "eval__data_dir": DATA_DIR, "checkpoint__every": 2, **overrides})


def _restore_params(workdir, step=None):
  state, _, step = train.load_state(workdir, step)
  return step, state.params


def _assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_hybrid_run_writes_logs_checkpoints_and_a_result_table(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  result = train.run(_config(), workdir)
  assert result.status == "done" and result.step == 4
  ev = result.eval
  assert ev["eval/accuracy/h_alone/d0"] == 1.0  # H is exact at leaves ...
  assert ev["eval/accuracy/h_alone/d1"] < 1.0  # ... and not above them
  for level in range(3):
    assert 0.0 <= ev[f"eval/accuracy/model/d{level}"] <= 1.0
    assert 1.0 <= ev[f"eval/debate/length/d{level}"] <= 4.0
    wins = sum(ev[f"eval/debate/win_{s}/d{level}"] for s in ("even", "odd", "draw"))
    assert wins == pytest.approx(1.0)
  records = metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train_steps = [r["step"] for r in records if "loss/sup" in r]
  assert train_steps == [1, 2, 3, 4]
  # Training time starts after the first step (its compile) and never runs backwards.
  seconds = [r["perf/train_seconds"] for r in records if "loss/sup" in r]
  assert seconds[0] < 1.0 and seconds == sorted(seconds) and seconds[-1] > 0
  assert all(np.isfinite(r["loss/sup"]) for r in records if "loss/sup" in r)
  assert any("eval/accuracy/model/mean" in r for r in records)
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  with checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    assert ckpt.all_steps() == [2, 4]
    assert ckpt.saved_config()["task_options"] == {"n": 4, "max_exponent": 4}
  # Debate honesty at every eval, judged by H: M in both seats against each scripted liar, with its
  # own claims (and Amp(H, M) claims against the consistent liar; the tiny run has the learned stop).
  games = [("own", liar) for liar in evaluation.LIARS] + [("amp", "consistent"), ("stop", "consistent")]
  for source, liar in games:
    for seat in ("even", "odd"):
      for level in range(3):
        get = lambda what: ev[f"eval/honesty/{source}/{liar}/{seat}/{what}/d{level}"]
        assert 0.0 <= get("win") + get("loss") <= 1.0 + 1e-6
        assert 0.0 <= get("concede_false") <= 1.0 and 0.0 <= get("claim_true") <= 1.0
      # M's own claim is its greedy answer: claim_true is its accuracy, in either seat.
      if source == "own":
        assert ev[f"eval/honesty/own/{liar}/{seat}/claim_true/d0"] == pytest.approx(
            ev["eval/accuracy/model/d0"])
  # A leaf root is decided by H at once: M wins exactly where its own claim is true.
  assert ev["eval/honesty/own/consistent/even/win/d0"] == pytest.approx(
      ev["eval/accuracy/model/d0"])
  table = open(os.path.join(workdir, "results.md")).read()
  assert "| difficulty" in table and "H alone" in table and "amp_debate_eval/permutation" in table
  assert "Debate honesty, judged by H" in table and "wins vs plausible liar" in table
  assert "Human calls per training question" in table and "leaves" in table
  assert "supervised (reference)" not in table  # no reference given
  assert "H alone" in capsys.readouterr().out


def test_resume_continues_exactly(tmp_path, capsys):
  straight = str(tmp_path / "straight")
  train.run(_config(steps=4, checkpoint__every=4), straight)
  resumed = str(tmp_path / "resumed")
  train.run(_config(steps=2, checkpoint__every=4), resumed)  # stops (and saves) at step 2
  # num_steps is a safe change. A reference for this eval set adds its column to the table.
  name = "amp_debate_eval/permutation+max_exponent-4+n-4+examples_per_difficulty-16:2.0.0"
  reference = {name: {"0": 0.125, "1": 0.375, "mean": 0.625}, "amp_debate_eval/other:1.0.0": {}}
  result = train.run(_config(steps=4, checkpoint__every=4), resumed, reference=reference)
  assert result.step == 4 and "Resumed from step 2" in capsys.readouterr().out
  assert "supervised (reference)" in result.table
  assert "0.125" in result.table and "0.375" in result.table and "0.625" in result.table
  _assert_trees_equal(_restore_params(straight)[1], _restore_params(resumed)[1])


def test_resume_with_a_changed_model_or_task_is_refused(tmp_path):
  # The refusal does not depend on the mode; the supervised step compiles in a fraction of the time.
  config = lambda **kw: _config(mode="supervised", **kw)
  workdir = str(tmp_path / "run")
  train.run(config(steps=2, eval__every=0), workdir)
  with pytest.raises(config_lib.ConfigError, match="model.d_model"):
    train.run(config(steps=4, model__d_model=64), workdir)
  with pytest.raises(config_lib.ConfigError, match="task_options"):
    train.run(config(steps=4, task_options__n=5), workdir)
  with pytest.raises(config_lib.ConfigError, match="resume_allow_unsafe"):
    train.run(config(steps=4, optimizer__learning_rate=3e-3), workdir)
  # Allowed, the new learning rate takes effect (it is data in the state: the step is not rebuilt).
  result = train.run(config(steps=3, optimizer__learning_rate=3e-3, resume_allow_unsafe=True,
                            eval__every=0), workdir)
  assert result.step == 3
  import optax  # pylint: disable=import-outside-toplevel
  state = train.load_state(workdir)[0]
  assert float(optax.tree_utils.tree_get(state.opt_state, "learning_rate")) == pytest.approx(3e-3)


def test_nan_fails_fast_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  real = step_lib.build_supervised_step

  def poisoned(*args, **kwargs):
    step_fn = real(*args, **kwargs)

    def step(state, rng):
      state, metrics = step_fn(state, rng)
      bad = jax.numpy.where(state.step >= 3, jax.numpy.nan, 0.0)
      return state, {**metrics, "loss/sup": metrics["loss/sup"] + bad}
    return step

  monkeypatch.setattr(step_lib, "build_supervised_step", poisoned)
  monkeypatch.setattr(programs_lib, "_PROGRAMS", {})  # not an unpoisoned step built by an earlier test
  workdir = str(tmp_path / "run")
  with pytest.raises(train.TrainingDiverged, match=r"step 3: loss/sup became NaN"):
    train.run(_config(mode="supervised", steps=6, eval__every=0), workdir)
  with checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    assert ckpt.all_steps() == [2]


def test_sigterm_saves_and_a_rerun_resumes_bitwise(tmp_path, monkeypatch, capsys):
  """A real SIGTERM to this process while step 2 is logged: the trainer's handler sets its flag, the
  run saves at the next step boundary (step 3) and returns "preempted"; a rerun resumes there and
  ends bitwise where the run without the signal ends. In-process, so both runs reuse one compiled
  step; SIGTERM reaching separate processes (and the CLI's exit) is
  tests/test_multiprocess_preemption.py's."""
  assert threading.current_thread() is threading.main_thread()  # else SIGTERM would kill pytest
  steps = 6
  # Only the final evaluation runs; its debates (a large program) are not what this test is about.
  config = _config(steps=steps, eval__every=0, eval__debates=False, checkpoint__every=1000)
  straight = str(tmp_path / "straight")
  train.run(config, straight)

  workdir = str(tmp_path / "killed")
  write = metrics_io.MetricWriter.write_scalars
  handler_before = signal.getsignal(signal.SIGTERM)

  def signal_at_step_2(self, step, scalars):
    write(self, step, scalars)
    if step == 2 and "loss/sup" in scalars:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(metrics_io.MetricWriter, "write_scalars", signal_at_step_2)
  capsys.readouterr()
  result = train.run(config, workdir)
  assert result.status == "preempted" and result.step == 3
  assert "SIGTERM: saved step 3" in capsys.readouterr().out
  assert _restore_params(workdir)[0] == 3
  assert signal.getsignal(signal.SIGTERM) is handler_before  # the trainer's handler is removed

  monkeypatch.setattr(metrics_io.MetricWriter, "write_scalars", write)
  rerun = train.run(config, workdir)
  assert rerun.status == "done" and "Resumed from step 3" in capsys.readouterr().out
  final_step, params = _restore_params(workdir)
  assert final_step == steps
  _assert_trees_equal(_restore_params(straight)[1], params)
  steps_logged = [r["step"] for r in metrics_io.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
                  if "loss/sup" in r]
  assert steps_logged == list(range(1, steps + 1))  # the replayed step logged once


def test_config_errors_stop_before_compiling(tmp_path):
  config = _config()
  config.debate.t_max = 0
  with pytest.raises(config_lib.ConfigError, match="debate.t_max"):
    train.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_evaluation_debates_use_one_protocol_in_every_mode():
  """An amplification run trains with one-argument debates; its honesty is still measured in full
  debates (no forced stop, room to reach a leaf), like every other mode's."""
  from amp_debate.procedure import debate
  for mode in ("amplification", "hybrid", "debate"):
    config = _config(mode)
    task = config_lib.make_task(config)
    step_config = config_lib.make_step_config(config)
    played = evaluation.eval_debate_config(task, step_config.debate)
    assert played.force_stop_after is None and played.contested and played.assign_prob == 0
    assert played.t_max >= 2 + 2 * task.max_difficulty
    assert played.call_prob == step_config.debate.call_prob
  assert isinstance(played, debate.DebateConfig)


# ---- groups: several runs in one program (``train.run_group``; a single run is a group of one) ----
# A group's runs match the same runs trained alone, grouping is exact (a run's own optimiser state
# equals the group's with its hyperparameters set), a crashed vmapped sweep resumes its group from
# its runs' checkpoints, and configs that cannot share a step are refused in one line. In this
# module so that they reuse the single-run programs the tests above compiled.

def _group_config(steps=4, mode="hybrid", **overrides):
  """The tiny run (hybrid: the same compiled step as ``_config``'s) without debates in its
  evaluation."""
  return _config(mode, steps, **{"eval__debates": False, **overrides})


def _max_diff(a, b) -> float:
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
      a, b)))


def test_a_group_matches_its_runs_trained_alone(tmp_path, capsys):
  """Two runs differing in seed, learning rate and λ_sup trained as one vmapped group end where
  each ends alone (parameters to float rounding, the evaluation exactly), and each run directory
  holds what a run alone writes, including a checkpoint the trainer resumes from. On the
  supervised step: the group's bookkeeping does not depend on the mode, and the vmapped hybrid
  step is run by the vmapped sweep test below (and compared with runs stepped alone in
  tests/test_step.py)."""
  group = lambda **kw: _group_config(mode="supervised", **kw)
  configs = [group(seed=0),
             group(seed=1, optimizer__learning_rate=3e-3, combination__weights__sup=0.5)]
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
  longer = group(steps=6, seed=0)
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
    base = _group_config(combination__kind=kind)
    other = _group_config(combination__kind=kind, **changes)
    assert programs_lib.group_key(base) == programs_lib.group_key(other)
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
    train.run_group([_group_config(), _group_config(debate__call_prob=0.5)],
                    [str(tmp_path / "a"), str(tmp_path / "b")])
  assert not os.path.exists(tmp_path / "a")
  with pytest.raises(ValueError, match="num_steps"):
    programs_lib.check_group([_group_config(steps=4), _group_config(steps=6)])


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
  """A sweep of 3 runs with --vmap: two seeds share a group, a third setting runs alone (another
  logging cadence: a host-side field, so it cannot join the group but reuses the programs). The
  sweep dies inside the group after its step-2 checkpoint; the rerun resumes the group from step 2
  (not from scratch), then runs the third, and tabulates all three. Hybrid runs: the trainer's
  vmapped hybrid step, end to end (the group test above trains the supervised one)."""
  runs_spec = [{**_tiny_overrides(), "seed": 0}, {**_tiny_overrides(), "seed": 1},
               {**_tiny_overrides(), "seed": 0, "log_every": 2}]
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
