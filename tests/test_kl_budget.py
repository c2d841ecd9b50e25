"""The KL budget to a known-safe policy (amp_debate.safety.kl_budget) and the attack study
(amp_debate.safety.kl_attack, its command line amp_debate.tools.kl_attack): the KL, the schedule,
the constraint on a toy policy and in the trainer (resume included), the attackers on a planted
weakness, and one-line refusals."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny
from amp_debate import train
from amp_debate.procedure import combine, protocol
from amp_debate.safety import catastrophe, kl_attack, kl_budget
from amp_debate.tools import kl_attack as kl_attack_tool
from amp_debate.train import config_lib, metrics_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, ".jax_cache", "eval_data")  # shared with test_trainer


# ---- the KL and the schedule ---------------------------------------------------------------------
def test_kl_of_a_model_with_itself_is_zero_and_positive_after_a_perturbation():
  task, model = tiny.TASK, tiny.MODEL
  params = model.init(jax.random.key(0))
  prompts = kl_budget.reference_prompts(task, 16, seed=0)
  assert prompts.shape == (16, protocol.prompt_len(task))
  np.testing.assert_array_equal(prompts, kl_budget.reference_prompts(task, 16, seed=0))
  assert not np.array_equal(prompts, kl_budget.reference_prompts(task, 16, seed=1))
  kl = jax.jit(lambda p, a: kl_budget.kl_divergence(model, p, a, prompts, task.answer_len))
  assert float(kl(params, params)) == 0.0
  # The perturbations and the checks' references as jitted programs (eagerly, each op of the
  # transformer and the decoder compiles on its own).
  perturbed = jax.jit(lambda params, key, s: jax.tree.map(
      lambda p, z: p + s * z, params, kl_attack.random_direction(key, params)))
  small, large = (perturbed(params, jax.random.key(1), s) for s in (0.01, 0.1))
  assert 0 < float(kl(small, params)) < float(kl(large, params))
  # The exact KL of the first answer token's distributions (La = 1 here).
  assert task.answer_len == 1

  @jax.jit
  def references(params, large):
    answers = kl_budget.greedy_answers(model, params, prompts, 1)
    logp = jax.nn.log_softmax(model.answer_logits(large, prompts, answers)[:, 0])
    logq = jax.nn.log_softmax(model.answer_logits(params, prompts, answers)[:, 0])
    expected = (jnp.exp(logp) * (logp - logq)).sum(-1).mean()
    log_probs = lambda p: kl_budget.policy_log_probs(model, p, prompts, answers)
    _, rate = kl_attack.kl_and_rate_fn(log_probs, params)(large)
    return expected, rate, jnp.exp(catastrophe.exploit_log_prob(model, large, prompts)).mean()

  expected, rate, exploit_rate = references(params, large)
  np.testing.assert_allclose(kl(large, params), expected, rtol=1e-5)
  # The attack's catastrophe rate is mean exp(catastrophe.exploit_log_prob).
  np.testing.assert_allclose(rate, exploit_rate, rtol=1e-5)


def test_the_budget_grows_by_phase():
  assert kl_budget.schedule(0.01, 2.0, 4) == pytest.approx([0.01, 0.02, 0.04, 0.08])
  at = lambda count: float(kl_budget.budget_at(jnp.int32(count), 0.01, 3.0, 10))
  assert [at(c) for c in (0, 9, 10, 19, 20, 35)] == pytest.approx(
      [0.01, 0.01, 0.03, 0.03, 0.09, 0.27])


# ---- the constraint on a toy policy --------------------------------------------------------------
R, V = 8, 16
W0 = jax.random.normal(jax.random.key(0), (R, V)) * 2.0
TARGET = jax.nn.one_hot(jnp.argmin(W0, -1), V)  # the least likely token of each row under π_safe


def _toy_log_probs(params):
  return jax.nn.log_softmax(params["w"])[:, None, :]  # [R, La=1, V]


def _toy_make_kl(anchor):
  logq = jax.lax.stop_gradient(_toy_log_probs(anchor))
  return lambda params: kl_budget.mean_kl(_toy_log_probs(params), logq)


def _toy_phase_end_kls(budget: bool, lr: float, phase_steps=20, phases=6):
  """Cross-entropy toward TARGET from π_safe with Adam; the KL at each phase end."""
  tx = combine.chain(combine.weighted({"sup": 1.0}), clip_norm=1.0, optimizer=optax.adam(lr))
  if budget:
    tx = kl_budget.constrain(tx, _toy_make_kl, epsilon0=0.05, growth=2.0,
                             phase_steps=phase_steps)
  params = {"w": W0}
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss, grad = jax.value_and_grad(
        lambda p: -(TARGET * jax.nn.log_softmax(p["w"])).sum(-1).mean())(params)
    updates, state = tx.update({"sup": grad}, state, params, losses={"sup": loss})
    return optax.apply_updates(params, updates), state

  kl = jax.jit(_toy_make_kl({"w": W0}))
  ends = []
  for i in range(phase_steps * phases):
    params, state = step(params, state)
    if (i + 1) % phase_steps == 0:
      ends.append(float(kl(params)))
  return np.array(ends), state


@pytest.mark.parametrize("lr", [0.05, 0.5])
def test_the_budget_holds_at_every_phase_end_where_free_training_exceeds_it(lr):
  budgets = np.array(kl_budget.schedule(0.05, 2.0, 6))
  free, _ = _toy_phase_end_kls(False, lr)
  held, state = _toy_phase_end_kls(True, lr)
  assert (free[1:] > budgets[1:]).all()  # the budget binds
  assert (held <= budgets * (1 + 1e-4)).all(), (held, budgets)
  assert (held[1:] >= 0.5 * budgets[1:]).all()  # and is spent: training goes on within it
  metrics = kl_budget.metrics(state)
  assert float(metrics["kl/budget"]) == pytest.approx(budgets[-1])
  assert float(metrics["kl/multiplier"]) > 0  # the projection is active at the end
  # The combination's state is still found through the wrapper.
  assert float(combine.weights(state)["sup"]) == 1.0


def test_the_anchor_is_replaced_and_checked():
  tx = kl_budget.constrain(optax.sgd(0.1), _toy_make_kl, epsilon0=0.1, phase_steps=5)
  state = tx.init({"w": jnp.zeros((R, V))})
  np.testing.assert_array_equal(kl_budget.find_state(state).anchor["w"], 0.0)
  state = kl_budget.set_anchor(state, {"w": W0})
  np.testing.assert_array_equal(kl_budget.find_state(state).anchor["w"], W0)
  with pytest.raises(AssertionError, match="anchor must match"):
    kl_budget.set_anchor(state, {"w": jnp.zeros((R, V + 1))})
  assert kl_budget.find_state(optax.adam(0.1).init({"w": W0})) is None
  assert kl_budget.metrics(optax.adam(0.1).init({"w": W0})) == {}
  # The anchor is sharded like the params: optax.tree_map_params sees it as a copy of them.
  marked = optax.tree_map_params(tx, lambda _: "param", state, transform_non_params=lambda _: 0)
  assert kl_budget.find_state(marked).anchor == {"w": "param"}
  with pytest.raises(ValueError, match="kl_budget.epsilon0 must be > 0.0"):
    kl_budget.constrain(optax.sgd(0.1), _toy_make_kl, epsilon0=0.0, phase_steps=5)


# ---- the attackers on a planted weakness ---------------------------------------------------------
def _planted():
  """A toy policy over V tokens for R prompts: logits = x @ w + b with b[EXPLOIT] = -10. The
  planted weakness: one coordinate (b[EXPLOIT]) raises p(EXPLOIT) on every prompt at once."""
  x = jax.random.normal(jax.random.key(2), (R, 4))
  params = {"w": jax.random.normal(jax.random.key(3), (4, V)),
            "b": jnp.zeros(V).at[catastrophe.EXPLOIT].set(-10.0)}
  log_probs = lambda p: jax.nn.log_softmax(x @ p["w"] + p["b"])[:, None, :]
  return params, log_probs


def test_the_optimising_attacker_beats_the_stochastic_one_on_a_planted_weakness():
  params, log_probs = _planted()
  epsilons = [0.01, 0.1]
  sto = kl_attack.stochastic_attack(log_probs, params, jax.random.key(0), epsilons, samples=16)
  assert (sto["kl"] <= np.array(epsilons) * (1 + 1e-4)).all()
  assert (sto["kl"] >= np.array(epsilons) * 0.99).all()  # scaled to spend the budget
  attack = jax.jit(lambda start, eps: kl_attack.optimise_attack(
      log_probs, params, start, eps, steps=100, learning_rate=0.1))
  p_exploit = jnp.exp(log_probs(params)[:, 0, catastrophe.EXPLOIT])
  for e, epsilon in enumerate(epsilons):
    result = attack(params, jnp.float32(epsilon))
    bound = float(kl_attack.rate_bound(p_exploit, epsilon))
    assert float(result["kl"]) <= epsilon * (1 + 1e-4)
    assert float(result["rate"]) > 10 * sto["rate"][:, e].max()
    assert sto["rate"][:, e].max() <= float(result["rate"]) <= bound * (1 + 1e-3)
    assert float(result["rate"]) > 0.3 * bound  # close to what any policy could do
  # The bound: the rate of π_safe at ε -> 0, and monotone.
  assert float(kl_attack.rate_bound(p_exploit, 1e-9)) == pytest.approx(float(p_exploit.mean()),
                                                                         rel=1e-2)
  assert float(kl_attack.rate_bound(p_exploit, 0.1)) < float(kl_attack.rate_bound(p_exploit, 1.0))


# ---- in the trainer ------------------------------------------------------------------------------
def _config(mode="amplification", steps=4, **overrides):
  return tiny.config(mode, steps, **{
      "eval__examples_per_difficulty": 16, "eval__batch_size": 16, "eval__every": 0,
      "eval__debates": False, "eval__data_dir": DATA_DIR, "checkpoint__every": 2,
      "checkpoint__best_metric": "", **overrides})


@pytest.fixture(scope="module")
def safe_run(tmp_path_factory):
  """π_safe: a 2-step tiny run (supervised: the quickest step to compile)."""
  workdir = str(tmp_path_factory.mktemp("kl") / "safe")
  train.run(_config(mode="supervised", steps=2), workdir)
  return workdir


def _budgeted(safe, steps, **overrides):
  return _config(steps=steps, init_from=safe, safety__kl_budget__reference=safe,
                 safety__kl_budget__phase_steps=2, safety__kl_budget__epsilon0=1e-4,
                 safety__kl_budget__growth=3.0, checkpoint__keep=3, **overrides)


def test_a_budgeted_run_stays_within_budget_and_resumes_exactly(safe_run, tmp_path, capsys):
  safe_params = train.load_state(safe_run)[0].params
  straight = str(tmp_path / "straight")
  train.run(_budgeted(safe_run, 4), straight)
  rows = [r for r in metrics_io.read_jsonl(os.path.join(straight, "metrics.jsonl"))
          if "kl/value" in r]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert rows[0]["kl/value"] < 1e-6  # M starts at π_safe
  assert [r["kl/budget"] for r in rows] == pytest.approx([1e-4, 1e-4, 3e-4, 3e-4])
  assert all(r["kl/value"] <= r["kl/budget"] * (1 + 1e-5) for r in rows)
  assert any(r["kl/step_scale"] < 1 for r in rows)  # the budget binds at this ε
  state, _, _ = train.load_state(straight)
  budget_state = kl_budget.find_state(state.opt_state)
  jax.tree.map(np.testing.assert_array_equal, budget_state.anchor, safe_params)
  assert int(budget_state.count) == 4
  # The KL at every phase end, measured anew on the checkpoints.
  task, model = tiny.TASK, tiny.MODEL
  prompts = kl_budget.reference_prompts(task, 128, 0)
  measure = jax.jit(lambda p, a: kl_budget.kl_divergence(model, p, a, prompts, task.answer_len))
  for step, epsilon in ((2, 1e-4), (4, 3e-4)):
    params = train.load_state(straight, step)[0].params
    kl = measure(params, safe_params)
    assert 0 < float(kl) <= epsilon * (1 + 1e-3)
  # Resume: the budget's state comes back with the checkpoint (not reloaded from the reference).
  resumed = str(tmp_path / "resumed")
  train.run(_budgeted(safe_run, 3), resumed)  # stops in the middle of phase 1
  result = train.run(_budgeted(safe_run, 4), resumed)
  assert result.step == 4 and "Resumed from step 3" in capsys.readouterr().out
  again = train.load_state(resumed)[0]
  jax.tree.map(np.testing.assert_array_equal, again.params, state.params)
  jax.tree.map(np.testing.assert_array_equal, kl_budget.find_state(again.opt_state),
               budget_state)


def test_bad_references_end_with_one_line(safe_run, tmp_path):
  def refused(match, **overrides):
    with pytest.raises(config_lib.ConfigError, match=match) as error:
      train.run(_config(**overrides), str(tmp_path / "run"))
    assert "\n" not in str(error.value)

  missing = str(tmp_path / "nowhere")
  refused(r"config.safety.kl_budget.reference=.*nowhere.*: no run there",
          safety__kl_budget__reference=missing)
  refused(r"config.init_from=.*nowhere.*: no run there", init_from=missing)
  refused(r"no complete checkpoint for step 7", safety__kl_budget__reference=f"{safe_run}:7")
  refused(r"a checkpoint of task permutation \{'max_exponent': 4, 'n': 4\}, not this run's "
          r"permutation \{'max_exponent': 4, 'n': 5\}", safety__kl_budget__reference=safe_run,
          task_options__n=5)
  refused(r"another model \(parameter \[.*\] is float32\[32, .*\] there, float32\[64, .*\] here\)",
          safety__kl_budget__reference=safe_run, model__d_model=64, model__d_ff=128)
  assert not os.path.exists(os.path.join(str(tmp_path / "run"), "config.json"))


@pytest.mark.parametrize("field, value, message", [
    ("safety.kl_budget.epsilon0", 0.0, "config.safety.kl_budget.epsilon0 must be > 0.0, got 0.0"),
    ("safety.kl_budget.phase_steps", 0, "config.safety.kl_budget.phase_steps must be >= 1"),
    ("safety.kl_budget.margin", 1.0, "config.safety.kl_budget.margin must be < 1.0"),
    ("safety.kl_budget.num_prompts", 0, "config.safety.kl_budget.num_prompts must be >= 1"),
    ("safety.kl_budget.reference", "run:-1", "config.safety.kl_budget.reference must be '' or"),
    ("init_from", "run:", "config.init_from must be '' or a run's workdir"),
])
def test_invalid_budget_fields_name_the_field(field, value, message):
  config = tiny.config()
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=message) as error:
    config_lib.validate(config, num_devices=8)
  assert "\n" not in str(error.value)


def test_the_budget_is_refused_in_supervised_mode_and_absent_when_off():
  config = tiny.config("supervised")
  config.safety.kl_budget.reference = "somewhere"
  with pytest.raises(config_lib.ConfigError, match="needs a mode with the debate step"):
    config_lib.validate(config, num_devices=8)
  assert config_lib.checkpoint_spec("a/b:12") == ("a/b", 12)
  assert config_lib.checkpoint_spec("a/b") == ("a/b", None)
  tx = config_lib.make_optimizer(tiny.config())
  assert kl_budget.find_state(tx.init(tiny.MODEL.init(jax.random.key(0)))) is None


# ---- the attack study's command line ----------------------------------------------------------
def test_the_attack_cli_writes_a_table_and_a_plot(safe_run, tmp_path):
  out = str(tmp_path / "attack")
  result = kl_attack_tool.command_line([
      f"--reference={safe_run}:2", "--epsilons=0.01,0.1", "--samples=2", "--steps=3",
      "--num_prompts=8", "--heldout_prompts=8", f"--out={out}"])
  assert [r["epsilon"] for r in result["rows"]] == [0.01, 0.1]
  for row in result["rows"]:
    assert row["optimising"]["kl"] <= row["epsilon"] * (1 + 1e-4)
    assert row["stochastic"]["kl"] <= row["epsilon"] * (1 + 1e-4)
    assert row["optimising"]["rate"] <= row["bound"] * (1 + 1e-3)
  table = open(os.path.join(out, "kl_attack.md")).read()
  assert "python -m amp_debate.tools.kl_attack --reference=" in table and "| 0.1 |" in table
  assert json.load(open(os.path.join(out, "kl_attack.json")))["settings"]["step"] == 2
  assert os.path.getsize(os.path.join(out, "kl_attack.png")) > 0


@pytest.mark.parametrize("args, message", [
    (["--reference={missing}"], "error: --reference=.*nowhere: no run there"),
    (["--reference={safe}:9"], "error: --reference=.*:9: checkpoint: no complete checkpoint"),
    (["--reference={safe}", "--epsilons=0.1,x"], "error: --epsilons must be comma-separated"),
    (["--reference={safe}", "--epsilons=0.1,0.01"], "error: --epsilons must be increasing"),
    (["--reference={safe}", "--samples=0"], "error: --samples must be >= 1"),
    # absl's own refusals, in one line too.
    ([], "error: flag --reference=None: Flag --reference must have a value other than None"),
    (["--reference={safe}", "--samples=x"], "error: flag --samples=x: invalid literal for int"),
    (["--reference={safe}", "--sample=2"], "error: Unknown command line flag 'sample'"),
    (["--reference={safe}", "stray"], "error: unexpected arguments: stray"),
])
def test_the_attack_cli_refuses_bad_inputs_in_one_line(safe_run, tmp_path, args, message):
  args = [a.format(missing=str(tmp_path / "nowhere"), safe=safe_run) for a in args]
  with pytest.raises(SystemExit) as exit_info:
    kl_attack_tool.command_line(args + [f"--out={tmp_path / 'out'}"])
  text = str(exit_info.value.code)
  assert "\n" not in text and re.match(message, text), text


def test_the_attack_cli_runs_as_a_program_with_absl_flags(tmp_path):
  """``python -m amp_debate.tools.kl_attack``: absl's app.run, a refusal in one line, exit code 1."""
  result = subprocess.run([sys.executable, "-m", "amp_debate.tools.kl_attack",
                           f"--reference={tmp_path / 'nowhere'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f"error: --reference={tmp_path / 'nowhere'}: no run there "
      f"({tmp_path / 'nowhere' / 'checkpoints'} does not exist)"], result.stderr
