"""Checkpointer: bitwise round trips (typed keys, shardings), retention, atomicity, clear errors."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from amp_debate.train.checkpoint import Checkpointer, CheckpointError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = {"num_steps": 100, "model": {"d": 8, "layers": (1, 2)}, "eval": {"every": 10}}


@flax.struct.dataclass
class State:
  """A TrainState-like pytree: int32 step, params, target params, optax state, typed PRNG key."""

  step: jax.Array
  params: Any
  target_params: Any
  opt_state: Any
  rng: jax.Array


def _state(seed: int = 0, impl: str = "threefry2x32") -> State:
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {"w": jax.random.normal(k1, (4, 3)),
            "b": jax.random.normal(k2, (3,)).astype(jnp.bfloat16).at[0].set(jnp.nan)}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
  opt_state = (tx.init(params), {"multiplier": jnp.float32(0.25 + seed)})  # a Lagrange multiplier
  opt_state = jax.tree.map(lambda x: x + 1 if x.dtype == jnp.int32 else x, opt_state)  # count = 1
  return State(step=jnp.int32(seed), params=params, target_params=jax.tree.map(jnp.copy, params),
               opt_state=opt_state, rng=jax.random.key(seed, impl=impl))


def _bits(x: jax.Array) -> bytes:
  """Raw bytes of an array (typed keys: of their key data): equal bits, NaNs included."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(x).tobytes()


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert (x.dtype, x.shape) == (y.dtype, y.shape)
    assert _bits(x) == _bits(y)


def _abstract(tree):
  return jax.eval_shape(lambda: tree)


def _save_steps(directory, steps, **kwargs):
  """Saves _state(step) for each step, closes; returns the Checkpointer's steps."""
  with Checkpointer(directory, **kwargs) as ckpt:
    for step in steps:
      assert ckpt.save(step, _state(step), config={**CONFIG, "seed": step})
    return ckpt.all_steps()


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_round_trip_is_bitwise_with_config(tmp_path, impl):
  state = _state(3, impl)
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() is None and ckpt.saved_config() is None
    assert ckpt.save(7, state, config=CONFIG)
  with Checkpointer(tmp_path) as ckpt:  # a fresh process's view
    assert ckpt.all_steps() == [7] and ckpt.latest_step() == 7
    restored, config = ckpt.restore(_abstract(state))
    assert ckpt.saved_config() == ckpt.saved_config(7) == config
  _assert_bitwise_equal(restored, state)
  assert str(jax.random.key_impl(restored.rng)) == impl
  assert config == {"num_steps": 100, "model": {"d": 8, "layers": [1, 2]}, "eval": {"every": 10}}


def test_restore_gives_the_abstract_shardings(tmp_path):
  mesh = jax.make_mesh((8,), ("data",))
  assert len(mesh.devices.flat) == 8
  rows, cols = NamedSharding(mesh, P("data")), NamedSharding(mesh, P(None, "data"))
  state = {"w": jax.device_put(jnp.arange(64.0).reshape(8, 8), rows),
           "keys": jax.device_put(jax.random.split(jax.random.key(1), 8), rows),
           "step": jnp.int32(5)}
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, config={})
    wanted = {"w": jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=cols),
              "keys": jax.ShapeDtypeStruct((8,), state["keys"].dtype,
                                           sharding=NamedSharding(mesh, P())),
              "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))}
    restored, _ = ckpt.restore(wanted)
    for name, want in wanted.items():
      assert restored[name].sharding.is_equivalent_to(want.sharding, want.ndim), name
    _assert_bitwise_equal(restored, state)
    with pytest.raises(CheckpointError, match="leaf keys is sharded over an AbstractMesh"):
      ckpt.restore(_abstract(state))  # eval_shape of sharded arrays: AbstractMesh shardings


@pytest.mark.parametrize("mode, best", [("max", 2), ("min", 3)])
def test_keeps_newest_and_best(tmp_path, mode, best):
  """keep=2 newest plus the best by acc; saves without metrics (preemption) are only kept while
  among the newest; NaN or a missing metric never wins."""
  history = []
  with Checkpointer(tmp_path, keep=2, best_metric="acc", best_mode=mode) as ckpt:
    for step, acc in [(1, 0.5), (2, 0.9), (3, 0.1), (4, None), (5, float("nan")), (6, None)]:
      ckpt.save(step, _state(), config=CONFIG, metrics=None if acc is None else {"acc": acc})
      ckpt.wait()
      history.append(ckpt.all_steps())
  assert history == [[1], [1, 2], [2, 3], sorted({best, 3, 4}), sorted({best, 4, 5}),
                     sorted({best, 5, 6})]
  assert sorted(os.listdir(tmp_path)) == [str(s) for s in sorted({best, 5, 6})]
  with Checkpointer(tmp_path, keep=2, best_metric="acc", best_mode=mode) as ckpt:  # read back
    assert ckpt.all_steps() == sorted({best, 5, 6})
    better = 0.95 if mode == "max" else 0.05
    ckpt.save(7, _state(), config=CONFIG, metrics={"acc": better, "loss": jnp.float32(1.0)})
    ckpt.save(8, _state(), config=CONFIG, metrics={"acc": 0.5})
  assert Checkpointer(tmp_path, keep=2).all_steps() == [7, 8]


def test_keep_without_best_metric_and_save_policy(tmp_path):
  with Checkpointer(tmp_path, keep=2, async_save=False) as ckpt:
    for step in (10, 20, 30):
      assert ckpt.save(step, _state(), config=CONFIG, metrics={"acc": 1.0})  # metrics unused
    assert ckpt.all_steps() == [20, 30]
    assert not ckpt.save(25, _state(), config=CONFIG)  # not newer than the latest: skipped
    assert ckpt.save(25, _state(25), config=CONFIG, force=True)
    assert ckpt.all_steps() == [25, 30]  # the newest two by step
    with pytest.raises(CheckpointError, match="step 30 is already saved"):
      ckpt.save(30, _state(), config=CONFIG, force=True)
    _assert_bitwise_equal(ckpt.restore(_abstract(_state()), step=25)[0], _state(25))


def test_half_written_directories_are_skipped(tmp_path):
  """A killed save's tmp directory and a step directory without commit marker are not
  checkpoints: the previous complete one is used, and saving that step again works."""
  assert _save_steps(tmp_path, [1, 2]) == [1, 2]
  shutil.copytree(tmp_path / "2", tmp_path / "3.orbax-checkpoint-tmp")  # killed before rename
  shutil.copytree(tmp_path / "2", tmp_path / "4")  # renamed but marker lost (e.g. a bad copy)
  os.remove(tmp_path / "4" / "commit_success.txt")
  for path in (tmp_path / "4" / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:7])  # and truncated data
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.all_steps() == [1, 2] and ckpt.latest_step() == 2
    state, config = ckpt.restore(_abstract(_state()))
    _assert_bitwise_equal(state, _state(2))
    assert config["seed"] == ckpt.saved_config()["seed"] == 2
    with pytest.raises(CheckpointError, match=r"no complete checkpoint for step 4 .*\[1, 2\]"):
      ckpt.restore(_abstract(_state()), step=4)
    assert ckpt.save(4, _state(4), config=CONFIG)
    ckpt.wait()
    assert ckpt.all_steps() == [1, 2, 4]
    _assert_bitwise_equal(ckpt.restore(_abstract(_state()))[0], _state(4))
  assert sorted(os.listdir(tmp_path)) == ["1", "2", "4"]  # the tmp directory was cleaned up


_SAVE_FOREVER = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    from amp_debate.train.checkpoint import Checkpointer
    noise = jax.random.bits(jax.random.key(0), (1 << 22,), jnp.uint32)  # 16 MiB, incompressible
    with Checkpointer(sys.argv[1], keep=2) as ckpt:
      for step in range(1, 10_000):
        ckpt.save(step, {"x": noise ^ step, "step": jnp.int32(step)}, config={"step": step})
        print(step, flush=True)  # save(step) waited for save(step - 1) to finish
""")


def test_killed_mid_save_restores_a_complete_step(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, str(tmp_path)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    while proc.stdout.readline().strip() not in ("2", ""):  # step 1 is complete
      pass
    assert proc.poll() is None, "the saving subprocess died"
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob("*.orbax-checkpoint-tmp*")) and time.monotonic() < deadline:
      time.sleep(0.002)
    assert list(tmp_path.glob("*.orbax-checkpoint-tmp*")), "never caught a save in flight"
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  with Checkpointer(tmp_path, keep=2) as ckpt:
    step = ckpt.latest_step()
    assert step is not None and step >= 1
    abstract = {"x": jax.ShapeDtypeStruct((1 << 22,), jnp.uint32),
                "step": jax.ShapeDtypeStruct((), jnp.int32)}
    state, config = ckpt.restore(abstract)
  noise = jax.random.bits(jax.random.key(0), (1 << 22,), jnp.uint32)
  assert int(state["step"]) == config["step"] == step
  np.testing.assert_array_equal(state["x"], noise ^ step)


def _data_files(step_dir):
  return [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]


# A failed TensorStore read can leave a callback for Orbax's closed event loop: harmless noise.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["delete", "truncate", "garbage_metadata", "no_state"])
def test_corrupt_latest_checkpoint_is_a_clear_error(tmp_path, damage):
  _save_steps(tmp_path, [1, 2])
  if damage == "delete":
    for path in _data_files(tmp_path / "2"):
      path.unlink()
  elif damage == "truncate":
    for path in _data_files(tmp_path / "2"):
      path.write_bytes(path.read_bytes()[:5])
  elif damage == "garbage_metadata":
    (tmp_path / "2" / "state" / "_METADATA").write_text("{not json")
  else:
    shutil.rmtree(tmp_path / "2" / "state")
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 2  # looks complete: only reading it tells
    with pytest.raises(CheckpointError) as error:
      ckpt.restore(_abstract(_state()))
    message = str(error.value)
    assert f"step 2 in {tmp_path} is corrupt" in message and "use step 1" in message
    assert "\n" not in message
    _assert_bitwise_equal(ckpt.restore(_abstract(_state()), step=1)[0], _state(1))


def test_corrupt_config_and_metrics_files(tmp_path):
  with Checkpointer(tmp_path, best_metric="acc") as ckpt:
    for step in (1, 2):
      ckpt.save(step, _state(), config=CONFIG, metrics={"acc": step})
  (tmp_path / "2" / "config" / "metadata").write_text("garbage")
  with Checkpointer(tmp_path, best_metric="acc") as ckpt:
    with pytest.raises(CheckpointError, match=f"step 2 in {tmp_path} is corrupt"):
      ckpt.saved_config()
    assert ckpt.saved_config(1)["num_steps"] == 100
  (tmp_path / "1" / "metrics" / "metrics").write_text("{")
  with pytest.raises(CheckpointError, match=f"step 1 in {tmp_path} is corrupt .*metrics"):
    Checkpointer(tmp_path, best_metric="acc")


def test_missing_steps(tmp_path):
  with Checkpointer(tmp_path / "empty") as ckpt:
    with pytest.raises(CheckpointError, match=f"no checkpoint in {tmp_path / 'empty'}"):
      ckpt.restore(_abstract(_state()))
    with pytest.raises(CheckpointError, match="step 3"):
      ckpt.saved_config(3)
  _save_steps(tmp_path / "run", [1, 2])
  with (Checkpointer(tmp_path / "run") as ckpt,
        pytest.raises(CheckpointError, match=r"no complete checkpoint for step 5 .*\[1, 2\]")):
    ckpt.restore(_abstract(_state()), step=5)


def test_state_mismatch_is_refused(tmp_path):
  state = {"w": jnp.ones((2, 3)), "n": jnp.int32(1), "key": jax.random.key(0)}
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state, config={})
    for changed, expected in [
        ({"w": jnp.ones((4, 3))}, r"w saved float32\[2,3\], expected float32\[4,3\]"),
        ({"w": jnp.ones((2, 3), jnp.bfloat16)}, r"w saved float32\[2,3\], expected bfloat16"),
        ({"key": jax.random.key(0, impl="rbg")}, r"key saved uint32\[2\], expected uint32\[4\]"),
        ({"key": jnp.zeros(2, jnp.uint32)}, r"key saved key<fry>\[\], expected uint32\[2\]"),
        ({"extra": jnp.ones(2)}, "extra missing from the checkpoint"),
        ({"n": None}, "n not in the state")]:
      with pytest.raises(CheckpointError, match=f"step 1 in {tmp_path} does not match.*{expected}"):
        ckpt.restore(_abstract({**state, **changed}))
    _assert_bitwise_equal(ckpt.restore(_abstract(state))[0], state)


def test_save_checks_config_and_metrics(tmp_path):
  with Checkpointer(tmp_path, best_metric="acc") as ckpt:
    with pytest.raises(CheckpointError, match=r"config: model\.act is a function"):
      ckpt.save(1, _state(), config={"model": {"act": lambda x: x}})
    with pytest.raises(CheckpointError, match=r"metrics lack best_metric 'acc' \(got \['loss'\]\)"):
      ckpt.save(1, _state(), config=CONFIG, metrics={"loss": 1.0})
    with pytest.raises(CheckpointError, match="step must be a non-negative integer"):
      ckpt.save(-1, _state(), config=CONFIG)
    assert ckpt.all_steps() == []
    ckpt.save(1, _state(), config={"lr": np.float32(0.5), "n": jnp.int32(3), "dims": (1, 2)},
              metrics={"acc": jnp.float32(0.25)})
    assert ckpt.saved_config() == {"lr": 0.5, "n": 3, "dims": [1, 2]}
  for kwargs, expected in [({"keep": 0}, "keep must be an integer >= 1"),
                           ({"best_mode": "mean"}, "best_mode must be 'max' or 'min'")]:
    with pytest.raises(CheckpointError, match=expected):
      Checkpointer(tmp_path, **kwargs)


def test_failed_background_write_is_reported(tmp_path, monkeypatch):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state(1), config=CONFIG)
    ckpt.wait()

    async def disk_full(self):
      raise OSError("No space left on device")

    monkeypatch.setattr(ocp.path.atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
    assert ckpt.save(2, _state(2), config=CONFIG)
    with pytest.raises(CheckpointError, match=f"saving step 2 to {tmp_path} failed .*No space"):
      ckpt.wait()
    monkeypatch.undo()
    assert ckpt.all_steps() == [1]
    assert ckpt.save(2, _state(2), config=CONFIG)  # retrying works
  assert Checkpointer(tmp_path).all_steps() == [1, 2]


def test_close_waits_for_the_async_save(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, _state(), config=CONFIG)
  assert (tmp_path / "1" / "commit_success.txt").exists()
  ckpt.close()  # idempotent


@flax.struct.dataclass
class _Before:
  step: Any
  params: Any


@flax.struct.dataclass
class _After:  # _Before plus an optional part (as TrainState gained the KL anchor's parameters)
  step: Any
  params: Any
  extra: Any = None


def test_a_state_that_gained_an_optional_field_restores_checkpoints_written_before_it(tmp_path):
  params = {"w": jnp.arange(6.0).reshape(2, 3)}
  with Checkpointer(str(tmp_path / "old")) as ckpt:
    ckpt.save(1, {"state": _Before(step=jnp.int32(1), params=params)}, config={"a": 1})
  abstract = jax.eval_shape(lambda: {"state": _After(step=jnp.int32(0), params=params)})
  with Checkpointer(str(tmp_path / "old")) as ckpt:
    restored, _ = ckpt.restore(abstract)
  assert isinstance(restored["state"], _After) and restored["state"].extra is None
  np.testing.assert_array_equal(restored["state"].params["w"], params["w"])
  # With the optional part on, it is saved and restored like any other field.
  on = {"state": _After(step=jnp.int32(2), params=params, extra={"w": params["w"] + 1})}
  with Checkpointer(str(tmp_path / "new")) as ckpt:
    ckpt.save(2, on, config={"a": 1})
  with Checkpointer(str(tmp_path / "new")) as ckpt:
    back, _ = ckpt.restore(jax.eval_shape(lambda: on))
  np.testing.assert_array_equal(back["state"].extra["w"], params["w"] + 1)
  assert int(back["state"].step) == 2
