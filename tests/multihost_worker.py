"""One process of a multi-host run on one machine (CPU processes on loopback), and the run itself.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/multihost_worker.py \\
      --process_id=0 --num_processes=2 --coordinator=127.0.0.1:PORT --out=DIR

Every process calls ``jax.distributed.initialize`` (CPU collectives over gloo), builds the global
(data, fsdp) mesh over the devices of all processes, creates the state sharded and runs ``--steps``
sharded train steps with the same rngs. Process 0 then writes ``DIR/metrics.json`` (the metrics
of every step, replicated outputs of the step) and ``DIR/params.npz`` (the final params,
resharded to be replicated on every device so that one process can read them whole).

``tests/test_sharding.py`` launches two of these and compares the files with ``run`` on one
process with 8 devices; both use the tiny run of ``tests/tiny.py`` with the optimiser chosen here
(``setup``).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import jax
import numpy as np
import optax

import tiny
from amp_debate.procedure import combine
from amp_debate.train import sharding
from amp_debate.train import step as step_lib

TASK, MODEL = tiny.TASK, tiny.MODEL  # d_model = 32, divisible by fsdp = 4
KINDS = ("hybrid", "supervised")


def setup(kind: str, mesh: jax.sharding.Mesh | None = None):
  """(tx, config, pure step) of the tiny run (``tiny.step_config``): all three objectives weighted
  1, Adam (so the optimiser state holds mu/nu copies of the params). With a mesh, the
  step pins the sampled batch to the data shards (``sharding.batch_constraint``) when the step
  builder offers that hook (``constrain_batch``)."""
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  # Adam's update lr·m/(√v + eps) turns a rounding difference δ in a near-zero gradient component
  # into up to lr·δ/eps; eps = 1e-6 (not 1e-8) keeps that below the tests' tolerance.
  tx = combine.chain(combine.make("weighted", weights={"rl": 1.0, "sup": 1.0, "cat": 1.0}),
                     clip_norm=1.0, optimizer=optax.adam(1e-3, eps=1e-6))
  config = tiny.step_config()
  build = step_lib.build_train_step if kind == "hybrid" else step_lib.build_supervised_step
  constrain = None if mesh is None else sharding.batch_constraint(mesh)
  return tx, config, build(TASK, MODEL, tx, config, constrain_batch=constrain)


def init_fn(kind: str):
  tx, config, _ = setup(kind)
  return lambda rng: step_lib.init_state(TASK, MODEL, tx, config, rng)


def run(kind: str, mesh: jax.sharding.Mesh | None, steps: int) -> tuple[Any, list[dict]]:
  """(final state, per-step metrics) of ``steps`` steps from ``key(0)``, step i with ``key(i+1)``.

  mesh None: ``step.make_train_step``-style jit on the default device; else ``sharding``'s
  sharded init and step on ``mesh``. Metrics are returned as host numpy arrays.
  """
  tx, config, step_fn = setup(kind, mesh)
  init = init_fn(kind)
  if mesh is None:
    state = jax.jit(init)(jax.random.key(0))
    train_step = jax.jit(step_fn, donate_argnums=0)
  else:
    sharding.check_batch(config.batch_size, mesh)
    shardings = sharding.state_shardings(mesh, jax.eval_shape(init, jax.random.key(0)), MODEL, tx)
    state = sharding.init_sharded_state(init, mesh, shardings, jax.random.key(0))
    train_step = sharding.shard_step(step_fn, mesh, shardings)
  history = []
  for i in range(steps):
    state, metrics = train_step(state, jax.random.key(i + 1))
    history.append(jax.tree.map(np.asarray, metrics))
  return state, history


def gathered_params(state: Any, mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
  """{path: array} of the params, all-gathered so that every process holds them whole."""
  params = jax.jit(lambda p: p, out_shardings=sharding.replicated(mesh))(state.params)
  flat, _ = jax.tree.flatten_with_path(params)
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--coordinator", required=True, help="host:port of process 0")
  parser.add_argument("--out", required=True, help="directory process 0 writes its results to")
  parser.add_argument("--kind", choices=KINDS, default="supervised")
  parser.add_argument("--data", type=int, default=2)
  parser.add_argument("--fsdp", type=int, default=4)
  parser.add_argument("--steps", type=int, default=2)
  args = parser.parse_args()

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=args.coordinator,
                             num_processes=args.num_processes, process_id=args.process_id,
                             initialization_timeout=120)
  mesh = sharding.make_mesh(data=args.data, fsdp=args.fsdp)
  state, history = run(args.kind, mesh, args.steps)
  params = gathered_params(state, mesh)
  if jax.process_index() == 0:
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, "params.npz"), **params)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
      json.dump({"process_count": jax.process_count(), "device_count": jax.device_count(),
                 "local_device_count": jax.local_device_count(),
                 "metrics": [{k: v.tolist() for k, v in m.items()} for m in history]}, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
