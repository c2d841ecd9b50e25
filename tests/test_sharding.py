"""Mesh, shardings and the sharded step: same values as one device, state really sharded, errors.

The runs (tiny model, permutation n=4, batch 8, 4 debate turns, Adam, 2 steps) are defined in
``multihost_worker.py`` and cached here: each compile of the hybrid step takes ~30-60 s on a
2-core CPU, so every test reuses the few compiled runs.

Tolerance (TOL: rtol 1e-4, atol 2e-5). The sharded step computes the same function, but its sums
(gradients all-reduced over the data shards or across processes, fsdp-split matmuls, loss means)
add the same terms in a different order, so results differ by float32 rounding, which Adam's
division by sqrt(nu) amplifies a little. Observed max abs diffs vs one device: params 1.3e-6,
metrics 1e-6 (fsdp); two processes vs one: params 5e-7. With the batch pinned to the data shards
(``sharding.batch_constraint`` in the step) they stay below 3e-6. Discrete outcomes (sampled
arguments, winners, counts) are the same in every run.
"""

import contextlib
import dataclasses
import functools
import json
import os
import socket
import subprocess
import sys
import time

import jax
import multihost_worker as worker
import numpy as np
import optax
import pytest
import tiny
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from amp_debate import models
from amp_debate.procedure import combine
from amp_debate.train import sharding
from amp_debate.train import step as step_lib

STEPS = 2
TOL = {"rtol": 1e-4, "atol": 2e-5}
MESHES = {"data": (8, 1), "fsdp": (2, 4)}


@functools.cache
def _single(kind):
  """Params and metrics of the one-device run (``jax.jit`` on the default device)."""
  state, history = worker.run(kind, None, STEPS)
  return jax.device_get(state.params), history


@functools.cache
def _sharded(kind, mesh_name):
  """The sharded run's final state (device arrays, kept sharded) and metrics."""
  data, fsdp = MESHES[mesh_name]
  return worker.run(kind, sharding.make_mesh(data=data, fsdp=fsdp), STEPS)


def _assert_close(params, history, reference_params, reference_history):
  assert set(params) == set(reference_params)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **TOL), params, reference_params)
  for metrics, expected in zip(history, reference_history, strict=True):
    assert set(metrics) == set(expected)
    for name in expected:
      np.testing.assert_allclose(metrics[name], expected[name], **TOL, err_msg=name)


# ---- user errors ------------------------------------------------------------------------------

def test_make_mesh_shapes_and_bad_sizes():
  assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1}
  assert dict(sharding.make_mesh(data=2, fsdp=-1).shape) == {"data": 2, "fsdp": 4}
  assert dict(sharding.make_mesh(fsdp=4).shape) == {"data": 2, "fsdp": 4}
  assert dict(sharding.make_mesh(data=2, devices=jax.devices()[:2]).shape) == {"data": 2,
                                                                              "fsdp": 1}
  with pytest.raises(ValueError, match=r"data=3 x fsdp=1 = 3 must equal the device count 8"):
    sharding.make_mesh(data=3)
  with pytest.raises(ValueError, match="data must be a positive integer"):
    sharding.make_mesh(data=0)
  with pytest.raises(ValueError, match="fsdp must be a positive integer"):
    sharding.make_mesh(fsdp=2.0)
  with pytest.raises(ValueError, match="fsdp=3 does not divide the device count 8"):
    sharding.make_mesh(fsdp=3)
  with pytest.raises(ValueError, match="at most one of data and fsdp"):
    sharding.make_mesh(data=-1, fsdp=-1)


def test_check_batch_names_batch_size_and_shards():
  sharding.check_batch(16, sharding.make_mesh(data=8))
  sharding.check_batch(8, sharding.make_mesh(data=2, fsdp=4))
  with pytest.raises(ValueError, match=r"batch_size=12 .* shards 8"):
    sharding.check_batch(12, sharding.make_mesh(data=8))
  with pytest.raises(ValueError, match=r"batch_size=6 .* shards 8"):
    sharding.check_batch(6, sharding.make_mesh(data=2, fsdp=4))  # fsdp shards split it too
  sharding.check_batch(6, sharding.make_mesh(data=2, devices=jax.devices()[:2]))


def test_fsdp_that_does_not_divide_d_model_names_the_parameter():
  model = models.LanguageModel(models.ModelConfig(
      vocab_size=worker.TASK.vocab_size, num_layers=2, d_model=36, num_heads=2, d_ff=64,
      max_len=worker.MODEL.config.max_len))
  tx, config, _ = worker.setup("supervised")
  abstract = jax.eval_shape(
      lambda rng: step_lib.init_state(worker.TASK, model, tx, config, rng), jax.random.key(0))
  sharding.state_shardings(sharding.make_mesh(data=2, fsdp=4), abstract, model, tx)  # 4 | 36
  with pytest.raises(ValueError, match=r"parameter .* dimension 36 is not divisible .*fsdp"):
    sharding.state_shardings(sharding.make_mesh(data=1, fsdp=8), abstract, model, tx)


# ---- the sharded step computes what one device computes -----------------------------------------

def test_sharded_hybrid_step_matches_one_device():
  """On the (data=2, fsdp=4) mesh: the batch is split over all 8 devices (``batch_constraint``
  pins it to ("data", "fsdp")), as on the pure data-parallel mesh, and the params are split too,
  so this one hybrid run covers what the data-parallel one would (that mesh runs the cheaper
  supervised step below; each hybrid compile costs about a minute of the suite)."""
  state, history = _sharded("hybrid", "fsdp")
  params, reference_history = _single("hybrid")
  assert int(state.step) == STEPS
  _assert_close(jax.device_get(state.params), history, params, reference_history)
  # Not vacuous: the run trained (the loss moved) and debated.
  assert history[0]["loss/sup"] != history[1]["loss/sup"]
  assert max(float(h["grad_norm/rl"]) for h in history) > 0


@pytest.mark.parametrize("mesh_name", sorted(MESHES))
def test_sharded_supervised_step_matches_one_device(mesh_name):
  state, history = _sharded("supervised", mesh_name)
  params, reference_history = _single("supervised")
  _assert_close(jax.device_get(state.params), history, params, reference_history)


# ---- the state is sharded, not replicated -------------------------------------------------------

def _shard_shapes(x):
  return {shard.data.shape for shard in x.addressable_shards}


def _is_adam(x) -> bool:
  return isinstance(x, optax.ScaleByAdamState)


def test_state_is_created_and_kept_sharded_under_fsdp():
  mesh = sharding.make_mesh(data=2, fsdp=4)
  tx, _, _ = worker.setup("hybrid")
  init = worker.init_fn("hybrid")
  shardings = sharding.state_shardings(mesh, jax.eval_shape(init, jax.random.key(0)),
                                       worker.MODEL, tx)
  state = sharding.init_sharded_state(init, mesh, shardings, jax.random.key(0))
  # The values of an unsharded init: the random bits do not depend on the layout; the float
  # transforms of them compile differently per shard shape (seen: 1 ulp, 6e-8).
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
               jax.device_get(state.params), jax.device_get(worker.MODEL.init(jax.random.key(0))))
  trained, _ = _sharded("hybrid", "fsdp")

  for s in (state, trained):
    # ("vocab", "embed"): rows whole, d_model = 32 split 4 ways.
    table = s.params["embedder"]["tokens"]["embedding"]
    assert table.sharding.spec == P(None, "fsdp")
    assert _shard_shapes(table) == {(worker.TASK.vocab_size, 32 // 4)}
    # ("embed", "heads", "kv") → the first axis split.
    query = s.params["block_0"]["attention"]["query"]["kernel"]
    assert query.sharding.spec[0] == "fsdp" and _shard_shapes(query) == {
        (32 // 4, *query.shape[1:])}
    target_table = s.target_params["embedder"]["tokens"]["embedding"]
    assert target_table.sharding.spec == P(None, "fsdp")
    # Adam's mu and nu are sharded exactly like the params.
    [adam] = [x for x in jax.tree.leaves(s.opt_state, is_leaf=_is_adam) if _is_adam(x)]
    for moments in (adam.mu, adam.nu):
      for m, p in zip(jax.tree.leaves(moments), jax.tree.leaves(s.params), strict=True):
        assert m.sharding.spec == p.sharding.spec and _shard_shapes(m) == _shard_shapes(p)
    # Scalars (step, counts, combination weights, curriculum) are whole on every device.
    scalars = [s.step, adam.count, *jax.tree.leaves(combine.find_state(s.opt_state)),
               *jax.tree.leaves(s.curriculum)]
    for x in scalars:
      assert x.sharding.is_fully_replicated and len(x.addressable_shards) == 8


def test_league_snapshots_are_sharded_like_the_params_with_k_whole():
  """The league's stacked snapshots [K, ...] (``StepConfig.league_size``): each parameter's
  sharding with the K axis unsplit, so a snapshot is indexed without moving data between devices."""
  mesh = sharding.make_mesh(data=2, fsdp=4)
  tx, _, _ = worker.setup("hybrid")
  config = dataclasses.replace(tiny.step_config(), league_size=3, league_games=tiny.BATCH)
  init = lambda rng: step_lib.init_state(worker.TASK, worker.MODEL, tx, config, rng)
  shardings = sharding.state_shardings(mesh, jax.eval_shape(init, jax.random.key(0)),
                                       worker.MODEL, tx)
  state = sharding.init_sharded_state(init, mesh, shardings, jax.random.key(0))
  table = state.league_params["embedder"]["tokens"]["embedding"]
  assert table.shape[0] == 3 and table.sharding.spec == P(None, None, "fsdp")
  assert _shard_shapes(table) == {(3, worker.TASK.vocab_size, 32 // 4)}
  np.testing.assert_array_equal(jax.device_get(table)[2],
                                jax.device_get(state.params["embedder"]["tokens"]["embedding"]))


def test_data_parallel_params_are_replicated():
  state, _ = _sharded("supervised", "data")
  for x in jax.tree.leaves((state.params, state.opt_state)):
    assert x.sharding.is_fully_replicated


def test_batch_constraint_splits_the_batch_over_the_data_shards():
  mesh = sharding.make_mesh(data=2, fsdp=4)
  constrain = sharding.batch_constraint(mesh)

  def sample(rng):
    return step_lib.sample_batch(worker.TASK, rng, 16, worker.TASK.max_difficulty)

  batch = jax.jit(lambda rng: constrain(sample(rng)))(jax.random.key(3))
  expected = jax.jit(sample)(jax.random.key(3))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(batch), jax.device_get(expected))
  split = NamedSharding(mesh, P(("data", "fsdp")))
  assert batch.questions.sharding.is_equivalent_to(split, 2)
  assert _shard_shapes(batch.questions) == {(2, worker.TASK.question_len)}
  assert _shard_shapes(batch.difficulty) == {(2,)}


# ---- multi-host: two processes on loopback ------------------------------------------------------

MULTIHOST_TIMEOUT_S = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run_all(commands, *, env, cwd, log_dir, timeout) -> tuple[list[int], str]:
  """Runs the commands concurrently, killing any still running after ``timeout`` seconds.

  Returns (exit codes, -9 for a killed process; the tail of each process's output).
  """
  paths = [log_dir / f"process_{i}.log" for i in range(len(commands))]
  with contextlib.ExitStack() as stack:
    logs = [stack.enter_context(open(path, "w")) for path in paths]
    processes = [subprocess.Popen(command, env=env, cwd=cwd, stdout=log,
                                  stderr=subprocess.STDOUT)
                 for command, log in zip(commands, logs, strict=True)]
    deadline = time.monotonic() + timeout
    for p in processes:
      try:
        p.wait(timeout=max(0.1, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        break
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  tails = [f"--- process {i} (exit code {p.returncode}) ---\n{path.read_text()[-4000:]}"
           for i, (p, path) in enumerate(zip(processes, paths, strict=True))]
  return [p.returncode for p in processes], "\n".join(tails)


def test_two_processes_match_one_process(tmp_path):
  """2 processes × 4 CPU devices (gloo collectives) run the supervised step on the global
  (data=2, fsdp=4) mesh; process 0's metrics and all-gathered params equal those of one process
  with 8 devices. (The supervised step keeps this test at ~30 s; the worker also runs
  ``--kind=hybrid``, ~100 s on 2 cores.)"""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # The suite's XLA flags (tests/conftest.py: compile-time settings) with 4 devices a process.
  flags = os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=4")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags,
         "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
  out = tmp_path / "out"
  command = [sys.executable, os.path.join(repo, "tests", "multihost_worker.py"),
             f"--coordinator=127.0.0.1:{_free_port()}", "--num_processes=2", f"--out={out}",
             "--kind=supervised", "--data=2", "--fsdp=4", f"--steps={STEPS}"]
  returncodes, logs = _run_all([command + [f"--process_id={i}"] for i in range(2)], env=env,
                                cwd=repo, log_dir=tmp_path, timeout=MULTIHOST_TIMEOUT_S)
  assert returncodes == [0, 0], (
      f"multi-host workers failed or exceeded {MULTIHOST_TIMEOUT_S} s (exit codes "
      f"{returncodes}):\n{logs}")
  result = json.loads((out / "metrics.json").read_text())
  assert (result["process_count"], result["device_count"], result["local_device_count"]) == (
      2, 8, 4)
  with np.load(out / "params.npz") as saved:
    params = dict(saved)

  state, reference_history = _sharded("supervised", "fsdp")
  flat, _ = jax.tree.flatten_with_path(jax.device_get(state.params))
  reference_params = {jax.tree_util.keystr(path): leaf for path, leaf in flat}
  history = [{k: np.asarray(v) for k, v in m.items()} for m in result["metrics"]]
  _assert_close(params, history, reference_params, reference_history)
