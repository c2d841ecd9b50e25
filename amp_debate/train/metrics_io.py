"""Metric output: TensorBoard event files, a JSONL log, a terminal progress bar, tables and plots.

  with MetricWriter(workdir) as writer:
    bar = ProgressBar(total=num_steps, initial=start_step, desc="train")
    for step in range(start_step, num_steps):
      state, metrics = train_step(state, rng)
      if step % log_every == 0:
        metrics = jax.device_get(metrics)
        if bad := nonfinite(metrics):
          raise FloatingPointError(f"non-finite metrics at step {step}: {bad}")
        writer.write_scalars(step, metrics)
      bar.update(step + 1, {"loss": metrics["loss"]})
    bar.close()

Design:

* **No TensorFlow.** ``TensorBoardWriter`` writes the event-file format itself. An event file is a
  TFRecord file: every record is ``uint64 length | masked_crc32c(length) | data |
  masked_crc32c(data)`` (little-endian), where the CRC is CRC-32C (Castagnoli, reflected polynomial
  0x82F63B78, table-driven here) and ``mask(c) = ((c >> 15) | (c << 17)) + 0xA282EAD8 (mod 2^32)``.
  Each record's data is a serialised ``tensorflow.Event`` protobuf, encoded by hand with the few
  wire types it needs (varint, 64-bit, 32-bit, length-delimited):
  ``Event{wall_time: double = 1; step: int64 = 2; file_version: string = 3; summary: Summary = 5}``,
  ``Summary{repeated Value value = 1}``, ``Value{tag: string = 1; simple_value: float = 2}``.
  The first record carries ``file_version = "brain.Event:2"``; each ``write_scalars`` call is one
  event holding all its values (TensorBoard reads them as scalars: simple_value is float32).
  Files are named ``events.out.tfevents.<unix time>.<hostname>`` (plus ``.1``, ``.2``… if such a
  file already exists, so two writers never interleave records in one file).
* **JSONL** (``<dir>/metrics.jsonl``) is the log meant for scripts and plots: one JSON object per
  ``write_scalars`` call, flushed per line so a crash loses at most the line being written. NaN and
  ±Inf (not valid JSON) are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``; ``read_jsonl``
  turns them back into floats and drops a truncated final line. Opening an existing log for append
  first cuts such a truncated line off, so a resumed run never glues a record onto half of one.
* **Multi-host**: ``MetricWriter`` writes on ``jax.process_index() == 0`` only (decided when it is
  constructed, i.e. after ``jax.distributed.initialize()``); on other processes every method is a
  no-op and no file or directory is created. Metrics must be scalars (Python, NumPy or 0-d JAX
  arrays); JAX arrays are fetched with one ``jax.device_get``.
* **ProgressBar** is self-contained (no tqdm). The rate counts only the steps done by this process
  (``step - initial`` over the time since construction), so a resumed run shows its real speed and
  ETA. On a TTY it redraws one line with ``'\\r'`` at most ``1 / min_interval_s`` times per second;
  elsewhere (CI logs, pipes, files) it prints a full line at the first update, each time progress
  crosses another ``log_every_percent`` and at least every ``log_every_s`` seconds, and at the end.
  A ``clock`` can be injected for tests.
* ``plot_curves`` uses matplotlib only if it is importable (it is not a dependency), through the
  object-oriented ``Figure`` API so no global pyplot/backend state is touched.

Nothing here is thread-safe; use each writer from one thread.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from absl import logging
import jax
import numpy as np

Scalar = int | float | bool

# ----------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli) and TFRecord framing.

_CRC32C_POLY = 0x82F63B78  # 0x1EDC6F41 bit-reversed (the CRC is computed LSB-first).
_MASK32 = 0xFFFFFFFF
_CRC_MASK_DELTA = 0xA282EAD8


def _make_crc32c_table() -> tuple[int, ...]:
  """The 256-entry lookup table: the CRC register after shifting each byte value through it."""
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ _CRC32C_POLY if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
  """CRC-32C of ``data``; pass a previous result as ``crc`` to continue a running checksum."""
  table = _CRC32C_TABLE
  crc ^= _MASK32
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ _MASK32


def masked_crc32c(data: bytes) -> int:
  """The CRC stored in TFRecord files: rotated right by 15 bits plus a constant (mod 2^32)."""
  crc = crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & _MASK32) + _CRC_MASK_DELTA) & _MASK32


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", masked_crc32c(header)) + data +
          struct.pack("<I", masked_crc32c(data)))


# ----------------------------------------------------------------------------------------------
# Protobuf wire format (just what Event needs).

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
  """Base-128 varint, least significant group first; negative int64s as 10-byte two's complement."""
  if value < 0:
    value &= (1 << 64) - 1
  out = bytearray()
  while True:
    low = value & 0x7F
    value >>= 7
    if value:
      out.append(low | 0x80)
    else:
      out.append(low)
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint((field << 3) | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _key(field, _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _float32_bytes(value: float) -> bytes:
  """Little-endian float32, saturating to ±inf outside its range (as a float32 cast does)."""
  try:
    return struct.pack("<f", value)
  except OverflowError:
    return struct.pack("<f", math.copysign(math.inf, value))


def encode_event(wall_time: float, step: int, *, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None) -> bytes:
  """Serialised ``tensorflow.Event`` holding a file_version or a summary of simple_values.

  The two are members of the proto's ``oneof what``, so at most one may be given.
  """
  if file_version is not None and scalars:
    raise ValueError("an Event holds either a file_version or a summary, not both")
  out = (_key(1, _FIXED64) + struct.pack("<d", wall_time) +
         _key(2, _VARINT) + _varint(int(step)))
  if file_version is not None:
    out += _length_delimited(3, file_version.encode("utf-8"))
  if scalars:
    summary = b"".join(
        _length_delimited(1, _length_delimited(1, tag.encode("utf-8")) +
                          _key(2, _FIXED32) + _float32_bytes(float(value)))
        for tag, value in scalars.items())
    out += _length_delimited(5, summary)
  return out


# ----------------------------------------------------------------------------------------------
# Scalar conversion.


def _to_scalar(name: str, value: Any) -> Scalar:
  """A Python bool/int/float from a Python, NumPy or JAX scalar (or any size-1 array)."""
  if isinstance(value, (bool, int, float)):
    return value
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(f"metric {name!r} must be a scalar, got shape {array.shape}")
  item = array.reshape(()).item()
  if not isinstance(item, (bool, int, float)):
    raise TypeError(f"metric {name!r} must be a real number, got {value!r} ({array.dtype})")
  return item


def nonfinite(metrics: Mapping[str, Any]) -> list[str]:
  """Sorted names of the metrics that are (or, for arrays, contain) NaN or ±Inf.

  Accepts Python floats, NumPy and JAX scalars/arrays (bfloat16 included); integers, booleans,
  strings and other non-numeric values are never non-finite.
  """
  bad = []
  for name, value in metrics.items():
    if value is None or isinstance(value, (str, bytes, bool, int)):
      continue
    if isinstance(value, float):
      if not math.isfinite(value):
        bad.append(name)
      continue
    try:
      array = np.asarray(value)
      if array.dtype.kind in "biuUSOMm":  # bool, integer, text, object, datetime, timedelta
        continue
      if not np.all(np.isfinite(array)):
        bad.append(name)
    except (TypeError, ValueError):
      continue
  return sorted(bad)


# ----------------------------------------------------------------------------------------------
# Writers.


class _FileWriter:
  """Closing and the context-manager protocol for a writer that owns ``self._file``."""

  _file: Any = None

  def close(self) -> None:
    """Flushes and closes the file; further writes raise, further closes are no-ops."""
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self):
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


class TensorBoardWriter(_FileWriter):
  """Writes scalars to a new TensorBoard event file in ``logdir`` (created if needed).

  Records are buffered and flushed by ``flush()``, ``close()``, and by ``write_scalars`` when
  ``flush_secs`` have passed since the last flush (0: after every write).
  """

  def __init__(self, logdir: str | os.PathLike, *, flush_secs: float = 5.0,
               clock: Callable[[], float] = time.time):
    os.makedirs(logdir, exist_ok=True)
    self._clock = clock
    self._flush_secs = flush_secs
    base = os.path.join(os.fspath(logdir),
                        f"events.out.tfevents.{int(clock()):010d}.{socket.gethostname()}")
    self.path = base
    suffix = 0
    while True:
      try:
        self._file = open(self.path, "xb")  # pylint: disable=consider-using-with
        break
      except FileExistsError:
        suffix += 1
        self.path = f"{base}.{suffix}"
    self._file.write(tfrecord(encode_event(clock(), 0, file_version="brain.Event:2")))
    self.flush()

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """One event at ``step`` holding every ``tag: value`` (stored as float32)."""
    if self._file is None:
      raise ValueError(f"TensorBoardWriter({self.path!r}) is closed")
    values = {tag: float(_to_scalar(tag, v)) for tag, v in scalars.items()}
    if not values:
      return
    self._file.write(tfrecord(encode_event(self._clock(), step, scalars=values)))
    if self._clock() - self._last_flush >= self._flush_secs:
      self.flush()

  def flush(self) -> None:
    """Hands buffered records to the OS (TensorBoard sees them from then on)."""
    if self._file is not None:
      self._file.flush()
    self._last_flush = self._clock()



_NONFINITE_NAMES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _json_value(name: str, value: Any) -> Any:
  """A JSON-encodable metric value: numbers as Python numbers, non-finite floats as strings."""
  if isinstance(value, str):
    return value
  value = _to_scalar(name, value)
  if isinstance(value, float) and not math.isfinite(value):
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
  return value


class JsonlWriter(_FileWriter):
  """Appends ``{"step": s, "time": t, **metrics}`` lines to ``<logdir>/<filename>``.

  Every line is flushed to the OS as it is written (and ``fsync``-ed too if ``fsync=True``, which
  also survives a machine crash but costs a disk round trip per line). Values may be Python/NumPy/
  JAX scalars or strings; ``"step"`` and ``"time"`` are reserved names.
  """

  def __init__(self, logdir: str | os.PathLike, filename: str = "metrics.jsonl", *,
               fsync: bool = False, clock: Callable[[], float] = time.time):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(os.fspath(logdir), filename)
    self._fsync = fsync
    self._clock = clock
    _drop_partial_last_line(self.path)
    # pylint: disable-next=consider-using-with
    self._file: TextIO | None = open(self.path, "a", encoding="utf-8")

  def write_scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes and flushes one line."""
    if self._file is None:
      raise ValueError(f"JsonlWriter({self.path!r}) is closed")
    record: dict[str, Any] = {"step": int(step), "time": self._clock()}
    for name, value in metrics.items():
      if name in ("step", "time"):
        raise ValueError(f"metric name {name!r} is reserved in the JSONL log")
      record[name] = _json_value(name, value)
    self._file.write(json.dumps(record, allow_nan=False) + "\n")
    self.flush()

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()
      if self._fsync:
        os.fsync(self._file.fileno())



def _drop_partial_last_line(path: str) -> None:
  """Cuts off a last line without its newline (a write interrupted by a crash), if any."""
  try:
    f = open(path, "rb+")  # pylint: disable=consider-using-with
  except FileNotFoundError:
    return
  with f:
    size = f.seek(0, os.SEEK_END)
    if size == 0:
      return
    f.seek(size - 1)
    if f.read(1) == b"\n":
      return
    # Scan backwards in chunks for the last newline.
    end = size
    keep = 0
    while end > 0:
      start = max(0, end - 65536)
      f.seek(start)
      chunk = f.read(end - start)
      i = chunk.rfind(b"\n")
      if i >= 0:
        keep = start + i + 1
        break
      end = start
    logging.warning("%s: dropping a truncated last line (%d bytes)", path, size - keep)
    f.truncate(keep)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """All records of a JSONL log, with ``"nan"``/``"inf"``/``"-inf"`` strings as floats.

  A last line that is incomplete (no newline and not valid JSON: a crash mid-write) is dropped;
  any other malformed line raises ``ValueError`` naming the line.
  """
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    is_last = number == len(lines)  # only the last piece can lack its newline
    try:
      record = json.loads(line.decode("utf-8"))
      if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
      if is_last:
        break
      raise ValueError(f"{os.fspath(path)}:{number}: malformed line: {e}") from e
    records.append({k: _NONFINITE_NAMES.get(v, v) if isinstance(v, str) else v
                    for k, v in record.items()})
  return records


class MetricWriter:
  """Fan-out to a ``TensorBoardWriter`` and a ``JsonlWriter`` in ``logdir``, on process 0 only.

  On other processes (``jax.process_index() != 0`` at construction) every method is a no-op and
  nothing is created on disk; ``active`` says which case this is.
  """

  def __init__(self, logdir: str | os.PathLike, *, tensorboard: bool = True, jsonl: bool = True,
               flush_secs: float = 5.0):
    self.logdir = os.fspath(logdir)
    self.active = jax.process_index() == 0
    self._writers: list[TensorBoardWriter | JsonlWriter] = []
    if self.active:
      if tensorboard:
        self._writers.append(TensorBoardWriter(logdir, flush_secs=flush_secs))
      if jsonl:
        self._writers.append(JsonlWriter(logdir))

  def write_scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes ``metrics`` (Python/NumPy scalars or 0-d JAX arrays) at ``step`` to every writer."""
    if not self.active:
      return
    host = jax.device_get(dict(metrics))
    values = {name: _to_scalar(name, value) for name, value in host.items()}
    for writer in self._writers:
      writer.write_scalars(step, values)

  def flush(self) -> None:
    for writer in self._writers:
      writer.flush()

  def close(self) -> None:
    for writer in self._writers:
      writer.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


# ----------------------------------------------------------------------------------------------
# Progress bar.


def _format_duration(seconds: float) -> str:
  """``h:mm:ss`` (hours unbounded)."""
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}"


def _format_number(value: float) -> str:
  """Three significant digits for values >= 1 (``1.23``, ``12.3``, ``123``, ``1234``)."""
  for decimals in (2, 1):
    if round(value, decimals) < 10 ** (3 - decimals):
      return f"{value:.{decimals}f}"
  return f"{value:.0f}"


def _format_postfix_value(value: Any) -> str:
  if isinstance(value, str):
    return value
  try:
    value = _to_scalar("postfix", value)
  except (TypeError, ValueError):
    return str(value)
  if isinstance(value, float):
    return f"{value:.3g}"
  return str(value)


def _is_tty(stream: Any) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # no isatty / closed stream
    return False


def _terminal_width(stream: Any) -> int:
  """Columns: ``$COLUMNS`` if set, else the stream's terminal size if known (> 0), else 80."""
  if os.environ.get("COLUMNS", "").isdigit() and int(os.environ["COLUMNS"]) > 0:
    return int(os.environ["COLUMNS"])
  try:
    columns = os.get_terminal_size(stream.fileno()).columns
  except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
    columns = 0
  return columns if columns > 0 else shutil.get_terminal_size((80, 24)).columns


class ProgressBar:
  """A one-line progress bar: ``desc: step/total pct [bar] rate ETA h:mm:ss postfix``.

  ``update(step)`` takes the absolute step reached (not an increment). The rate and ETA are
  measured over the steps done since construction (``step - initial``). See the module docstring
  for the TTY / non-TTY behaviour; ``stream=None`` means ``sys.stderr`` at construction time.
  """

  def __init__(self, total: int, initial: int = 0, stream: TextIO | None = None, desc: str = "",
               *, min_interval_s: float = 0.1, log_every_percent: float = 10.0,
               log_every_s: float = 10.0, bar_width: int = 20,
               clock: Callable[[], float] = time.monotonic):
    if total < 0 or initial < 0:
      raise ValueError(f"ProgressBar: total and initial must be >= 0, got {total}, {initial}")
    self.total = int(total)
    self.initial = int(initial)
    self.stream = sys.stderr if stream is None else stream
    self.desc = desc
    self.is_tty = _is_tty(self.stream)
    self._min_interval_s = min_interval_s
    self._log_every_percent = log_every_percent
    self._log_every_s = log_every_s
    self._bar_width = bar_width
    self._clock = clock
    self._start = clock()
    self._step = self.initial
    self._postfix: dict[str, Any] = {}
    self._last_draw_time: float | None = None
    self._last_drawn: tuple[int, str] | None = None  # (step, postfix text) last shown
    self._last_bucket = -1
    self._prev_len = 0
    self._closed = False

  def _percent(self, step: int) -> float:
    return 100.0 if self.total == 0 else 100.0 * min(step, self.total) / self.total

  def rate(self, now: float | None = None) -> float | None:
    """Steps per second done by this process so far (None before any step or time passed)."""
    now = self._clock() if now is None else now
    done, elapsed = self._step - self.initial, now - self._start
    return done / elapsed if done > 0 and elapsed > 0 else None

  def format_line(self, now: float | None = None) -> str:
    """The text of the bar for the current state (without ``'\\r'`` or newline)."""
    now = self._clock() if now is None else now
    step, total = self._step, self.total
    percent = self._percent(step)
    filled = int(self._bar_width * percent / 100)
    bar = "#" * filled + "." * (self._bar_width - filled)
    rate = self.rate(now)
    if rate is None:
      rate_text, eta = "? steps/s", "?"
    else:
      rate_text = (f"{_format_number(rate)} steps/s" if rate >= 1
                   else f"{_format_number(1 / rate)} s/step")
      eta = _format_duration(max(total - step, 0) / rate)
    parts = [f"{self.desc}:"] if self.desc else []
    parts += [f"{step:>{len(str(total))}d}/{total}", f"{percent:3.0f}%", f"[{bar}]", rate_text,
              f"ETA {eta}"]
    postfix = self._postfix_text()
    if postfix:
      parts.append(postfix)
    return " ".join(parts)

  def _postfix_text(self) -> str:
    return " ".join(f"{k} {_format_postfix_value(v)}" for k, v in self._postfix.items())

  def update(self, step: int, postfix: Mapping[str, Any] | None = None) -> None:
    """Records that ``step`` (absolute) is reached; redraws/prints if it is time to."""
    if self._closed:
      return
    self._step = int(step)
    if postfix is not None:
      self._postfix = dict(postfix)
    now = self._clock()
    finished = self._step >= self.total
    if self.is_tty:
      due = (self._last_draw_time is None or
             now - self._last_draw_time >= self._min_interval_s)
      if due or (finished and self._last_drawn != self._state()):
        self._draw(now)
    else:
      bucket = int(self._percent(self._step) // self._log_every_percent)
      due = (self._last_draw_time is None or bucket > self._last_bucket or
             now - self._last_draw_time >= self._log_every_s)
      if due or (finished and self._last_drawn != self._state()):
        self._draw(now)

  def _state(self) -> tuple[int, str]:
    return self._step, self._postfix_text()

  def _draw(self, now: float) -> None:
    line = self.format_line(now)
    if self.is_tty:
      line = line[:max(_terminal_width(self.stream) - 1, 10)]
      self.stream.write("\r" + line + " " * max(self._prev_len - len(line), 0))
      self._prev_len = len(line)
    else:
      self.stream.write(line + "\n")
      self._last_bucket = int(self._percent(self._step) // self._log_every_percent)
    self.stream.flush()
    self._last_draw_time = now
    self._last_drawn = self._state()

  def close(self) -> None:
    """Shows the final state (if not shown yet) and, on a TTY, ends the line. Idempotent."""
    if self._closed:
      return
    if self._last_drawn != self._state():
      self._draw(self._clock())
    if self.is_tty:
      self.stream.write("\n")
      self.stream.flush()
    self._closed = True

  def __enter__(self) -> ProgressBar:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


# ----------------------------------------------------------------------------------------------
# Tables and plots.


def _cell(value: Any, float_format: str) -> str:
  if isinstance(value, (float, np.floating)):
    text = format(float(value), float_format)
  elif isinstance(value, (bool, np.bool_, str)) or value is None:
    text = str(value)
  elif isinstance(value, (int, np.integer)):
    text = str(int(value))
  elif getattr(value, "shape", None) == ():  # 0-d NumPy / JAX array
    return _cell(np.asarray(value).item(), float_format)
  else:
    text = str(value)
  return text.replace("\n", " ").replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                   float_format: str = ".3f") -> str:
  """A GitHub-markdown table, columns padded to equal width, without a trailing newline.

  Floats (Python, NumPy, 0-d arrays) use ``float_format``; ``|`` in cells is escaped.
  """
  table = [[_cell(h, float_format) for h in headers]]
  for i, row in enumerate(rows):
    if len(row) != len(headers):
      raise ValueError(f"markdown_table: row {i} has {len(row)} cells, expected {len(headers)}")
    table.append([_cell(v, float_format) for v in row])
  widths = [max(3, *(len(r[c]) for r in table)) for c in range(len(headers))]

  def line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

  return "\n".join([line(table[0]), line(["-" * w for w in widths])] +
                   [line(r) for r in table[1:]])


def plot_curves(jsonl_path: str | os.PathLike, out_png: str | os.PathLike,
                keys: Sequence[str]) -> str | None:
  """A PNG with one subplot per metric in ``keys`` against step; None if matplotlib is missing.

  When a step appears more than once (a resumed run re-logging steps after its last checkpoint)
  the later record wins. Metrics missing from the log get an empty subplot saying so.
  """
  try:
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  by_step: dict[int, dict[str, Any]] = {}
  for record in read_jsonl(jsonl_path):
    by_step[record["step"]] = record
  steps = sorted(by_step)
  keys = list(keys)
  fig = Figure(figsize=(6, 2.2 * max(len(keys), 1)), layout="constrained")
  axes = fig.subplots(max(len(keys), 1), 1, squeeze=False)[:, 0]
  for ax, key in zip(axes, keys):
    points = [(s, by_step[s][key]) for s in steps
              if isinstance(by_step[s].get(key), (int, float))
              and not isinstance(by_step[s].get(key), bool)]
    ax.set_title(key)
    ax.set_xlabel("step")
    if points:
      xs, ys = zip(*points)
      ax.plot(xs, [y if math.isfinite(y) else math.nan for y in ys])
    else:
      ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
  out_png = os.fspath(out_png)
  os.makedirs(os.path.dirname(out_png) or ".", exist_ok=True)
  fig.savefig(out_png)
  return out_png
