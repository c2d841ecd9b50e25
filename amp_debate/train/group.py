"""Several runs vmapped in one process: ``run_group(configs, workdirs, group_dir)``.

Runs whose configs differ only in the seed and in hyperparameters that are data in the state
(``config_lib.DATA_FIELDS``: the learning rate, the λ weights and their anneals, the constrained
limit and multiplier step, the shaped β) share one compiled train step. A group of S such runs
trains as one program, ``jax.jit(jax.vmap(train_step))`` over a state with a leading run axis
(replicated on the mesh: every device holds every run's slice of the same shards):

  states[s] = the state run s's own trainer would start from (its seed, its hyperparameters)
  for step in [start, num_steps):
    states, metrics = vmap(train_step)(states, [fold_in(root_s, step) for s])
    per run: log, evaluate, the same files in its workdir as ``trainer.run`` writes
    every checkpoint.every / on SIGTERM: one Orbax checkpoint of the stacked state in group_dir
  at the end each run's final state is saved as its own checkpoint in ``<workdir>/checkpoints``

so each run directory ends up holding what a run of its config alone would write (metrics.jsonl,
TensorBoard events, results.md, curves.png, config.json, a checkpoint at its last step that
``trainer.run`` resumes or extends and ``trainer.load_state`` reads). A run's steps use the keys
its own run would (``fold_in(root_s, step)`` with ``root_s`` from its seed), so its numbers match
the run alone up to float reassociation of the batched kernels (tests/test_group.py).

Limits: the runs share everything static, including num_steps, the eval and checkpoint schedule
and the mesh; ``checkpoint.best_metric`` is ignored for the group's own checkpoints (each run's
final checkpoint carries its metrics); one run's NaN stops the group (its last good checkpoint is
kept).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from amp_debate.train import checkpoint as checkpoint_lib
from amp_debate.train import config_lib, metrics_io, sharding
from amp_debate.train import step as step_lib
from amp_debate.train import trainer

def group_key(config: ml_collections.ConfigDict) -> str:
  """Runs with equal keys can share a group: every config field except the seed and
  ``config_lib.DATA_FIELDS``, as JSON."""
  fields = {name: value for name, value in config_lib.flatten(config).items()
            if name != "seed" and not config_lib.is_data_field(name)}
  return json.dumps(sorted(fields.items()), default=repr)


def _stack(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _row(tree: Any, i: int) -> Any:
  return jax.tree.map(lambda x: x[i], tree)


def _stacked_sharding(s: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(s.mesh, jax.sharding.PartitionSpec(None, *s.spec))


def check_group(configs: Sequence[ml_collections.ConfigDict]) -> None:
  """ValueError (one line) unless the configs can train as one group: each valid, all with one
  ``group_key``, none continuing from a checkpoint of its own (``init_from``) under distributed."""
  if not configs:
    raise ValueError("a group needs at least one run")
  for config in configs:
    config_lib.validate(config)
  keys = [group_key(c) for c in configs]
  for i, key in enumerate(keys[1:], 1):
    if key != keys[0]:
      first = dict(json.loads(keys[0]))
      other = dict(json.loads(key))
      diff = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k))
      raise ValueError(f"runs 0 and {i} cannot share a compiled step: they differ in "
                       f"{', '.join(diff[:5])} (only the seed and {', '.join(config_lib.DATA_FIELDS)} "
                       f"may differ in a group)")


def run_group(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str],
              group_dir: str, *, reference: Mapping | None = None) -> list[trainer.RunResult]:
  """Trains (or resumes) the runs ``configs`` together, vmapped; see the module docstring.

  Args:
    configs: S configs sharing a ``group_key`` (``check_group``).
    workdirs: S run directories (each gets what ``trainer.run`` would write there).
    group_dir: the group's own directory (its stacked checkpoints).
    reference: as in ``trainer.run``.
  Returns:
    one RunResult per run (all "done", or all "preempted" with the group saved).
  Raises:
    ValueError (config_lib.ConfigError, checkpoint_lib.CheckpointError, trainer.WorkdirError):
      one line, before anything compiles for a bad group; trainer.TrainingDiverged naming the run.
  """
  if len(configs) != len(workdirs):
    raise ValueError(f"{len(configs)} configs but {len(workdirs)} workdirs")
  check_group(configs)
  base = configs[0]
  if base.distributed:
    trainer.initialize_distributed()
  is_main = jax.process_index() == 0
  for workdir in (*workdirs, group_dir):
    trainer.make_workdir(workdir)
  n = len(configs)
  data, fsdp = config_lib.mesh_shape(base)
  mesh = sharding.make_mesh(data=data, fsdp=fsdp)
  programs = trainer._programs(base, mesh)  # pylint: disable=protected-access
  task, abstract, shardings, eval_fn = (programs.task, programs.abstract, programs.shardings,
                                        programs.eval_fn)
  stacked = jax.tree.map(_stacked_sharding, shardings)
  replicated = sharding.replicated(mesh)
  train_step = jax.jit(jax.vmap(programs.step_fn), in_shardings=(stacked, replicated),
                       out_shardings=(stacked, replicated), donate_argnums=0)
  split = jax.jit(lambda seed: tuple(jax.random.split(jax.random.key(seed))),
                  out_shardings=(replicated, replicated))
  keys = [split(c.seed) for c in configs]
  roots = jax.device_put(jnp.stack([k[1] for k in keys]), replicated)
  config_jsons = [c.to_dict() for c in configs]
  group_config = {"runs": config_jsons, "workdirs": [os.path.abspath(w) for w in workdirs]}

  checkpointer = checkpoint_lib.Checkpointer(
      os.path.join(group_dir, "checkpoints"), keep=base.checkpoint.keep,
      async_save=base.checkpoint.async_save)
  with contextlib.ExitStack() as stack:
    stack.enter_context(checkpointer)
    latest = checkpointer.latest_step()
    if latest is not None:
      saved = checkpointer.saved_config(latest) or {}
      saved_runs = saved.get("runs", [])
      if len(saved_runs) != n:
        raise config_lib.ConfigError(f"{group_dir} holds a group of {len(saved_runs)} runs, "
                                     f"not {n}")
      for saved_run, config, config_json in zip(saved_runs, configs, config_jsons):
        config_lib.check_compatible(saved_run, config_json,
                                    allow_unsafe=config.resume_allow_unsafe)
      abstract_stacked = jax.tree.map(
          lambda a, s: jax.ShapeDtypeStruct((n, *a.shape), a.dtype, sharding=s), abstract,
          stacked)
      restored, _ = checkpointer.restore({"state": abstract_stacked, "rng": roots}, latest)
      state, roots = restored["state"], restored["rng"]
      if is_main:  # the steps after the checkpoint are replayed: log them once
        for workdir in workdirs:
          metrics_io.drop_after(os.path.join(workdir, "metrics.jsonl"), latest)
      print(f"Resumed the group of {n} runs from step {latest} "
            f"({os.path.join(group_dir, 'checkpoints')}).", flush=True)
    else:
      states = []
      for config, (init_rng, _) in zip(configs, keys):
        start = trainer.starting_params(config, abstract.params)
        state = sharding.init_sharded_state(programs.init_fn, mesh, shardings, init_rng)
        state = step_lib.with_hparams(state, **config_lib.hparams(config))
        states.append(trainer._start_from(state, start, shardings))  # pylint: disable=protected-access
      state = jax.jit(lambda *s: _stack(s), out_shardings=stacked)(*states)
      del states
      if is_main:
        for workdir, config_json in zip(workdirs, config_jsons):
          with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config_json, f, indent=2, sort_keys=True)

    eval_set = trainer._load_eval_set(task, base)  # pylint: disable=protected-access
    shards = data * fsdp
    eval_batch = -(-min(base.eval.batch_size, base.eval.examples_per_difficulty) // shards) * shards

    def run_eval(state) -> list[dict[str, float]]:
      return [trainer.evaluate_split(eval_fn, _row(state.params, i), eval_set, mesh, eval_batch,
                                     config.seed) for i, config in enumerate(configs)]

    writers = [stack.enter_context(metrics_io.MetricWriter(w)) for w in workdirs]
    preemption = stack.enter_context(trainer.Preemption())
    start = int(jax.device_get(state.step)[0])
    num_steps = base.num_steps
    bar = metrics_io.ProgressBar(num_steps, initial=start, stream=sys.stderr,
                                 desc=f"{n} runs vmapped: {base.mode} {task.name}") \
        if is_main else None
    last_eval: list[dict[str, float]] = []
    step_keys = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)),
                        out_shardings=replicated)
    step, status = start, "done"
    clock = trainer.TrainClock()
    while step < num_steps:
      state, metrics = train_step(state, step_keys(roots, step))
      step += 1
      if step == start + 1:
        jax.block_until_ready(state)
        clock.start()
      preempted = preemption.reached(step)
      log_now, eval_now, ckpt_now = trainer.step_events(base, step, preempted)
      if log_now or eval_now or ckpt_now:
        host = jax.device_get(metrics)
        rows = [trainer.host_scalars(_row(host, i)) for i in range(n)]
        for i, scalars in enumerate(rows):
          bad = trainer.diverged(scalars)
          if bad:
            if bar:
              bar.close()
            checkpointer.wait()
            raise trainer.TrainingDiverged(
                f"step {step}: run {i} ({workdirs[i]}): {', '.join(bad)} became NaN/Inf; the "
                f"group stopped. Its last good checkpoint (step {checkpointer.latest_step()}) is "
                f"kept in {group_dir}/checkpoints. Try a lower optimizer.learning_rate.")
        seconds = clock.seconds()
        for writer, scalars in zip(writers, rows):
          scalars["perf/train_seconds"] = seconds
          writer.write_scalars(step, scalars)
        if bar:
          mean = lambda k: float(np.mean([r.get(k, np.nan) for r in rows]))
          bar.update(step, {"loss": mean("loss/sup"), "acc": mean("accuracy/model")})
      if eval_now:
        with clock.paused():
          last_eval = run_eval(state)
          for writer, result in zip(writers, last_eval):
            writer.write_scalars(step, result)
      if ckpt_now:
        with clock.paused():
          checkpointer.save(step, {"state": state, "rng": roots}, config=group_config, force=True)
      if preempted and step < num_steps:
        status = "preempted"
        break
    if bar:
      bar.close()

    if status == "preempted":
      checkpointer.wait()
      print(f"SIGTERM: saved the group at step {step} to {group_dir}/checkpoints; rerun the same "
            f"command to resume.", flush=True)
      return [trainer.RunResult(status=status, step=step, eval=e, table="")
              for e in (last_eval or [{}] * n)]

    if not last_eval or not trainer.step_events(base, step, False)[1]:
      last_eval = run_eval(state)
      for writer, result in zip(writers, last_eval):
        writer.write_scalars(step, result)
    checkpointer.wait()
    results = []
    for i, (config, workdir) in enumerate(zip(configs, workdirs)):
      _save_run(workdir, step, _row(state, i), roots[i], config, config_jsons[i], last_eval[i])
      table = trainer.write_report(config, task, eval_set, last_eval[i], step, workdir,
                                   reference, is_main=is_main)
      results.append(trainer.RunResult(status=status, step=step, eval=last_eval[i], table=table))
    return results


def _save_run(workdir: str, step: int, state: Any, root: jax.Array,
              config: ml_collections.ConfigDict, config_json: dict, metrics: dict) -> None:
  """Run ``workdir``'s own checkpoint at ``step`` (what ``trainer.run`` would have saved), unless
  it is there already (a group finished before, its report cut off)."""
  with checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
      best_metric=config.checkpoint.best_metric or None, async_save=False) as checkpointer:
    if step in checkpointer.all_steps():
      return
    checkpointer.save(step, {"state": state, "rng": root}, config=config_json,
                      metrics=metrics or None, force=True)
