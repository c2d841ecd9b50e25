"""The training loop: outputs, evaluation, resume (in process and after SIGTERM), refusals, NaN."""

import os
import signal
import threading

import jax
import numpy as np
import pytest

import tiny
from amp_debate import train
from amp_debate.train import checkpoint as checkpoint_lib
from amp_debate.train import config_lib, evaluation, metrics_io
from amp_debate.train import programs as programs_lib
from amp_debate.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, ".jax_cache", "eval_data")  # built once, reused by every test here


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
    train.run(config(steps=4, step__clip_eps=0.3), workdir)
  result = train.run(config(steps=3, step__clip_eps=0.3, resume_allow_unsafe=True,
                            eval__every=0), workdir)
  assert result.step == 3


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
