"""Metric output: TensorBoard event files (read back with the ``tensorboard`` package, which runs
without TensorFlow and checks both CRCs of every record), JSONL log, progress bar, tables, plots."""

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

from amp_debate.train import metrics_io

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
from tensorboard.backend.event_processing import event_file_loader  # noqa: E402
from tensorboard.compat.tensorflow_stub import errors as tb_errors  # noqa: E402
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as tb_records  # noqa: E402


class FakeClock:
  """A clock that moves only when told (or by ``tick`` on every call)."""

  def __init__(self, start=1_700_000_000.0, tick=0.0):
    self.now, self.tick = start, tick

  def __call__(self):
    self.now += self.tick
    return self.now


def _raw_records(path):
  """Record payloads via tensorboard's own TFRecord reader (verifies both masked CRC32Cs)."""
  reader = tb_records.PyRecordReader_New(path)
  out = []
  while True:
    try:
      reader.GetNext()
    except tb_errors.OutOfRangeError:
      return out
    out.append(reader.record())


# --- CRC32C and protobuf encoding ------------------------------------------------------------


def test_crc32c_test_vectors():
  assert metrics_io.crc32c(b"123456789") == 0xE3069283
  assert metrics_io.crc32c(b"") == 0
  assert metrics_io.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4
  assert metrics_io.crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4
  assert metrics_io.crc32c(b"6789", metrics_io.crc32c(b"12345")) == 0xE3069283


def test_masked_crc_matches_tensorboard():
  rng = np.random.default_rng(0)
  for n in (0, 1, 7, 8, 100):
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    assert metrics_io.masked_crc32c(data) == tb_records.masked_crc32c(data)


def test_varint():
  assert metrics_io._varint(0) == b"\x00"
  assert metrics_io._varint(1) == b"\x01"
  assert metrics_io._varint(300) == b"\xac\x02"
  assert metrics_io._varint(-1) == b"\xff" * 9 + b"\x01"


def test_encode_event_parses_with_tensorboard_protos():
  from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
  header = event_pb2.Event.FromString(
      metrics_io.encode_event(12.5, 0, file_version="brain.Event:2"))
  assert (header.wall_time, header.step, header.file_version) == (12.5, 0, "brain.Event:2")
  data = metrics_io.encode_event(13.25, -3, scalars={"a/b": 0.1, "c": 1e40, "ü": -2.0})
  event = event_pb2.Event.FromString(data)
  assert (event.wall_time, event.step, event.file_version) == (13.25, -3, "")
  assert [(v.tag, v.simple_value) for v in event.summary.value] == [
      ("a/b", float(np.float32(0.1))), ("c", math.inf), ("ü", -2.0)]
  assert event_pb2.Event.FromString(metrics_io.encode_event(1.0, 2**40)).step == 2**40
  with pytest.raises(ValueError, match="not both"):  # members of the proto's `oneof what`
    metrics_io.encode_event(1.0, 0, file_version="brain.Event:2", scalars={"x": 1.0})


# --- TensorBoard writer ----------------------------------------------------------------------


def _write_example(logdir, clock):
  written = [(0, {"loss": 1.5, "acc/train": 0.25}),
             (10, {"loss": 1 / 3, "acc/train": np.float32(0.5)}),
             (20, {"loss": jnp.array(0.1), "acc/train": math.nan, "big": 1e40})]
  with metrics_io.TensorBoardWriter(logdir, clock=clock) as writer:
    for step, scalars in written:
      writer.write_scalars(step, scalars)
  return writer.path, written


def test_tensorboard_event_file_round_trip(tmp_path):
  clock = FakeClock(tick=1.0)
  path, _ = _write_example(tmp_path, clock)
  assert os.path.dirname(path) == str(tmp_path)
  assert re.fullmatch(r"events\.out\.tfevents\.\d{10}\." + re.escape(socket.gethostname()),
                      os.path.basename(path))

  # The legacy loader yields the Event protos as stored (EventFileLoader would migrate
  # simple_value into a tensor).
  events = list(event_file_loader.LegacyEventFileLoader(path).Load())
  assert len(events) == 4
  assert events[0].file_version == "brain.Event:2"
  assert not events[0].HasField("summary")
  assert [e.step for e in events[1:]] == [0, 10, 20]
  assert all(a.wall_time < b.wall_time for a, b in zip(events, events[1:]))
  f32 = lambda x: float(np.float32(x))
  values = [[(v.tag, v.simple_value) for v in e.summary.value] for e in events[1:]]
  assert values[:2] == [[("loss", 1.5), ("acc/train", 0.25)],
                        [("loss", f32(1 / 3)), ("acc/train", 0.5)]]
  (tag0, loss), (tag1, acc), (tag2, big) = values[2]
  assert (tag0, tag1, tag2) == ("loss", "acc/train", "big")
  assert loss == f32(0.1) and math.isnan(acc) and big == math.inf

  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert sorted(acc.Tags()["scalars"]) == ["acc/train", "big", "loss"]
  assert [(s.step, s.value) for s in acc.Scalars("loss")] == [
      (0, 1.5), (10, f32(1 / 3)), (20, f32(0.1))]
  assert [s.step for s in acc.Scalars("acc/train")] == [0, 10, 20]
  assert acc.file_version == 2.0


def test_tensorboard_records_have_valid_crcs_and_corruption_is_detected(tmp_path):
  path, _ = _write_example(tmp_path, FakeClock(tick=1.0))
  records = _raw_records(path)
  assert len(records) == 4
  with open(path, "rb") as f:
    raw = f.read()
  assert raw == b"".join(metrics_io.tfrecord(r) for r in records)
  assert len(raw) == sum(16 + len(r) for r in records)

  corrupted = bytearray(raw)
  corrupted[len(raw) - 10] ^= 0x01  # inside the last record's data
  with open(path, "wb") as f:
    f.write(corrupted)
  with pytest.raises(tb_errors.DataLossError, match="event crc32"):
    _raw_records(path)


def test_tensorboard_writer_never_shares_a_file(tmp_path):
  clock = FakeClock()  # frozen: both writers get the same timestamp
  first = metrics_io.TensorBoardWriter(tmp_path, clock=clock)
  second = metrics_io.TensorBoardWriter(tmp_path, clock=clock)
  first.write_scalars(1, {"x": 1.0})
  second.write_scalars(2, {"x": 2.0})
  first.close()
  second.close()
  assert second.path == first.path + ".1"
  assert [e.step for e in event_file_loader.EventFileLoader(second.path).Load()] == [0, 2]
  with pytest.raises(ValueError, match="closed"):
    first.write_scalars(3, {"x": 3.0})


def test_tensorboard_writer_flushes_after_flush_secs(tmp_path):
  clock = FakeClock()
  writer = metrics_io.TensorBoardWriter(tmp_path, clock=clock, flush_secs=5.0)
  size = os.path.getsize(writer.path)
  writer.write_scalars(1, {"x": 1.0})
  assert os.path.getsize(writer.path) == size  # buffered
  clock.now += 5.0
  writer.write_scalars(2, {"x": 2.0})
  assert [e.step for e in event_file_loader.EventFileLoader(writer.path).Load()] == [0, 1, 2]
  writer.close()


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


# --- MetricWriter ----------------------------------------------------------------------------


def test_metric_writer_writes_both_on_process_0(tmp_path):
  with metrics_io.MetricWriter(tmp_path / "run") as writer:
    assert writer.active
    writer.write_scalars(7, {"loss": jnp.array(0.5), "acc": np.float32(0.75), "level": 2})
  files = sorted(os.listdir(tmp_path / "run"))
  assert files[0] == "events.out.tfevents." + files[0].split(".", 3)[3] and len(files) == 2
  (record,) = metrics_io.read_jsonl(tmp_path / "run" / "metrics.jsonl")
  assert {k: v for k, v in record.items() if k != "time"} == {
      "step": 7, "loss": 0.5, "acc": 0.75, "level": 2}
  acc = event_accumulator.EventAccumulator(str(tmp_path / "run"))
  acc.Reload()
  assert [(s.step, s.value) for s in acc.Scalars("level")] == [(7, 2.0)]
  assert [(s.step, s.value) for s in acc.Scalars("loss")] == [(7, 0.5)]


def test_metric_writer_is_a_no_op_on_other_processes(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  with metrics_io.MetricWriter(tmp_path / "run") as writer:
    assert not writer.active
    writer.write_scalars(1, {"loss": 0.5})
    writer.flush()
  assert not (tmp_path / "run").exists()


# --- ProgressBar -----------------------------------------------------------------------------


def test_progress_bar_non_tty_prints_a_few_full_lines():
  stream = io.StringIO()
  clock = FakeClock(start=0.0)
  bar = metrics_io.ProgressBar(1000, stream=stream, desc="train", clock=clock)
  for step in range(1, 1001):
    clock.now += 0.01  # 100 steps/s
    bar.update(step, {"loss": 1 / step, "acc": 0.95})
  bar.close()
  bar.close()
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  assert 10 <= len(lines) <= 12  # the first update, then one per 10%
  assert lines[0].startswith("train:    1/1000   0% [....................] ")
  assert lines[5] == ("train:  500/1000  50% [##########..........] 100 steps/s ETA 0:00:05 "
                      "loss 0.002 acc 0.95")
  assert lines[-1] == ("train: 1000/1000 100% [####################] 100 steps/s ETA 0:00:00 "
                       "loss 0.001 acc 0.95")


def test_progress_bar_rate_counts_only_this_process_steps():
  stream = io.StringIO()
  clock = FakeClock(start=50.0)
  bar = metrics_io.ProgressBar(1000, initial=500, stream=stream, clock=clock)
  for step in range(501, 601):
    clock.now += 0.1  # 10 steps/s since this process started
    bar.update(step)
  assert bar.rate() == pytest.approx(10.0)
  assert " 600/1000  60% [############........] 10.0 steps/s ETA 0:00:40" in stream.getvalue()
  clock = FakeClock(start=0.0)
  slow = metrics_io.ProgressBar(10, stream=io.StringIO(), clock=clock)
  assert slow.format_line().endswith("? steps/s ETA ?")  # no step done yet
  clock.now += 2.0
  slow.update(1)
  assert slow.format_line() == " 1/10  10% [##..................] 2.00 s/step ETA 0:00:18"


def test_progress_bar_non_tty_prints_every_few_seconds_when_slow():
  stream = io.StringIO()
  clock = FakeClock(start=0.0)
  bar = metrics_io.ProgressBar(1000, stream=stream, clock=clock, log_every_s=10.0)
  for step in range(1, 21):
    clock.now += 4.0
    bar.update(step)
  # 20 steps (2%) in 80 s: a line at step 1, then whenever >= 10 s passed since the last one.
  lines = stream.getvalue().splitlines()
  assert [int(re.match(r"\s*(\d+)/", l).group(1)) for l in lines] == [1, 4, 7, 10, 13, 16, 19]
  assert "0.25 steps/s" in lines[-1] or "4.00 s/step" in lines[-1]


class FakeTTY(io.StringIO):

  def isatty(self):
    return True


def test_progress_bar_tty_redraws_in_place_rate_limited(monkeypatch):
  monkeypatch.setenv("COLUMNS", "200")
  stream = FakeTTY()
  clock = FakeClock(start=0.0)
  with metrics_io.ProgressBar(100, stream=stream, clock=clock, min_interval_s=0.1) as bar:
    for step in range(1, 101):
      clock.now += 0.01  # 100 updates in 1 s -> ~10 redraws
      bar.update(step, {"phase": "rl"})
    assert "\n" not in stream.getvalue()
  out = stream.getvalue()
  assert out.endswith("\n") and out.count("\n") == 1
  assert 9 <= out.count("\r") <= 12
  last = out.rsplit("\r", 1)[1]
  assert last.startswith("100/100 100% [####################] 100 steps/s ETA 0:00:00 phase rl")


def test_progress_bar_tty_blanks_out_a_longer_previous_line(monkeypatch):
  monkeypatch.setenv("COLUMNS", "200")
  stream = FakeTTY()
  bar = metrics_io.ProgressBar(10, stream=stream, clock=FakeClock(start=0.0, tick=1.0))
  bar.update(1, {"note": "a long postfix"})
  bar.update(2, {})
  first, second = stream.getvalue().split("\r")[1:]
  assert len(second) == len(first) and second.endswith(" " * 10)


def test_progress_bar_tty_line_fits_the_terminal(monkeypatch):
  monkeypatch.setenv("COLUMNS", "40")  # a wrapped line would break '\r' redraws
  stream = FakeTTY()
  bar = metrics_io.ProgressBar(10, stream=stream, clock=FakeClock(start=0.0, tick=1.0))
  bar.update(1, {"loss": 0.5})
  assert stream.getvalue() == "\r" + " 1/10  10% [##..................] 1.00 steps/s"[:39]


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
  optional packages are imported only when used (tqdm is a TFDS dependency, so not checked)."""
  code = ("import sys, amp_debate.train, amp_debate.train.metrics_io\n"
          "bad = sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow', 'tensorboard', 'matplotlib'})\n"
          "assert not bad, bad\n")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(__file__) + "/..",
                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
