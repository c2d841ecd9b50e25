"""The training loop: ``run(config, workdir)`` for one run, ``run_group(configs, workdirs)`` for
several that share a compiled step, trained together as one program over a leading run axis. A
single run is a group of one: there is one loop. All side effects of training live here.

  states[s] = restore each run's latest checkpoint in <workdir_s>/checkpoints (the latest step all
              runs hold), or init run s (its seed, its hyperparameters; created sharded on the mesh)
  for step in [start, num_steps):
    states, metrics = train_step(states, [fold_in(root_s, step) for s])  # jitted, sharded, donated
    every log_every: NaN/Inf check (fail fast; the last good checkpoints are kept), JSONL +
                     TensorBoard per run, progress bar
    every eval.every: per run, greedy accuracy of M by difficulty on the TFDS eval split, H alone,
                      Amp(H, M), self-play and honesty (``evaluation``)
    every checkpoint.every (and at the end, and on SIGTERM): async Orbax save of each run's state
                      in its own workdir
  per run: final tables (terminal + <workdir>/results.md), curves.png, summary.json (``reports``)

Runs in a group differ only in the seed and in the hyperparameters that are data in the state
(``config_lib.DATA_FIELDS``: the learning rate, the λ weights and their anneals, the constrained
limit and multiplier step, the shaped β; ``programs.check_group``); they share everything static,
including num_steps and the eval and checkpoint schedule. One run's step is exactly the unbatched
step (``programs.Programs.train_step``); a group's is the step vmapped, so a run's numbers in a
group match the run alone up to float reassociation of the batched kernels (tests/test_trainer.py).
Every run directory holds what its run alone would write, and its checkpoints are the run's own:
``run`` resumes or extends a run trained in a group, and ``restore.load_state`` reads it.

The step's randomness is ``fold_in(key(seed), step)``, so a run resumed from a checkpoint at step
s replays exactly the steps an uninterrupted run would (bitwise on CPU). SIGTERM (preemption) sets a
flag; the loop saves at the current step and returns ``status="preempted"``; rerunning the same
command resumes. A resumed run must use a compatible config (``config_lib.SAFE_TO_CHANGE``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from amp_debate.train import checkpoint as checkpoint_lib
from amp_debate.train import config_lib, evaluation, metrics_io, reports, restore, sharding
from amp_debate.train import programs as programs_lib
from amp_debate.train import step as step_lib

class TrainingDiverged(RuntimeError):
  """A loss or gradient norm became NaN or Inf (the message names them and the step)."""


class WorkdirError(ValueError):
  """The work directory is a file, or cannot be created or written (a one-line message)."""


@dataclasses.dataclass
class RunResult:
  """What ``run`` returns.

  Attributes:
    status: "done" (reached num_steps) or "preempted" (SIGTERM: saved, resumable).
    step: the last step trained.
    eval: the latest evaluation, {metric name: value} ("eval/accuracy/model/d1", ...).
    table: the final markdown table ("" when preempted).
    summary: what ``<workdir>/summary.json`` holds ({} when preempted; ``reports.write_summary``).
  """

  status: str
  step: int
  eval: dict[str, float]
  table: str
  summary: dict[str, Any] = dataclasses.field(default_factory=dict)



class Preemption:
  """SIGTERM sets ``requested``; the loop saves and exits at the next step boundary.

  Multi-process runs must agree on the step at which every process saves and stops (a process that
  stopped alone would leave the others blocked in a collective), so there the notice comes from
  JAX's preemption service instead (``multihost_utils.reached_preemption_sync_point``, which
  handles SIGTERM itself) and no Python handler is installed.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._multi_process = jax.process_count() > 1

  def reached(self, step: int) -> bool:
    """Whether to save and stop after ``step`` (call once per step, on every process)."""
    if self._multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def __enter__(self):
    if not self._multi_process and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def host_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Scalar metrics as floats (histograms are expanded into one scalar per bin)."""
  out = {}
  for k, v in metrics.items():
    v = np.asarray(v)
    if v.ndim == 0:
      out[k] = float(v)
    else:
      for i, x in enumerate(v.reshape(-1)):
        out[f"{k}/{i}"] = float(x)
  return out


def step_events(config: ml_collections.ConfigDict, step: int,
                preempted: bool) -> tuple[bool, bool, bool]:
  """(log, evaluate, checkpoint) after ``step``: every log_every / eval.every / checkpoint.every
  steps; the last step logs and checkpoints, and so does a preemption."""
  last = step == config.num_steps
  log = step % config.log_every == 0 or last
  evaluate = bool(config.eval.every) and step % config.eval.every == 0
  ckpt = bool(config.checkpoint.every and step % config.checkpoint.every == 0) or last or preempted
  return log, evaluate, ckpt


def diverged(scalars: Mapping[str, float]) -> list[str]:
  """The losses and gradient norms among ``scalars`` that are NaN or Inf."""
  return metrics_io.nonfinite({k: v for k, v in scalars.items()
                               if k.startswith(("loss/", "grad_norm/"))})


def make_workdir(workdir: str) -> None:
  """Creates ``workdir`` (and its parents) if missing; WorkdirError if it cannot hold a run."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"workdir {workdir} is a file, not a directory")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f"cannot create workdir {workdir}: {e.strerror or e}") from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise WorkdirError(f"workdir {workdir} is not writable")


def initialize_distributed() -> None:
  """``jax.distributed.initialize`` for a multi-host run (once per process, before any JAX work).

  On clusters JAX detects (Cloud TPU, SLURM, Open MPI, Kubernetes) no arguments are needed. Anywhere
  else the launcher sets JAX_COORDINATOR_ADDRESS (host:port of process 0), AMP_DEBATE_NUM_PROCESSES
  and AMP_DEBATE_PROCESS_ID (``launch/local.sh`` does, for processes on one machine). CPU processes
  exchange collectives over gloo.
  """
  if jax.distributed.is_initialized():
    return
  if jax.config.jax_platforms in ("cpu",) or os.environ.get("JAX_PLATFORMS") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  given = [name for name in ("AMP_DEBATE_NUM_PROCESSES", "AMP_DEBATE_PROCESS_ID")
           if name in os.environ]
  if len(given) == 1:
    raise ValueError(f"{given[0]} is set but not "
                     f"{({'AMP_DEBATE_NUM_PROCESSES', 'AMP_DEBATE_PROCESS_ID'} - set(given)).pop()}; "
                     f"set both (or neither, to let JAX detect the cluster)")
  if given:
    kwargs = dict(num_processes=int(os.environ["AMP_DEBATE_NUM_PROCESSES"]),
                  process_id=int(os.environ["AMP_DEBATE_PROCESS_ID"]))
  jax.distributed.initialize(**kwargs)  # no arguments: JAX detects TPU VMs, SLURM, ...



class TrainClock:
  """Seconds since ``start`` minus the time spent inside ``paused()`` blocks (0 before start)."""

  def __init__(self):
    self._start = None
    self._paused = 0.0

  def start(self) -> None:
    self._start = time.perf_counter()

  def seconds(self) -> float:
    return 0.0 if self._start is None else time.perf_counter() - self._start - self._paused

  @contextlib.contextmanager
  def paused(self):
    begin = time.perf_counter()
    try:
      yield
    finally:
      if self._start is not None:
        self._paused += time.perf_counter() - begin


def run(config: ml_collections.ConfigDict, workdir: str, *,
        reference: Mapping[str, Mapping[str, float]] | None = None) -> RunResult:
  """Trains (or resumes) the run described by ``config`` in ``workdir``: a group of one
  (``run_group``). See the module docstring.

  Args:
    config: a config of ``experiments/configs/default.py``'s schema.
    workdir: directory for checkpoints, metrics and results (created if missing).
    reference: optional supervised accuracies, {eval-set name: {str(difficulty): accuracy}} (the
      format of ``experiments/results/supervised_reference.json``); when it holds this run's eval
      set, the final table gets a "supervised (reference)" column.
  Raises:
    config_lib.ConfigError: a bad config (before anything compiles), or one that changes unsafe
      fields of the checkpoint's in ``workdir`` (``config_lib.check_compatible``).
    checkpoint_lib.CheckpointError: an unreadable checkpoint in ``workdir``.
    TrainingDiverged: a NaN/Inf loss or gradient (the last good checkpoint stays on disk).
    WorkdirError: ``workdir`` is not a directory and cannot be made one.
  """
  return run_group([config], [workdir], reference=reference)[0]


def _common_step(checkpointers: Sequence[checkpoint_lib.Checkpointer],
                 workdirs: Sequence[str]) -> int | None:
  """The step to resume a group from: the latest step every run has saved (None: a fresh start).
  A group cut off while saving its runs one by one leaves some runs a step ahead; they resume from
  the common step and replay it exactly. CheckpointError (one line) when runs share no step."""
  steps = [set(c.all_steps()) for c in checkpointers]
  if not any(steps):
    return None
  common = set.intersection(*steps)
  if not common:
    have = ", ".join(f"{w}: {max(s) if s else 'none'}" for w, s in zip(workdirs, steps))
    raise checkpoint_lib.CheckpointError(
        f"the runs of this group have no checkpoint step in common (latest: {have}); train them "
        f"one at a time, or group only runs at the same step")
  return max(common)


def run_group(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str], *,
              reference: Mapping[str, Mapping[str, float]] | None = None) -> list[RunResult]:
  """Trains (or resumes) the runs ``configs`` together in one program; see the module docstring.

  Args:
    configs: S configs sharing a ``programs.group_key`` (``programs.check_group``); S = 1 is a
      single run.
    workdirs: S run directories (each gets what its run alone writes there).
    reference: as in ``run``.
  Returns:
    one RunResult per run (all "done", or all "preempted" with every run saved).
  Raises:
    as ``run``, before anything compiles for a bad group (ValueError naming the fields that keep
    two configs from sharing a step); TrainingDiverged names the run.
  """
  if len(configs) != len(workdirs):
    raise ValueError(f"{len(configs)} configs but {len(workdirs)} workdirs")
  if configs and configs[0].distributed:
    initialize_distributed()
  programs_lib.check_group(configs)
  base, n = configs[0], len(configs)
  is_main = jax.process_index() == 0
  for workdir in workdirs:
    make_workdir(workdir)
  data, fsdp = config_lib.mesh_shape(base)
  mesh = sharding.make_mesh(data=data, fsdp=fsdp)
  programs = programs_lib.get(base, mesh)
  task, abstract, shardings = programs.task, programs.abstract, programs.shardings
  eval_fn = programs.eval_fn(bool(base.eval.debates) and base.mode != "supervised")
  train_step = programs.train_step(n)
  stacked = jax.tree.map(programs_lib.stacked_sharding, shardings)
  replicated = sharding.replicated(mesh)
  # Replicated global keys (checkpointable in multi-process runs, where host-local arrays are not).
  split = jax.jit(lambda seed: tuple(jax.random.split(jax.random.key(seed))),
                  out_shardings=(replicated, replicated))
  keys = [split(c.seed) for c in configs]
  config_jsons = [c.to_dict() for c in configs]
  # Run i's slice of the stacked state (jitted: in multi-process runs no process holds it whole).
  take = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree), static_argnums=1,
                 out_shardings=shardings)
  take_params = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree), static_argnums=1,
                        out_shardings=shardings.params)
  stack_states = jax.jit(lambda *trees: jax.tree.map(lambda *x: jnp.stack(x), *trees),
                         out_shardings=stacked)
  stack_keys = jax.jit(lambda *k: jnp.stack(k), out_shardings=replicated)

  with contextlib.ExitStack() as stack:
    checkpointers = [stack.enter_context(checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
        best_metric=config.checkpoint.best_metric or None,
        async_save=config.checkpoint.async_save)) for config, workdir in zip(configs, workdirs)]
    latest = _common_step(checkpointers, workdirs)
    if latest is not None:
      for checkpointer, config, config_json in zip(checkpointers, configs, config_jsons):
        saved = checkpointer.saved_config(latest) or {}
        config_lib.check_compatible(saved, config_json, allow_unsafe=config.resume_allow_unsafe)
      abstract_sharded = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
      states, roots = [], []
      for checkpointer, config, (_, root) in zip(checkpointers, configs, keys):
        restored, _ = checkpointer.restore({"state": abstract_sharded, "rng": root}, latest)
        # The config's data hyperparameters, not the checkpoint's: the same values unless a
        # resume changed them (``resume_allow_unsafe``), which must then take effect.
        states.append(step_lib.with_hparams(restored["state"], **config_lib.hparams(config)))
        roots.append(restored["rng"])
      if is_main:  # the steps after the checkpoint are replayed: log them once
        for workdir in workdirs:
          metrics_io.drop_after(os.path.join(workdir, "metrics.jsonl"), latest)
      if n == 1:
        print(f"Resumed from step {latest} ({os.path.join(workdirs[0], 'checkpoints')}).",
              flush=True)
      else:
        print(f"Resumed the group of {n} runs from step {latest} (each from its "
              f"<workdir>/checkpoints).", flush=True)
    else:
      states = []
      for config, (init_rng, _) in zip(configs, keys):
        # refuses a bad checkpoint before compiling
        start = restore.starting_params(config, abstract.params)
        state = sharding.init_sharded_state(programs.init_fn, mesh, shardings, init_rng)
        state = step_lib.with_hparams(state, **config_lib.hparams(config))
        states.append(restore.start_from(state, start, shardings))
      roots = [root for _, root in keys]
      if is_main:
        for workdir, config_json in zip(workdirs, config_jsons):
          with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config_json, f, indent=2, sort_keys=True)
    state = stack_states(*states)
    roots = stack_keys(*roots)
    del states

    eval_set = evaluation.load_eval_set(task, base)
    shards = data * fsdp  # the eval batch is rounded up to a multiple of the shards (padded rows)
    eval_batch = -(-min(base.eval.batch_size, base.eval.examples_per_difficulty) // shards) * shards

    def run_eval(state) -> list[dict[str, float]]:
      return [evaluation.evaluate_split(eval_fn, take_params(state.params, i), eval_set, mesh,
                                        eval_batch, config.seed)
              for i, config in enumerate(configs)]

    def save(step: int, state, metrics: list[dict[str, float]]) -> None:
      for i, (checkpointer, config_json) in enumerate(zip(checkpointers, config_jsons)):
        if step in checkpointer.all_steps():  # saved before a cut-off; the replay is the same
          continue
        checkpointer.save(step, {"state": take(state, i), "rng": roots[i]}, config=config_json,
                          metrics=(metrics[i] if metrics else None) or None, force=True)

    writers = [stack.enter_context(metrics_io.MetricWriter(w)) for w in workdirs]
    preemption = stack.enter_context(Preemption())
    start = int(jax.device_get(state.step)[0])
    num_steps = base.num_steps
    desc = f"{base.mode} {task.name}" if n == 1 else f"{n} runs vmapped: {base.mode} {task.name}"
    bar = metrics_io.ProgressBar(num_steps, initial=start, desc=desc,
                                 stream=sys.stderr) if is_main else None
    last_eval: list[dict[str, float]] = []
    step_keys = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)),
                        out_shardings=replicated)
    step, status = start, "done"
    # perf/train_seconds: time spent training since this process's first step finished (its
    # compile), excluding evaluations and checkpoint saves; read at logged steps, where the
    # metrics' transfer waits for the step.
    clock = TrainClock()
    while step < num_steps:
      state, metrics = train_step(state, step_keys(roots, step))
      step += 1
      if step == start + 1:
        jax.block_until_ready(state)
        clock.start()
      preempted = preemption.reached(step)  # read once: SIGTERM may land at any moment
      log_now, eval_now, ckpt_now = step_events(base, step, preempted)
      if log_now or eval_now or ckpt_now:
        host = jax.device_get(metrics)
        rows = [host_scalars({k: np.asarray(v)[i] for k, v in host.items()}) for i in range(n)]
        for i, scalars in enumerate(rows):
          bad = diverged(scalars)
          if bad:
            if bar:
              bar.close()
            for checkpointer in checkpointers:
              checkpointer.wait()
            kept = checkpointers[i].latest_step()
            if n == 1:
              raise TrainingDiverged(
                  f"step {step}: {', '.join(bad)} became NaN/Inf; stopped. The last good "
                  f"checkpoint (step {kept}) is kept in {workdirs[i]}/checkpoints. Try a lower "
                  f"optimizer.learning_rate or optimizer.clip_norm.")
            raise TrainingDiverged(
                f"step {step}: run {i} ({workdirs[i]}): {', '.join(bad)} became NaN/Inf; the "
                f"group stopped. Its last good checkpoint (step {kept}) is kept in "
                f"{workdirs[i]}/checkpoints. Try a lower optimizer.learning_rate.")
        seconds = clock.seconds()
        for writer, scalars in zip(writers, rows):
          scalars["perf/train_seconds"] = seconds
          writer.write_scalars(step, scalars)
        if bar:
          mean = lambda k: float(np.mean([r.get(k, np.nan) for r in rows]))
          bar.update(step, {"loss": mean("loss/sup"), "acc": mean("accuracy/model"),
                            "level": mean("curriculum/level") if "curriculum/level" in rows[0]
                            else 0})
      if eval_now:
        with clock.paused():
          last_eval = run_eval(state)
          for writer, result in zip(writers, last_eval):
            writer.write_scalars(step, result)
      if ckpt_now:
        with clock.paused():
          save(step, state, last_eval)
      if preempted and step < num_steps:
        status = "preempted"
        break
    if bar:
      bar.close()

    if status == "preempted":
      for checkpointer in checkpointers:
        checkpointer.wait()
      where = (f"{workdirs[0]}/checkpoints" if n == 1
               else f"each of the {n} runs' <workdir>/checkpoints")
      print(f"SIGTERM: saved step {step} to {where}; rerun the same command to resume.",
            flush=True)
      return [RunResult(status=status, step=step, eval=e, table="")
              for e in (last_eval or [{}] * n)]

    if not last_eval or not step_events(base, step, False)[1]:
      last_eval = run_eval(state)
      for writer, result in zip(writers, last_eval):
        writer.write_scalars(step, result)
    for checkpointer in checkpointers:
      checkpointer.wait()
    train_seconds = clock.seconds()
  results = []
  for config, workdir, result in zip(configs, workdirs, last_eval):
    table = reports.write_report(config, task, eval_set, result, step, workdir, reference,
                                 is_main=is_main)
    summary = reports.write_summary(config, task, eval_set, result, step, workdir, train_seconds,
                                    is_main=is_main)
    results.append(RunResult(status=status, step=step, eval=result, table=table, summary=summary))
  return results
