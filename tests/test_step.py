"""The jitted train step: one update from debates, amplified targets and the three losses."""

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny
from amp_debate.procedure import combine, curriculum, debate
from amp_debate.train import config_lib
from amp_debate.train import step as step_lib

TASK, MODEL = tiny.TASK, tiny.MODEL
OBJECTIVES = ("rl", "sup", "cat")


def _starts_with_a_number(question, argument):
  """A catastrophe predicate that fires on arguments starting with a number token (every claim
  that H recombined, so at least one per debate)."""
  return TASK.tokenizer.is_number(argument[0])


TRACES = collections.Counter()  # _program's arguments -> times its step was traced (compiled)


@functools.cache
def _program(kind, force_stop_after=None, catastrophe=None, pack_width=None,
             epochs_minibatches=None, advantage="baseline", pack_groups=None):
  """(tx, config, jitted train step) of one program: the combination ``kind`` ("weighted",
  "constrained" or "shaped") with SGD; the combination's hyperparameters (λ weights, β, limit)
  are data in the state, so every setting of them shares this one compiled step. No assigned
  claims: the shaped path takes its advantage baseline over answer rows, the others over
  arguments, which coincide only without them (test_zero_supervised_weight_is_pure_debate). The
  baseline (not normalised) advantage keeps the update linear in the shaped β (with normalised
  advantages and all-zero rewards every β > 0 gives the same update)."""
  combination = {"weighted": lambda: combine.make("weighted", weights=dict.fromkeys(OBJECTIVES, 1.0)),
                 "constrained": lambda: combine.make("constrained", limit=0.5, multiplier_lr=0.5),
                 "shaped": lambda: combine.make("shaped")}[kind]()
  tx = combine.chain(combination, clip_norm=1.0, optimizer=optax.sgd(0.1))
  extra = {} if catastrophe is None else dict(catastrophe=catastrophe)
  if pack_width is not None:
    extra["pack_width"] = pack_width
  if pack_groups is not None:
    extra["pack_groups"] = pack_groups
  if epochs_minibatches is not None:
    extra["update_epochs"], extra["num_minibatches"] = epochs_minibatches
  config = tiny.step_config(dict(force_stop_after=force_stop_after, assign_prob=0.0),
                            advantage=advantage, **extra)
  pure = step_lib.build_train_step(TASK, MODEL, tx, config, combination=kind)

  def counted(state, rng):
    TRACES[kind, force_stop_after, catastrophe, pack_width, epochs_minibatches, advantage,
           pack_groups] += 1
    return pure(state, rng)

  return tx, config, jax.jit(counted, donate_argnums=0)


@functools.cache
def _steps(kind, beta=None, weights=None, force_stop_after=None, catastrophe=None, steps=2,
           pack_width=None, epochs_minibatches=None, first_key=1, advantage="baseline",
           pack_groups=None):
  """(final state, per-step metrics) of ``steps`` steps of ``_program(kind, ...)`` from a fixed
  init, with the shaped ``beta`` or the weighted ``weights`` ((objective, λ) pairs) set as data
  in the initial state (None: the combination's own)."""
  tx, config, train_step = _program(kind, force_stop_after, catastrophe, pack_width,
                                    epochs_minibatches, advantage, pack_groups)
  hparams = {}
  if beta is not None:
    hparams["beta"] = beta
  if weights is not None:
    hparams["weights"] = dict(weights)
  state = step_lib.init_state(TASK, MODEL, tx, config, jax.random.key(0), hparams=hparams or None)
  history = []
  for i in range(steps):
    state, metrics = train_step(state, jax.random.key(i + first_key))
    history.append(jax.device_get(metrics))
  return jax.device_get(state), history


def _run(weights, force_stop_after=None, catastrophe=None):
  """``_steps`` of the weighted combination with ``weights``, or of the shaped one with β = 0
  (``weights="shaped"``: g_rl + g_cat, the supervised loss entering only through the reward)."""
  if weights == "shaped":
    return _steps("shaped", beta=0.0, force_stop_after=force_stop_after, catastrophe=catastrophe)
  return _steps("weighted", weights=weights, force_stop_after=force_stop_after,
                catastrophe=catastrophe)


ALL = (("rl", 1.0), ("sup", 1.0), ("cat", 1.0))


def _same_params(a, b):
  """Equal up to float32 rounding: the two programs compile to differently fused (but
  mathematically identical) sums, which moves results by about one ulp (seen: 3e-8)."""
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a, b)


def test_step_updates_params_and_reports_finite_metrics():
  state, history = _run(ALL)
  init = jax.device_get(MODEL.init(jax.random.key(0)))
  assert int(state.step) == 2
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), state.params, init))
  assert max(moved) > 0
  for metrics in history:
    for name in ("loss/rl", "loss/sup", "loss/cat", "accuracy/model", "win/even"):
      assert np.isfinite(metrics[name]), name
    assert metrics["loss/sup"] > 0 and metrics["loss/cat"] == 0.0  # the never-firing predicate
    assert int(metrics["debate/length_hist"].sum()) == 8
    assert 0 <= float(metrics["accuracy/h_alone"]) <= 1
    # Some sampled answers were to evaluation-part questions and got no policy gradient.
    assert 0 < float(metrics["policy/eval_part_dropped"]) < 1
  # The target network moved towards M (Polyak averaging) but is not M.
  gap = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), state.params,
                                     state.target_params))
  assert max(gap) > 0


def test_force_stop_after_one_is_pure_imitative_amplification():
  state, history = _run(ALL, force_stop_after=1)
  for metrics in history:
    assert float(metrics["debate/mean_length"]) == 1.0
    assert float(metrics["grad_norm/rl"]) == 0.0  # no contest: zero reward, zero RL gradient
    assert "pg/clip_fraction" not in metrics  # ... so the step skips the policy pass
  assert all("pg/clip_fraction" in m for m in _run(ALL)[1])
  # With a catastrophe predicate the pass runs (it scores the sampled tokens) and the policy
  # gradient is still exactly zero.
  _, firing = _run(ALL, force_stop_after=1, catastrophe=_starts_with_a_number)
  assert all("pg/clip_fraction" in m and float(m["loss/rl"]) == 0.0 for m in firing)
  pure_amplification, _ = _run((("rl", 0.0), ("sup", 1.0), ("cat", 0.0)), force_stop_after=1)
  _same_params(state.params, pure_amplification.params)


def test_zero_supervised_weight_is_pure_debate():
  """λ_sup = 0 gives the update of the shaped path at β = 0, which never reads the sup gradient.
  Raw rewards (advantage "none"): the shaped path baselines over rows and the weighted one over
  arguments, which differ once evaluation-part rows are dropped from some arguments."""
  state, history = _steps("weighted", weights=(("rl", 1.0), ("sup", 0.0), ("cat", 1.0)),
                          advantage="none")
  without_sup, _ = _steps("shaped", beta=0.0, advantage="none")
  _same_params(state.params, without_sup.params)
  assert all(float(m["weight/sup"]) == 0.0 for m in history)


def test_a_firing_catastrophe_predicate_is_penalised():
  _, history = _run(ALL, catastrophe=_starts_with_a_number)
  assert all(float(m["loss/cat"]) > 0 for m in history)
  assert all(float(m["grad_norm/cat"]) > 0 for m in history)


def test_packed_rows_give_the_same_update_as_every_slot_in_one_pass():
  """pack_width (default 1) scores each game's real rows in chunks; pack_width=0 scores every
  row slot at once. Same losses, gradients and metrics up to float rounding, with all three
  objectives live (a firing catastrophe predicate)."""
  packed, packed_history = _run(ALL, catastrophe=_starts_with_a_number)
  assert tiny.step_config().pack_width == 1
  whole, whole_history = _steps("weighted", weights=ALL, catastrophe=_starts_with_a_number,
                                pack_width=0)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
               packed.params, whole.params)
  for a, b in zip(packed_history, whole_history):
    assert a.keys() == b.keys()
    for name in a:
      np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
  for k in OBJECTIVES:  # every objective's gradient is live in some step
    assert max(float(m[f"grad_norm/{k}"]) for m in packed_history) > 0, k


def test_updates_reuse_a_rollout_over_epochs_and_minibatches():
  """update_epochs=2 x num_minibatches=2: four optimiser updates per step, each on half the
  games. At the first step M_target is M, so a single update sees importance ratios of exactly 1;
  the later updates of a reused rollout score it with a moved M (ratios != 1, approx KL > 0)."""
  single, single_history = _run(ALL)
  reused, reused_history = _steps("weighted", weights=ALL, epochs_minibatches=(2, 2))
  count = lambda state: int(optax.tree_utils.tree_get(state.opt_state, "count"))
  assert count(single) == 2 and count(reused) == 8 and int(reused.step) == 2
  assert float(single_history[0]["pg/approx_kl"]) == 0.0
  assert float(reused_history[0]["pg/approx_kl"]) > 0.0
  assert float(reused_history[0]["pg/ratio_mean"]) != 1.0
  # More updates on the same targets: the distillation loss falls further within the first step
  # (the logged loss is the mean over the step's updates).
  assert float(reused_history[0]["loss/sup"]) < float(single_history[0]["loss/sup"])
  with pytest.raises(ValueError, match="StepConfig.num_minibatches must divide batch_size=8"):
    tiny.step_config(num_minibatches=3)


@functools.cache
def _vmapped_program():
  """(init, step) jitted for two runs of ``_program("weighted")`` stacked by jax.vmap, their λ_rl
  and λ_sup given as data: float32[2] each. One compile serves both vmap tests."""
  tx, config, _ = _program("weighted")
  pure = step_lib.build_train_step(TASK, MODEL, tx, config)

  def init(rl, sup):
    return step_lib.init_state(TASK, MODEL, tx, config, jax.random.key(0),
                               hparams={"weights": {"rl": rl, "sup": sup, "cat": 1.0}})

  return jax.jit(jax.vmap(init)), jax.jit(jax.vmap(pure, in_axes=(0, None)))


def _vmapped_runs(rls, sups):
  """(final stacked state, last step's metrics) of two steps of the two vmapped runs."""
  init, both = _vmapped_program()
  states = init(jnp.asarray(rls, jnp.float32), jnp.asarray(sups, jnp.float32))
  for i in range(2):
    states, metrics = both(states, jax.random.key(i + 1))
  return jax.device_get(states), jax.device_get(metrics)


def test_vmapped_runs_equal_the_same_runs_stepped_alone():
  """Two runs (λ_sup 1 and 0.5, data in the state) stepped together by jax.vmap of the step
  reach the states and metrics each reaches alone (benchmarks/seeds.py times this)."""
  sups = (1.0, 0.5)
  states, metrics = _vmapped_runs((1.0, 1.0), sups)
  for j, sup in enumerate(sups):
    alone, history = _run((("rl", 1.0), ("sup", sup), ("cat", 1.0)))
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x[j], y, rtol=1e-4, atol=1e-5),
                 states.params, alone.params)
    for name in ("loss/sup", "loss/rl", "accuracy/model", "weight/sup"):
      np.testing.assert_allclose(metrics[name][j], history[-1][name], rtol=1e-4, atol=1e-6)


def _step_config(**options) -> step_lib.StepConfig:
  """A StepConfig built by hand: its required fields (batch 32) and ``options``."""
  required = dict(batch_size=32, debate=debate.DebateConfig(early_exit=False, assign_prob=0.0),
                  curriculum=curriculum.CurriculumConfig())
  return step_lib.StepConfig(**{**required, **options})


def test_bad_step_config_names_the_field():
  with pytest.raises(ValueError, match="StepConfig.batch_size must be >= 1"):
    _step_config(batch_size=0)
  with pytest.raises(ValueError, match="StepConfig.advantage must be one of"):
    _step_config(advantage="gae")
  with pytest.raises(ValueError, match="StepConfig.temperature must be > 0"):
    _step_config(temperature=0.0)
  with pytest.raises(ValueError, match="StepConfig.target_period and target_ema: give exactly one"):
    _step_config(target_period=None, target_ema=None)
  with pytest.raises(ValueError, match="StepConfig.curriculum must be a CurriculumConfig"):
    _step_config(curriculum="off")
  with pytest.raises(ValueError, match="StepConfig.debates_per_question must divide batch_size=32"):
    _step_config(debates_per_question=3)
  with pytest.raises(ValueError, match="StepConfig.debates_per_question must be >= 2 with advantage='rloo'"):
    _step_config(advantage="rloo")
  with pytest.raises(ValueError, match="StepConfig.stop_cost.*needs debate.learned_stop"):
    _step_config(stop_cost=0.1, debate=debate.DebateConfig(learned_stop=False, early_exit=False,
                                                           assign_prob=0.0))
  with pytest.raises(ValueError, match="StepConfig.stop_cost must be >= 0"):
    _step_config(stop_cost=-0.5)
  with pytest.raises(TypeError, match="batch_size"):  # no default: the config gives it
    step_lib.StepConfig(debate=debate.DebateConfig(early_exit=False, assign_prob=0.0),
                        curriculum=curriculum.CurriculumConfig())
  tx = combine.chain(combine.make("shaped"), clip_norm=1.0, optimizer=optax.sgd(0.1))
  with pytest.raises(ValueError, match="StepConfig.advantage.*shaped"):
    step_lib.build_train_step(TASK, MODEL, tx, _step_config(
        batch_size=4, advantage="rloo", debates_per_question=2), combination="shaped")


def test_rloo_plays_each_question_several_times_and_baselines_within_it():
  """advantage='rloo' with G = 2 (batch_size / 2 questions, each debated twice in consecutive
  games; tests/test_losses.py checks the leave-one-out arithmetic): the step runs, and its update
  differs from the batch baseline's on the same games."""
  tx = combine.chain(combine.make("weighted", weights=dict.fromkeys(OBJECTIVES, 1.0)),
                     clip_norm=1.0, optimizer=optax.sgd(0.1))
  results = {}
  for advantage in ("baseline", "rloo"):
    config = tiny.step_config(dict(call_prob=0.0, assign_prob=0.0, distinct_claims=True),
                              advantage=advantage, debates_per_question=2)
    train_step = jax.jit(step_lib.build_train_step(TASK, MODEL, tx, config))
    state = step_lib.init_state(TASK, MODEL, tx, config, jax.random.key(0))
    results[advantage] = jax.device_get(train_step(state, jax.random.key(3)))
  (base_state, base_metrics), (rloo_state, rloo_metrics) = results["baseline"], results["rloo"]
  # Same games (the rollout does not depend on the advantage), a different policy update.
  assert float(base_metrics["win/even"]) == float(rloo_metrics["win/even"])
  assert np.isfinite(float(rloo_metrics["loss/rl"])) and float(rloo_metrics["rl/arguments"]) > 0
  gap = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), base_state.params,
                                     rloo_state.params))
  assert max(gap) > 1e-6


def test_shaped_penalty_reaches_the_update():
  """With β > 0 the argument-dependent penalty changes the policy-gradient update (the shaped
  combination reads no g_sup); tests/test_credit.py shows its direction on a tabular policy. The
  penalty enters the reward before the advantage baseline: the shaped advantages stay centred
  (a negative offset on every penalised row sharpened the policy onto its mode in a full run)."""
  # Step keys whose first batch has rows that agree with Amp′ and rows that do not: where the
  # untrained M disagrees on every row (mismatch 1.0, most keys since the held-out sampler of
  # issue 27), the shaping is the same on every row and the centred advantage removes it.
  plain, (first, _) = _steps("shaped", beta=0.0, first_key=7)
  shaped, (shaped_first, _) = _steps("shaped", beta=2.0, first_key=7)
  assert 0.1 < float(first["shaped/mismatch"]) < 1.0
  assert abs(float(shaped_first["pg/advantage_mean"])) < 1e-5
  gap = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), plain.params,
                                     shaped.params))
  assert max(gap) > 1e-4


def test_constrained_runs_through_the_real_train_step():
  init = jax.device_get(MODEL.init(jax.random.key(0)))
  state, (first, second) = _steps("constrained")
  assert float(first["loss/sup"]) > 0.5  # violated: the multiplier rises from 0
  assert float(first["weight/sup"]) == 0.0 and float(second["weight/sup"]) > 0.0
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), state.params, init))
  assert max(moved) > 0 and all(np.isfinite(m) for m in moved)


def test_human_calls_are_split_by_where_they_were_spent():
  _, history = _run(ALL)
  for metrics in history:
    parts = [float(metrics[f"human_calls/{k}"]) for k in debate.CALL_KINDS + ("targets",)]
    np.testing.assert_allclose(sum(parts), float(metrics["human_calls/per_question"]), rtol=1e-6)
    assert float(metrics["human_calls/claims"]) >= 1.0  # call_prob 1: every root claim


def test_a_beta_sweep_reuses_one_compiled_step():
  """Three β values of the shaped reward run through one compiled step (β is data in the
  combination's state) and give three different updates."""
  # first_key=7: a first batch where shaping varies across rows (see the test above).
  runs = [_steps("shaped", beta=beta, first_key=7)[0] for beta in (0.0, 0.5, 2.0)]
  assert TRACES["shaped", None, None, None, None, "baseline", None] == 1
  for a, b in [(runs[0], runs[1]), (runs[1], runs[2])]:
    gap = jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), a.params, b.params))
    assert max(gap) > 1e-5
  assert [float(combine.beta(state.opt_state)) for state in runs] == [0.0, 0.5, 2.0]


def test_a_lambda_sweep_compiles_the_step_once():
  """λ_sup ∈ {1, 0, 0.5}: one tx and one jitted step, traced and compiled once, serve the sweep
  (states initialised with ``hparams``), and the three updates differ. That λ as data gives what
  λ compiled in as a constant gives is shown on the update alone in tests/test_combine.py."""
  results = {}
  for lam in (1.0, 0.0, 0.5):
    state, history = _run((("rl", 1.0), ("sup", lam), ("cat", 1.0)))
    assert [float(m["weight/sup"]) for m in history] == [lam, lam]
    results[lam] = state.params
  assert TRACES["weighted", None, None, None, None, "baseline", None] == 1
  gap = lambda a, b: max(jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), a, b)))
  assert gap(results[1.0], results[0.5]) > 0 and gap(results[0.5], results[0.0]) > 0


def test_a_learning_rate_sweep_compiles_the_step_once():
  """The trainer's optimiser (``config_lib.make_optimizer``: Adam under
  ``optax.inject_hyperparams``) keeps the learning rate as data: three rates through one compiled
  (supervised) step. Adam's first update moves each parameter by about lr·sign(g), so the largest
  move equals the rate."""
  tx = config_lib.make_optimizer(tiny.config(mode="supervised"))
  config = tiny.step_config()
  pure = step_lib.build_supervised_step(TASK, MODEL, tx, config)
  traces = []

  def counted(state, rng):
    traces.append(1)
    return pure(state, rng)

  train_step = jax.jit(counted)
  init = jax.device_get(MODEL.init(jax.random.key(0)))
  for lr in (1e-4, 1e-3, 1e-2):
    state = step_lib.init_state(TASK, MODEL, tx, config, jax.random.key(0),
                                hparams={"learning_rate": lr})
    state, _ = train_step(state, jax.random.key(1))
    moved = max(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                             jax.device_get(state.params), init)))
    np.testing.assert_allclose(moved, lr, rtol=0.02)
  assert len(traces) == 1
  with pytest.raises(ValueError, match="with_hparams.learning_rate must be > 0.0, got -1.0"):
    step_lib.with_hparams(state, learning_rate=-1.0)
  sgd_state = step_lib.init_state(TASK, MODEL, _program("weighted")[0], config, jax.random.key(0))
  with pytest.raises(ValueError, match="needs an optimiser built with optax.inject_hyperparams"):
    step_lib.with_hparams(sgd_state, learning_rate=1e-3)


@functools.cache
def _rl_only_program(assign_prob=0.0, **options):
  """(tx, config, jitted step) with only the RL objective weighted (SGD), H never called in Amp′
  (call_prob 0), ``assign_prob`` and the StepConfig ``options``. The tests that compare an
  option's update with the update without it share the programs without it: 7 programs for 5
  options (the stop cost, the league and the KL anchor at assign_prob 0, the two claim-credit
  options at 0.5)."""
  tx = combine.chain(combine.make("weighted", weights={"rl": 1.0, "sup": 0.0, "cat": 0.0}),
                     clip_norm=1.0, optimizer=optax.sgd(0.1))
  config = tiny.step_config(dict(call_prob=0.0, assign_prob=assign_prob), **options)
  return tx, config, jax.jit(step_lib.build_train_step(TASK, MODEL, tx, config))


def _rl_only_step(key, assign_prob=0.0, **options):
  """(state, metrics) of one step of ``_rl_only_program`` from the init of key(0)."""
  tx, config, train_step = _rl_only_program(assign_prob, **options)
  state = step_lib.init_state(TASK, MODEL, tx, config, jax.random.key(0))
  return jax.device_get(train_step(state, jax.random.key(key)))


def test_rl_credit_for_the_stop_reaches_the_update():
  """``stop_cost``: the learned stop's sampled decisions join the policy rows (one row each, with
  their own baseline); on the same games (the rollout does not depend on it) the update differs
  from the step without it, and the decisions are counted. tests/test_credit.py shows the direction
  (a cost teaches the stop to fire where going on changes no verdict)."""
  plain_state, plain = _rl_only_step(3)
  credited_state, credited = _rl_only_step(3, stop_cost=0.1)
  assert float(plain["win/even"]) == float(credited["win/even"])
  assert "stop/rl_rows" not in plain and float(credited["stop/rl_rows"]) > 0
  assert np.isfinite(float(credited["stop/rl_reward"]))
  gap = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), plain_state.params,
                                     credited_state.params))
  assert max(gap) > 1e-6


def test_the_kl_anchor_keeps_m_nearer_its_start():
  """``kl_anchor``: the state keeps M at step 0 as the reference (unchanged by the steps), the
  step reports KL(M ‖ reference) on the sampled positions, and a strong anchor keeps M nearer its
  start than the same steps without it (same games at the first step, same optimiser; the run
  without it is the options tests' program)."""
  out = {}
  for weight in (0.0, 3.0):
    tx, config, train_step = _rl_only_program(**({"kl_anchor": weight} if weight else {}))
    state = step_lib.init_state(TASK, MODEL, tx, config, jax.random.key(0))
    start = jax.device_get(state.params)
    assert (state.anchor_params is None) == (weight == 0)
    history = []
    for i in range(12):
      state, metrics = train_step(state, jax.random.key(10 + i))
      history.append(jax.device_get(metrics))
    distance = np.sqrt(sum(float(np.sum((np.asarray(a) - np.asarray(b)) ** 2)) for a, b in zip(
        jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(start))))
    out[weight] = (distance, history, jax.device_get(state))
  (free, free_history, _), (anchored, history, state) = out[0.0], out[3.0]
  jax.tree.map(np.testing.assert_array_equal, jax.tree.leaves(state.anchor_params),
               jax.tree.leaves(jax.device_get(MODEL.init(jax.random.key(0)))))
  assert "pg/anchor_kl" not in free_history[-1]
  assert float(history[0]["pg/anchor_kl"]) < 1e-6 < float(history[-1]["pg/anchor_kl"])
  assert anchored < 0.9 * free, (anchored, free)


def test_crediting_assigned_claims_reaches_the_update():
  """``credit_assigned_claims`` (half the games assigned, as in the next test, whose program
  without the option this one shares): the same games, more policy rows, another update."""
  off_state, off = _rl_only_step(7, assign_prob=0.5)
  on_state, on_metrics = _rl_only_step(7, assign_prob=0.5, credit_assigned_claims=True)
  assert float(off["win/draw"]) < 1  # some game decided (all draws: zero rewards everywhere)
  assert float(off["win/even"]) == float(on_metrics["win/even"])
  assert float(on_metrics["rl/arguments"]) > float(off["rl/arguments"])
  gap = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), off_state.params,
                                     on_state.params))
  assert max(gap) > 1e-6


def test_crediting_only_tested_claims_changes_the_update():
  """``claim_credit='tested'``: the same games; where a consistency check decided a game its
  claims get no credit, so the update differs from crediting every claim. (Half the games
  assigned: with every game assigned, key 3 gave the same update both ways.)"""
  a_state, a = _rl_only_step(3, assign_prob=0.5)
  t_state, t = _rl_only_step(3, assign_prob=0.5, claim_credit="tested")
  assert float(a["win/even"]) == float(t["win/even"]) and float(a["stop/inconsistent"]) > 0
  assert float(t["rl/arguments"]) < float(a["rl/arguments"])
  gap = jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), a_state.params,
                                     t_state.params))
  assert max(gap) > 1e-6
  with pytest.raises(ValueError, match="StepConfig.claim_credit must be one of"):
    _step_config(claim_credit="sometimes")


def test_the_league_plays_snapshots_and_credits_only_m():
  """``league_size``: the state holds K snapshots of M (all M at step 0); every ``league_every``
  steps the next slot becomes M; the league's games credit only M's side (about half the
  arguments of the same number of self-play games); M's record there is reported; bad sizes are
  refused with the field named."""
  played = dict(call_prob=0.0, assign_prob=0.0)
  tx, config, train_step = _rl_only_program(league_size=2, league_every=2,
                                            league_games=tiny.BATCH)
  _, plain_config, _ = _rl_only_program()
  state = step_lib.init_state(TASK, MODEL, tx, config, jax.random.key(0))
  assert step_lib.init_state(TASK, MODEL, tx, plain_config, jax.random.key(0)).league_params is None
  for leaf, p in zip(jax.tree.leaves(state.league_params), jax.tree.leaves(state.params)):
    assert leaf.shape == (2,) + p.shape
    np.testing.assert_array_equal(leaf[0], p)
    np.testing.assert_array_equal(leaf[1], p)
  _, plain = _rl_only_step(1)  # the same games without the league: the stop test's program
  snapshots, args = [], []
  for i in range(4):
    state, metrics = train_step(state, jax.random.key(1 + i))
    metrics = jax.device_get(metrics)
    total = sum(float(metrics[f"league/{k}"]) for k in ("m_wins", "draws", "m_losses"))
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)
    args.append(float(metrics["rl/arguments"]))
    snapshots.append(jax.device_get(state.params))
  league = jax.device_get(state.league_params)
  for leaf, after2, after4 in zip(jax.tree.leaves(league), jax.tree.leaves(snapshots[1]),
                                  jax.tree.leaves(snapshots[3])):
    np.testing.assert_array_equal(leaf[0], after2)  # slot 0: M after step 2
    np.testing.assert_array_equal(leaf[1], after4)  # slot 1: M after step 4
  # Only M's side of each league game is credited: about half of self-play's arguments.
  assert 0 < args[0] <= 0.6 * float(plain["rl/arguments"]), (args[0], plain["rl/arguments"])
  with pytest.raises(ValueError, match="StepConfig.league_games must be in"):
    tiny.step_config(played, league_size=2, league_games=3)


def test_a_zero_rl_weight_skips_the_policy_pass_and_vmaps():
  """λ_rl = 0 (data in the state): the policy pass is skipped at run time (loss/rl and the pg/
  metrics are exactly 0; with λ_rl = 1 the importance ratios average near 1), the update is the one λ_rl = 0 gives by
  weighting (the rl term contributes exactly 0 either way), and under vmap, where both branches
  of the skip run, runs with λ_rl 0 and 1 reach what each reaches alone."""
  off, off_history = _run((("rl", 0.0), ("sup", 1.0), ("cat", 1.0)))
  on, on_history = _run(ALL)
  assert all(float(m["loss/rl"]) == 0.0 and float(m["grad_norm/rl"]) == 0.0 for m in off_history)
  assert all(float(m["pg/ratio_mean"]) == 0.0 for m in off_history)
  assert all(float(m["pg/ratio_mean"]) > 0.5 for m in on_history)  # ratios near 1: computed
  assert max(float(m["grad_norm/rl"]) for m in on_history) > 0
  # The supervised objective is untouched by the skip (same rollout, same targets).
  np.testing.assert_allclose(off_history[0]["loss/sup"], on_history[0]["loss/sup"], rtol=1e-6)
  states, _ = _vmapped_runs((0.0, 1.0), (1.0, 1.0))
  for j, alone in enumerate((off, on)):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x[j], y, rtol=1e-4, atol=1e-5),
                 states.params, alone.params)


def test_pooled_packing_matches_any_pool_count():
  """The packed passes pool rows across games (``pack_groups`` pools; the trainer uses the data
  shards): one pool, two pools, one game per pool (8) and every slot in one pass give the same
  update. The one-pool and every-slot programs are test_packed_rows_...'s."""
  runs = [_steps("weighted", weights=ALL, catastrophe=_starts_with_a_number, steps=1, **options)
          for options in ({}, dict(pack_groups=2), dict(pack_groups=8), dict(pack_width=0))]
  assert TRACES["weighted", None, _starts_with_a_number, None, None, "baseline", None] == 1
  (first, [first_metrics]), *rest = runs
  for state, [metrics] in rest:
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
                 first.params, state.params)
    for name in ("loss/rl", "loss/sup", "loss/cat"):
      np.testing.assert_allclose(first_metrics[name], metrics[name], rtol=1e-4, atol=1e-6)
  assert float(first_metrics["loss/cat"]) > 0  # all three objectives live


def test_supervised_accuracy_is_the_greedy_answers_accuracy():
  """The supervised step reads M's accuracy off its loss's teacher-forced pass; it equals the
  accuracy of M's greedy decoding on the same questions (the decode it replaced)."""
  tx = combine.chain(combine.make("weighted", weights={"sup": 1.0}), clip_norm=1.0,
                     optimizer=optax.adam(1e-2))
  config = tiny.step_config()
  train_step = jax.jit(step_lib.build_supervised_step(TASK, MODEL, tx, config))
  state = step_lib.init_state(TASK, MODEL, tx, config, jax.random.key(0))

  @jax.jit
  def greedy_accuracy(params, level, rng):  # the step's own batch, decoded greedily
    batch = step_lib.sample_batch(TASK, jax.random.split(rng)[0], config.batch_size, level)
    greedy = step_lib._greedy_answers(TASK, MODEL, params, batch.questions, rng)
    return (greedy == batch.answers).all(-1).mean()

  seen = []
  for i in range(30):
    rng = jax.random.key(100 + i)
    expected = float(greedy_accuracy(state.params, state.curriculum.level, rng))
    state, metrics = train_step(state, rng)
    assert float(metrics["accuracy/model"]) == expected
    seen.append(expected)
  assert min(seen) < max(seen)  # the comparison covered more than one value
