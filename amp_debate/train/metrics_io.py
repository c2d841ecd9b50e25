"""Metric output: TensorBoard event files, a JSONL log, a terminal progress bar, tables and plots.

  with MetricWriter(workdir) as writer, ProgressBar(num_steps, initial=start_step) as bar:
    for step in range(start_step, num_steps):
      state, metrics = train_step(state, rng)
      if step % log_every == 0:
        metrics = jax.device_get(metrics)
        if bad := nonfinite(metrics):
          raise FloatingPointError(f"non-finite metrics at step {step}: {bad}")
        writer.write_scalars(step, metrics)
        bar.update(step + 1, {"loss": metrics["loss"]})

Design:

* **TensorBoard** event files come from ``tensorboardX.SummaryWriter`` (no TensorFlow needed; it
  imports only NumPy and protobuf). Each metric is one ``add_scalar`` (a ``simple_value``, read
  back by TensorBoard as a float32 scalar). tensorboardX writes from a background thread and hands
  records to the OS every ``flush_secs``; ``close()`` writes everything still queued. Files are
  named ``events.out.tfevents.<unix time>.<hostname>.<pid>.<n>`` (``n`` counts the writers this
  process opened), so two writers never share a file, even when started in the same second. Tag
  names with characters TensorBoard does not allow are changed by tensorboardX (``_`` instead,
  leading ``/`` dropped); the JSONL log keeps the names as given.
* **JSONL** (``<dir>/metrics.jsonl``) is the log meant for scripts and plots: one JSON object per
  ``write_scalars`` call, flushed per line so a crash loses at most the line being written. NaN and
  ±Inf (not valid JSON) are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``; ``read_jsonl``
  turns them back into floats and drops a truncated final line. Opening an existing log for append
  first cuts such a truncated line off, so a resumed run never glues a record onto half of one.
* **Multi-host**: ``MetricWriter`` writes on ``jax.process_index() == 0`` only (decided when it is
  constructed, i.e. after ``jax.distributed.initialize()``); on other processes every method is a
  no-op and no file or directory is created. Metrics must be scalars (Python, NumPy or 0-d JAX
  arrays); JAX arrays are fetched with one ``jax.device_get``.
* **ProgressBar** wraps ``tqdm`` and takes the absolute step reached. The rate is the average over
  the steps done by this process (``step - initial`` over the time since construction: tqdm counts
  ``initial`` as already done), so a resumed run shows its real speed, and the ETA includes the
  time spent in evaluations and checkpoints. On a TTY tqdm redraws one line in place at most
  ``1 / min_interval_s`` times per second. Elsewhere (CI logs, pipes, files) it prints a full line
  (``\\n``-terminated, no ``\\r``) at the start, at most once per ``log_every_s`` seconds, and at
  the end.
* ``plot_curves`` uses matplotlib only if it is importable (it is not a dependency), through the
  object-oriented ``Figure`` API so no global pyplot/backend state is touched.

Nothing here is thread-safe; use each writer from one thread.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from absl import logging
import jax
import numpy as np
import tqdm

Scalar = int | float | bool

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

_NONFINITE_NAMES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _json_value(name: str, value: Any) -> Any:
  """A JSON-encodable metric value: numbers as Python numbers, non-finite floats as strings."""
  if isinstance(value, str):
    return value
  value = _to_scalar(name, value)
  if isinstance(value, float) and not math.isfinite(value):
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
  return value


class _ClosedOnExit:
  """``with obj: ...`` calls ``obj.close()`` on the way out (the writers and the progress bar)."""

  def __enter__(self):
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


class JsonlWriter(_ClosedOnExit):
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
    """Hands buffered text to the OS (and to the disk, with ``fsync=True``)."""
    if self._file is not None:
      self._file.flush()
      if self._fsync:
        os.fsync(self._file.fileno())

  def close(self) -> None:
    """Flushes and closes the file; further writes raise, further closes are no-ops."""
    if self._file is not None:
      self._file.close()
      self._file = None


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


def drop_after(path: str | os.PathLike, step: int) -> int:
  """Removes the records of steps after ``step`` from the JSONL log at ``path`` (if it exists):
  a run resumed from its checkpoint at ``step`` replays those steps, and would log them twice.
  Rewrites the file atomically; returns the number of records dropped."""
  if not os.path.exists(path):
    return 0
  records = read_jsonl(path)
  keep = [r for r in records if r.get("step", 0) <= step]
  if len(keep) == len(records):
    return 0
  tmp = f"{os.fspath(path)}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for record in keep:
      f.write(json.dumps({k: _json_value(k, v) for k, v in record.items()}, allow_nan=False) + "\n")
  os.replace(tmp, path)
  return len(records) - len(keep)


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


_EVENT_FILE_IDS = itertools.count()  # numbers the event files this process opens


class MetricWriter(_ClosedOnExit):
  """Fan-out to a TensorBoard event file and a ``JsonlWriter`` in ``logdir``, on process 0 only.

  On other processes (``jax.process_index() != 0`` at construction) every method is a no-op and
  nothing is created on disk; ``active`` says which case this is. ``flush_secs`` is how often
  tensorboardX's writer thread hands event records to the OS (the JSONL log is flushed per line).
  """

  def __init__(self, logdir: str | os.PathLike, *, tensorboard: bool = True, jsonl: bool = True,
               flush_secs: float = 5.0):
    self.logdir = os.fspath(logdir)
    self.active = jax.process_index() == 0
    self._closed = False
    self._tensorboard = None
    self._jsonl: JsonlWriter | None = None
    if self.active:
      if tensorboard:
        # Imported here: only process 0 writes events, and tensorboardX imports torch if present.
        import tensorboardX  # pylint: disable=import-outside-toplevel
        self._tensorboard = tensorboardX.SummaryWriter(
            self.logdir, flush_secs=flush_secs,
            filename_suffix=f".{os.getpid()}.{next(_EVENT_FILE_IDS)}")
      if jsonl:
        self._jsonl = JsonlWriter(self.logdir)

  def write_scalars(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Writes ``metrics`` (Python/NumPy scalars or 0-d JAX arrays) at ``step`` to every writer."""
    if not self.active:
      return
    if self._closed:
      raise ValueError(f"MetricWriter({self.logdir!r}) is closed")
    host = jax.device_get(dict(metrics))
    values = {name: _to_scalar(name, value) for name, value in host.items()}
    if self._tensorboard is not None:
      now = time.time()  # one wall time for every value of the call
      for name, value in values.items():
        self._tensorboard.add_scalar(name, float(value), int(step), walltime=now)
    if self._jsonl is not None:
      self._jsonl.write_scalars(step, values)

  def flush(self) -> None:
    """Flushes the JSONL log and the event records tensorboardX's thread has written so far."""
    if self._tensorboard is not None:
      self._tensorboard.flush()
    if self._jsonl is not None:
      self._jsonl.flush()

  def close(self) -> None:
    """Writes every queued event, then closes both files. Idempotent."""
    self._closed = True
    if self._tensorboard is not None:
      self._tensorboard.close()
      self._tensorboard = None
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None


# ----------------------------------------------------------------------------------------------
# Progress bar.


def _postfix_value(value: Any) -> Any:
  """A postfix value tqdm can format: strings as they are, scalars as Python numbers."""
  if isinstance(value, str):
    return value
  try:
    return _to_scalar("postfix", value)
  except (TypeError, ValueError):
    return str(value)


def _is_tty(stream: Any) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # no isatty / closed stream
    return False


class _LogLines:
  """A file for tqdm that turns each in-place redraw into one log line.

  tqdm draws with ``'\\r' + line + padding`` and ends the bar with a lone ``'\\n'``; here every
  redraw becomes ``line + '\\n'``, and the lone newline (which would leave an empty line) and a
  repeat of the line just written (``close()`` redraws the final state) are dropped. Meant for
  streams that are not terminals, where ``'\\r'`` only clutters the log.
  """

  def __init__(self, stream: TextIO):
    self._stream = stream
    self._last = ""

  def write(self, text: str) -> None:
    """Writes one redraw as one line (see the class docstring)."""
    if text.startswith("\r"):
      line = text[1:].rstrip()
      if line and line != self._last:
        self._stream.write(line + "\n")
        self._last = line
    elif text.strip():
      self._stream.write(text)

  def flush(self) -> None:
    self._stream.flush()


class ProgressBar(_ClosedOnExit):
  """A ``tqdm`` bar driven by the absolute step: ``desc: pct|bar| step/total [elapsed<ETA, rate,
  postfix]``.

  ``update(step, postfix)`` takes the step reached (not an increment) and the fields to show after
  the rate (e.g. ``{"loss": ..., "acc": ..., "level": ...}``; scalars, 0-d arrays or strings).
  ``stream=None`` means ``sys.stderr``. On a TTY the line is redrawn in place at most every
  ``min_interval_s`` seconds and fits the terminal width; on any other stream a full line is
  printed at the start, at most every ``log_every_s`` seconds, and at ``close()``. The rate is the
  average since construction over the steps done here (``step - initial``).
  """

  def __init__(self, total: int, initial: int = 0, stream: TextIO | None = None, desc: str = "",
               *, min_interval_s: float = 0.1, log_every_s: float = 30.0):
    if total < 0 or initial < 0:
      raise ValueError(f"ProgressBar: total and initial must be >= 0, got {total}, {initial}")
    self.stream = stream if stream is not None else sys.stderr
    self.is_tty = _is_tty(self.stream)
    self._bar = tqdm.tqdm(
        total=int(total), initial=int(initial), desc=desc or None, unit="steps",
        file=self.stream if self.is_tty else _LogLines(self.stream),
        mininterval=min_interval_s if self.is_tty else log_every_s,
        miniters=1,  # updates come once per logged step: no dynamic miniters (nor forced redraws)
        smoothing=0,  # the average rate since construction, not a moving average
        dynamic_ncols=self.is_tty, ascii=None if self.is_tty else True)

  @property
  def step(self) -> int:
    """The last step passed to ``update`` (``initial`` before any)."""
    return self._bar.n

  def update(self, step: int, postfix: Mapping[str, Any] | None = None) -> None:
    """Records that ``step`` (absolute) is reached; tqdm redraws if ``min_interval_s`` (TTY) or
    ``log_every_s`` (elsewhere) passed since its last line."""
    if postfix is not None:
      self._bar.set_postfix({k: _postfix_value(v) for k, v in postfix.items()}, refresh=False)
    self._bar.update(int(step) - self._bar.n)

  def close(self) -> None:
    """Shows the final state and ends the line. Idempotent."""
    self._bar.close()


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
