"""Metric output: TensorBoard event files (written by tensorboardX, read back with the
``tensorboard`` package, which runs without TensorFlow), JSONL log, progress bar (tqdm), tables,
plots."""

import io
import json
import math
import os
import re
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tqdm

from amp_debate.train import metrics_io

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
from tensorboard.backend.event_processing import event_file_loader  # noqa: E402


class FakeClock:
  """A clock that moves only when told (or by ``tick`` on every call)."""

  def __init__(self, start=1_700_000_000.0, tick=0.0):
    self.now, self.tick = start, tick

  def __call__(self):
    self.now += self.tick
    return self.now


# --- JSONL -----------------------------------------------------------------------------------


def test_jsonl_round_trip_with_nonfinite_and_truncated_last_line(tmp_path):
  with metrics_io.JsonlWriter(tmp_path, clock=FakeClock(start=100.0)) as writer:
    writer.write_scalars(1, {"loss": 0.5, "n": np.int32(3), "f32": np.float32(0.25),
                             "jx": jnp.array(2.0), "bad": math.nan, "up": np.float64("inf"),
                             "down": -math.inf, "phase": "warmup"})
    # Each line reaches the file as it is written (no close needed).
    with open(writer.path) as f:
      line = f.read()
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {"step": 1, "time": 100.0, "loss": 0.5, "n": 3, "f32": 0.25,
                                "jx": 2.0, "bad": "nan", "up": "inf", "down": "-inf",
                                "phase": "warmup"}
    writer.write_scalars(2, {"loss": 0.25})
  assert writer.path == os.path.join(tmp_path, "metrics.jsonl")

  with open(writer.path, "a") as f:
    f.write('{"step": 3, "loss": 0.1')  # crash mid-write
  records = metrics_io.read_jsonl(writer.path)
  assert [r["step"] for r in records] == [1, 2]
  assert math.isnan(records[0]["bad"])
  assert (records[0]["up"], records[0]["down"]) == (math.inf, -math.inf)
  assert records[1] == {"step": 2, "time": 100.0, "loss": 0.25}

  # A resumed run first cuts the partial line off, then appends cleanly.
  with metrics_io.JsonlWriter(tmp_path, clock=FakeClock(start=200.0)) as writer:
    writer.write_scalars(3, {"loss": 0.125})
  records = metrics_io.read_jsonl(writer.path)
  assert [(r["step"], r["loss"]) for r in records] == [(1, 0.5), (2, 0.25), (3, 0.125)]


def test_read_jsonl_rejects_a_malformed_middle_line(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r"m\.jsonl:2: malformed"):
    metrics_io.read_jsonl(path)
  path.write_text('{"step": 1}\n{"step": 2}')  # complete last line without newline: kept
  assert metrics_io.read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_jsonl_rejects_reserved_names_and_non_scalars(tmp_path):
  with metrics_io.JsonlWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match="reserved"):
      writer.write_scalars(1, {"time": 1.0})
    with pytest.raises(ValueError, match="'v' must be a scalar"):
      writer.write_scalars(1, {"v": np.zeros(3)})
  assert metrics_io.read_jsonl(writer.path) == []


# --- MetricWriter: TensorBoard events and JSONL ---------------------------------------------


def _event_files(logdir):
  return sorted(os.path.join(logdir, f) for f in os.listdir(logdir) if ".tfevents." in f)


def _scalars(logdir):
  """{tag: [(step, value)]} of every event file in ``logdir``, via tensorboard's reader."""
  acc = event_accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_metric_writer_round_trips_tensorboard_scalars_and_jsonl_rows(tmp_path):
  f32 = lambda x: float(np.float32(x))
  written = [(0, {"loss": 1.5, "acc/train": 0.25, "level": 0}),
             (10, {"loss": 1 / 3, "acc/train": np.float32(0.5), "level": np.int32(1)}),
             (20, {"loss": jnp.array(0.1), "acc/train": math.nan, "level": 2, "big": 1e40})]
  with metrics_io.MetricWriter(tmp_path / "run") as writer:
    assert writer.active
    for step, scalars in written:
      writer.write_scalars(step, scalars)

  (path,) = _event_files(tmp_path / "run")
  assert re.fullmatch(r"events\.out\.tfevents\.\d{10}\." + re.escape(socket.gethostname()) +
                      rf"\.{os.getpid()}\.\d+", os.path.basename(path))
  scalars = _scalars(tmp_path / "run")
  assert sorted(scalars) == ["acc/train", "big", "level", "loss"]
  assert scalars["loss"] == [(0, 1.5), (10, f32(1 / 3)), (20, f32(0.1))]
  assert scalars["level"] == [(0, 0.0), (10, 1.0), (20, 2.0)]
  assert scalars["big"] == [(20, math.inf)]  # float32 overflow
  (acc0, acc1, (step2, acc2)) = scalars["acc/train"]
  assert (acc0, acc1, step2) == ((0, 0.25), (10, 0.5), 20) and math.isnan(acc2)
  events = list(event_file_loader.LegacyEventFileLoader(path).Load())
  assert events[0].file_version == "brain.Event:2"

  records = metrics_io.read_jsonl(tmp_path / "run" / "metrics.jsonl")
  assert all(isinstance(r.pop("time"), float) for r in records)
  assert records[:2] == [{"step": 0, "loss": 1.5, "acc/train": 0.25, "level": 0},
                         {"step": 10, "loss": 1 / 3, "acc/train": 0.5, "level": 1}]
  assert records[2]["loss"] == pytest.approx(0.1) and math.isnan(records[2]["acc/train"])
  assert (records[2]["step"], records[2]["level"], records[2]["big"]) == (20, 2, 1e40)
  assert len(records) == 3


def test_metric_writers_never_share_an_event_file(tmp_path):
  first = metrics_io.MetricWriter(tmp_path, jsonl=False)
  second = metrics_io.MetricWriter(tmp_path, jsonl=False)  # same second, same process
  first.write_scalars(1, {"x": 1.0})
  second.write_scalars(2, {"x": 2.0})
  first.close()
  second.close()
  first.close()  # idempotent
  paths = _event_files(tmp_path)
  assert len(paths) == 2 and not os.path.exists(tmp_path / "metrics.jsonl")
  steps = [[e.step for e in event_file_loader.LegacyEventFileLoader(p).Load()
            if e.HasField("summary")] for p in paths]
  assert sorted(steps) == [[1], [2]]
  with pytest.raises(ValueError, match="closed"):
    first.write_scalars(3, {"x": 3.0})


def test_metric_writer_rejects_non_scalars(tmp_path):
  with metrics_io.MetricWriter(tmp_path) as writer:
    with pytest.raises(ValueError, match="'v' must be a scalar"):
      writer.write_scalars(1, {"v": np.zeros(3)})
  assert metrics_io.read_jsonl(tmp_path / "metrics.jsonl") == []
  assert _scalars(tmp_path) == {}


def test_metric_writer_is_a_no_op_on_other_processes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with metrics_io.MetricWriter(tmp_path / "run") as writer:
    assert not writer.active
    writer.write_scalars(1, {"loss": 0.5})
    writer.flush()
  assert not (tmp_path / "run").exists()


# --- ProgressBar -----------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch):
  """A fake clock for tqdm, which reads the time through the name ``time`` in ``tqdm.std``."""
  fake = FakeClock(start=0.0)
  monkeypatch.setattr(tqdm.std, "time", fake)
  return fake


def test_progress_bar_non_tty_prints_a_few_full_lines(clock):
  stream = io.StringIO()
  bar = metrics_io.ProgressBar(40, stream=stream, desc="hybrid arith", log_every_s=2.0)
  for step in range(1, 41):
    clock.now += 0.25  # 4 steps/s
    bar.update(step, {"loss": jnp.array(1 / step), "acc": np.float32(0.75), "level": 2})
  bar.close()
  bar.close()
  out = stream.getvalue()
  assert "\r" not in out and out.endswith("\n")
  lines = out.splitlines()
  # At construction, then whenever 2 s passed since the last line; close() repeats no line.
  assert [int(re.search(r"(\d+)/40", l).group(1)) for l in lines] == [0, 8, 16, 24, 32, 40]
  assert lines[0] == "hybrid arith:   0%|          | 0/40 [00:00<?, ?steps/s]"
  assert lines[2] == ("hybrid arith:  40%|####      | 16/40 [00:04<00:06,  4.00steps/s, "
                      "loss=0.0625, acc=0.75, level=2]")
  assert lines[-1] == ("hybrid arith: 100%|##########| 40/40 [00:10<00:00,  4.00steps/s, "
                       "loss=0.025, acc=0.75, level=2]")


def test_progress_bar_rate_counts_only_this_process_steps(clock):
  stream = io.StringIO()
  with metrics_io.ProgressBar(1000, initial=500, stream=stream, log_every_s=4.0) as bar:
    assert bar.step == 500
    for step in range(501, 581):
      clock.now += 0.0625 if step <= 540 else 0.1875  # 16 steps/s, then 5.33 steps/s
      bar.update(step)
    assert bar.step == 580
  # The average over the steps done here (not counting the 500 before, and not a moving
  # average): 48 in 4 s, 70 in 8.125 s, 80 in 10 s (so the ETA for the 420 left is 52.5 s).
  assert stream.getvalue().splitlines() == [
      " 50%|#####     | 500/1000 [00:00<?, ?steps/s]",
      " 55%|#####4    | 548/1000 [00:04<00:37, 12.00steps/s]",
      " 57%|#####6    | 570/1000 [00:08<00:49,  8.62steps/s]",
      " 58%|#####8    | 580/1000 [00:10<00:52,  8.00steps/s]"]


def test_progress_bar_shows_seconds_per_step_when_slow(clock):
  stream = io.StringIO()
  with metrics_io.ProgressBar(10, stream=stream) as bar:
    clock.now += 2.0
    bar.update(1, {"phase": "rl"})
  assert stream.getvalue().splitlines()[-1] == (
      " 10%|#         | 1/10 [00:02<00:18,  2.00s/steps, phase=rl]")


class FakeTTY(io.StringIO):

  def isatty(self):
    return True


def test_progress_bar_tty_redraws_in_place_rate_limited(clock):
  stream = FakeTTY()
  with metrics_io.ProgressBar(100, stream=stream, min_interval_s=0.1) as bar:
    for step in range(1, 101):
      clock.now += 1 / 128  # 100 updates in ~0.8 s -> about 8 redraws
      bar.update(step, {"phase": "rl"})
    assert "\n" not in stream.getvalue()
  out = stream.getvalue()
  assert out.endswith("\n") and out.count("\n") == 1
  assert 7 <= out.count("\r") <= 11
  last = out.rsplit("\r", 1)[1]
  assert re.fullmatch(r"100%\|\S{10}\| 100/100 \[00:00<00:00, 128\.00steps/s, phase=rl\]\n",
                      last), last


# --- tables, non-finite, plots ---------------------------------------------------------------


def test_markdown_table_exact():
  table = metrics_io.markdown_table(
      ["mode", "acc", "steps", "ok"],
      [["hybrid", 0.91234, 1000, True], ["a|b", np.float32(0.5), np.int64(7), False],
       ["dbt", jnp.array(1 / 3), None, "x"]])
  assert table == (
      "| mode   | acc   | steps | ok    |\n"
      "| ------ | ----- | ----- | ----- |\n"
      "| hybrid | 0.912 | 1000  | True  |\n"
      "| a\\|b   | 0.500 | 7     | False |\n"
      "| dbt    | 0.333 | None  | x     |")
  assert metrics_io.markdown_table(["x"], [[2.0]], float_format=".1e") == (
      "| x       |\n| ------- |\n| 2.0e+00 |")
  with pytest.raises(ValueError, match="row 0 has 1 cells, expected 2"):
    metrics_io.markdown_table(["a", "b"], [[1]])


def test_nonfinite():
  metrics = {
      "py_ok": 1.0, "py_nan": math.nan, "py_inf": -math.inf,
      "np_ok": np.float32(2.0), "np_inf": np.float32("inf"), "np_nan": np.float64("nan"),
      "jax_ok": jnp.array(3.0), "jax_nan": jnp.array(jnp.nan), "jax_inf": jnp.array(jnp.inf),
      "bf16_nan": jnp.array(jnp.nan, jnp.bfloat16), "vec": np.array([1.0, np.nan]),
      "int": 3, "np_int": np.int32(4), "bool": True, "text": "nan",
  }
  assert metrics_io.nonfinite(metrics) == [
      "bf16_nan", "jax_inf", "jax_nan", "np_inf", "np_nan", "py_inf", "py_nan", "vec"]
  assert metrics_io.nonfinite({}) == []


def _log(tmp_path):
  path = tmp_path / "metrics.jsonl"
  with metrics_io.JsonlWriter(tmp_path) as writer:
    for step in range(5):
      writer.write_scalars(step, {"loss": 1.0 / (step + 1), "acc": step / 5})
  return path


def test_plot_curves_without_matplotlib(tmp_path, monkeypatch):
  path = _log(tmp_path)
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
  assert metrics_io.plot_curves(path, tmp_path / "p.png", ["loss"]) is None
  assert not (tmp_path / "p.png").exists()


def test_plot_curves_with_matplotlib(tmp_path):
  pytest.importorskip("matplotlib")
  path = _log(tmp_path)
  out = metrics_io.plot_curves(path, tmp_path / "plots" / "curves.png", ["loss", "acc", "gone"])
  assert out == str(tmp_path / "plots" / "curves.png")
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_module_imports_neither_tensorflow_nor_optional_packages():
  """The whole training stack (trainer, TFDS eval sets, metrics) runs without TensorFlow, and the
  optional packages are imported only when used (tqdm is a TFDS dependency, so not checked).
  Writing metrics imports tensorboardX, which must not bring TensorFlow or TensorBoard either."""
  code = ("import sys, tempfile, amp_debate.train, amp_debate.train.metrics_io as m\n"
          "heavy = {'tensorflow', 'tensorboard', 'matplotlib', 'torch'}\n"
          "loaded = lambda: {n.split('.')[0] for n in sys.modules}\n"
          "bad = sorted(loaded() & (heavy | {'tensorboardX'}))\n"
          "assert not bad, bad\n"
          "with m.MetricWriter(tempfile.mkdtemp()) as w:\n"
          "  w.write_scalars(1, {'loss': 0.5})\n"
          "assert 'tensorboardX' in loaded()\n"
          "bad = sorted(loaded() & heavy)\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(__file__) + "/..",
                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
