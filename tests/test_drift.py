"""Drift analysis: CKA and relative change as pure functions (amp_debate.safety.drift), on the
checkpoints of one tiny run (steps 2 and 4), and the command line's outputs and refusals
(amp_debate.tools.drift)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from amp_debate import train
from amp_debate.procedure import protocol
from amp_debate.safety import drift
from amp_debate.tools import drift as drift_tool
from amp_debate.train import config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, ".jax_cache", "eval_data")  # shared with test_trainer's eval sets
EXAMPLES = 64  # prompts per input kind: enough for CKA at d_model = 32


def _config(mode="hybrid", steps=4, **overrides):
  """The tiny run with checkpoints at steps 2 and 4 and only the final, small evaluation."""
  return tiny.config(mode, steps, **{
      "eval__examples_per_difficulty": 16, "eval__batch_size": 16, "eval__every": 0,
      "eval__debates": False, "eval__data_dir": DATA_DIR, "checkpoint__every": 2, **overrides})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("drift") / "run")
  assert train.run(_config(mode="supervised"), workdir).step == 4  # the fastest step to compile
  return workdir


@pytest.fixture(scope="module")
def wide_run_dir(tmp_path_factory):
  """A run of the same task with twice the width (the supervised step compiles fastest)."""
  workdir = str(tmp_path_factory.mktemp("drift") / "wide")
  train.run(_config(mode="supervised", steps=1, model__d_model=64), workdir)
  return workdir


@pytest.fixture(scope="module")
def checkpoint(run_dir):
  params, config, step, _ = drift_tool.load_checkpoint(run_dir)
  assert step == 4
  task = config_lib.make_task(config)
  return task, config_lib.make_model(config, task), params


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "amp_debate.tools.drift", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


# ---- pure functions ---------------------------------------------------------------------------
def test_linear_cka_is_invariant_to_rotation_and_isotropic_scale_only():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 12))
  y = np.tanh(x @ rng.normal(size=(12, 20))) + 0.3 * rng.normal(size=(300, 20))
  rotation, _ = np.linalg.qr(rng.normal(size=(12, 12)))
  base = drift.linear_cka(x, y)
  assert 0.2 < base < 0.95
  assert drift.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
  assert drift.linear_cka(y, x) == pytest.approx(base, abs=1e-12)
  assert drift.linear_cka(3.7 * x @ rotation + 5.0, y) == pytest.approx(base, abs=1e-10)
  # Not invariant to an arbitrary linear map (stretching one feature) ...
  stretched = x * np.array([20.0] + [1.0] * 11)
  assert abs(drift.linear_cka(stretched, y) - base) > 1e-2
  # ... and independent features are far from similar.
  assert drift.linear_cka(rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))) < 0.05
  assert np.isnan(drift.linear_cka(np.ones((10, 3)), x[:10]))


def test_relative_change_by_module_in_forward_order():
  a = {"final_norm": {"scale": np.ones(4)}, "block_10": {"w": np.ones((2, 2))},
       "block_2": {"w": np.full((2, 2), 2.0)}, "embedder": {"e": np.ones(3)}}
  assert drift.module_order(a) == ["embedder", "block_2", "block_10", "final_norm"]
  assert set(drift.relative_changes(a, a).values()) == {0.0}
  b = jax.tree.map(lambda x: x, a)
  b["block_2"] = {"w": np.full((2, 2), 3.0)}
  changes = drift.relative_changes(a, b)
  assert changes["block_2"] == pytest.approx(0.5)  # ||1|| / ||2||, elementwise
  assert changes["embedder"] == changes["block_10"] == changes["final_norm"] == 0.0
  assert changes["total"] == pytest.approx(2.0 / np.sqrt(4 + 4 + 16 + 3))
  with pytest.raises(AssertionError):
    drift.relative_change(a, {**a, "embedder": {"e": np.ones(4)}})


def test_mean_pooling_ignores_leading_pads():
  hidden = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
  pooled = drift.pool_tokens(hidden, jnp.array([0, 2], jnp.int32), "mean")
  np.testing.assert_allclose(pooled[0], hidden[0].mean(0))
  np.testing.assert_allclose(pooled[1], hidden[1, 2:].mean(0))
  np.testing.assert_allclose(drift.pool_tokens(hidden, jnp.array([0, 2]), "last"), hidden[:, -1])


def test_check_comparable_refuses_another_task_or_shape():
  config = {"task": "permutation", "task_options": {"n": 4, "max_exponent": 4}}
  params = {"embedder": {"e": np.ones((5, 2))}}
  drift.check_comparable(config, dict(config), params, params)
  other = {**config, "task_options": {"n": 5, "max_exponent": 4}}
  with pytest.raises(drift.DriftError, match="different tasks"):
    drift.check_comparable(config, other, params, params)
  with pytest.raises(drift.DriftError, match=r"\['embedder'\]\['e'\]: a \(5, 2\), b \(6, 2\)"):
    drift.check_comparable(config, config, params, {"embedder": {"e": np.ones((6, 2))}})


# ---- on a tiny run's checkpoints --------------------------------------------------------------
def test_probe_prompts_ask_the_same_questions_in_every_kind(checkpoint):
  task = checkpoint[0]
  probes = jax.device_get(drift.probe_prompts(task, jax.random.key(1), 8))  # checked in numpy
  (plain, plain_headers), (proto, proto_headers) = probes["task"], probes["protocol"]
  assert plain.shape == proto.shape == (8, protocol.prompt_len(task))
  assert (plain_headers == protocol.ANSWER).all()
  np.testing.assert_array_equal(
      proto_headers, [protocol.SUPPORT, protocol.STOP, protocol.VERDICT, protocol.REVIEW] * 2)
  lq, la = task.question_len, task.answer_len
  review = proto[3]  # [PAD ...] REVIEW q SEP claim
  assert (review[:-(lq + la + 2)] == protocol.PAD).all()
  assert review[-(lq + la + 2)] == protocol.REVIEW and review[-la - 1] == protocol.SEP
  np.testing.assert_array_equal(review[-(lq + la + 1):-la - 1], plain[3, -lq:])


def test_hidden_states_are_the_models_forward_pass(checkpoint):
  task, model, params = checkpoint
  prompts = drift.probe_prompts(task, jax.random.key(2), EXAMPLES)["protocol"][0]
  states = drift.hidden_states(model, params, prompts, pool="last")
  blocks = [f"block_{i}" for i in range(model.config.num_layers)]
  assert drift.module_order(states) == ["embedder", *blocks, "final_norm"]
  # Tied embeddings: the first answer token's logits are the final norm's last-token output
  # against the token table.
  logits = jax.jit(lambda p, q: model.answer_logits(p, q, jnp.zeros((EXAMPLES, 1), jnp.int32)))(
      params, prompts)[:, 0]
  table = params["embedder"]["tokens"]["embedding"]
  np.testing.assert_allclose(states["final_norm"] @ table.T, logits, rtol=1e-4, atol=1e-4)


def test_self_cka_is_one_and_a_perturbation_moves_every_layer(checkpoint):
  task, model, params = checkpoint
  same = drift.compare(task, model, params, model, params, examples=EXAMPLES)
  assert same["total_relative_change"] == 0.0
  for layer in same["layers"]:
    assert layer["relative_change"] == 0.0
    for kind in drift.KINDS:
      assert layer["cka"][kind] == pytest.approx(1.0, abs=1e-5), (layer["name"], kind)
  # Noise of each leaf's root-mean-square: relative change 1 in expectation.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(3), len(leaves))
  noisy = treedef.unflatten([
      x + jnp.sqrt(jnp.mean(x ** 2)) * jax.random.normal(k, x.shape)
      for x, k in zip(leaves, keys)])
  moved = drift.compare(task, model, params, model, noisy, examples=EXAMPLES)
  assert 0.8 < moved["total_relative_change"] < 1.2
  for layer in moved["layers"]:
    assert 0.6 < layer["relative_change"] < 1.4, layer
    # Mean-pooled embeddings are a random linear map of the prompt's token counts before and
    # after, which keeps their inner products roughly: CKA falls least there (measured 0.93-0.96).
    limit = 0.99 if layer["name"] == "embedder" else 0.8
    for kind in drift.KINDS:
      assert layer["cka"][kind] < limit, (layer["name"], kind, layer["cka"][kind])


def test_cli_compares_two_steps_of_one_run(run_dir):
  result = _cli(f"--a={run_dir}:2", f"--b={run_dir}/checkpoints/4", f"--examples={EXAMPLES}")
  assert result.returncode == 0, result.stderr
  assert "| block_0 |" in result.stdout and "CKA, protocol" in result.stdout
  out = os.path.join(run_dir, "drift")  # the default: b's workdir
  report = json.load(open(os.path.join(out, "drift.json")))
  assert (report["a"]["step"], report["b"]["step"]) == (2, 4)
  assert [layer["name"] for layer in report["layers"]] == ["embedder", "block_0", "final_norm"]
  for layer in report["layers"]:  # two Adam steps move every module, a little
    assert 0.0 < layer["relative_change"] < 0.2
    assert all(0.5 < layer["cka"][kind] <= 1.0 + 1e-9 for kind in drift.KINDS)
  assert set(report["cka_by_header"]["protocol"]) == {"SUPPORT", "STOP", "VERDICT", "REVIEW"}
  text = open(os.path.join(out, "drift.md")).read()
  assert "| module |" in text and "linear CKA (Kornblith et al. 2019)" in text
  with open(os.path.join(out, "drift.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_a_missing_checkpoint_or_other_shapes_in_one_line(run_dir, wide_run_dir,
                                                                      tmp_path):
  result = _cli(f"--a={tmp_path}/nowhere", f"--b={run_dir}")
  assert result.returncode == 1
  assert result.stderr.strip() == f"drift: {tmp_path}/nowhere: no such workdir {tmp_path}/nowhere"
  assert not os.path.exists(tmp_path / "nowhere")
  result = _cli(f"--a={run_dir}", f"--b={wide_run_dir}")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("drift: the checkpoints' models differ in shape")
  with pytest.raises(drift.DriftError, match=r"no checkpoint at step 3 .*saved steps: 2, 4\)"):
    drift_tool.load_checkpoint(f"{run_dir}:3")
  with pytest.raises(drift.DriftError, match="no checkpoints in"):
    drift_tool.load_checkpoint(str(tmp_path))
