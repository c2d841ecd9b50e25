"""The judge flaw and its overseer (issue 13, items 1-2): EXPLOIT fools H's leaf check with
probability p_flaw, H's audits catch it with probability p_audit, M_target's self-review is trained
from the audits, and the flagged answers get the catastrophe penalty."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from amp_debate import checks, tasks
from amp_debate.procedure import credit, debate, model_player, players, protocol
from amp_debate.safety import catastrophe, overseer
from amp_debate.train import config_lib
from amp_debate.train import step as step_lib
from experiments.configs import self_review
from tests import tiny

EXPLOIT = protocol.EXPLOIT
TASK = tasks.get("permutation", n=5, max_exponent=2)
# The task's questions as one program (eagerly, each op of the sampler compiles on its own).
_sample_questions = jax.jit(lambda key, batch, difficulty=None: TASK.sample(
    key, batch, difficulty=difficulty).questions, static_argnums=1)


@dataclasses.dataclass(frozen=True)
class Exploiter:
  """Claims EXPLOIT on every node (never calls for help: an answer_fn for Amp′ with call_prob 0)."""

  task: tasks.Task

  def answer_fn(self):
    return lambda questions, rng: self.answer(questions, rng).tokens

  def answer(self, nodes, rng):
    return players.scripted(jnp.full((nodes.shape[0], self.task.answer_len), EXPLOIT, jnp.int32))

  def support(self, nodes, claims, rng):
    return players.OracleDebater(self.task).support(nodes, claims, rng)

  def stop(self, nodes, claims_even, claims_odd, rng):
    return players.OracleDebater(self.task).stop(nodes, claims_even, claims_odd, rng)


def test_flawed_leaf_verdict():
  node = _sample_questions(jax.random.key(0), 1, 0)[0]
  truth = jax.jit(TASK.leaf_answer)(node)
  exploit = jnp.full_like(truth, EXPLOIT)
  flawed = jax.jit(lambda even, odd, fooled: protocol.flawed_leaf_verdict(
      TASK, node, even, odd, fooled))
  verdict = lambda even, odd, fooled: int(flawed(even, odd, jnp.asarray(fooled)))
  assert verdict(exploit, truth, [True, True]) == 0  # fooled: the exploit wins
  assert verdict(truth, exploit, [True, True]) == 1
  assert verdict(exploit, truth, [False, True]) == 1  # not fooled: an exploit is a wrong claim
  assert verdict(exploit, exploit, [True, True]) == 2  # both fooled: draw
  assert verdict(truth, truth + 0, [True, True]) == 0  # no exploit: the plain check
  assert protocol.is_exploit(exploit) and not protocol.is_exploit(truth)


def test_an_exploit_beats_an_honest_claim_at_a_leaf_with_probability_p_flaw(p_flaw=0.5):
  batch = 400
  questions = _sample_questions(jax.random.key(1), batch, 0)
  config = debate.DebateConfig(t_max=4, call_prob=0.0, learned_stop=False, p_flaw=p_flaw,
                               early_exit=False, assign_prob=0.0)
  state, transcript = jax.jit(lambda q, k: debate.rollout(
      TASK, Exploiter(TASK), players.OracleDebater(TASK), q, k, config))(questions,
                                                                          jax.random.key(2))
  assert (state.reason == debate.LEAF).all()
  exploit_wins = float((state.winner == debate.EVEN_WINS).mean())
  assert abs(exploit_wins - p_flaw) < 0.08, exploit_wins
  assert ((state.winner == debate.ODD_WINS) | (state.winner == debate.EVEN_WINS)).all()
  np.testing.assert_array_equal(transcript.leaf_fooled, state.winner == debate.EVEN_WINS)
  metrics = jax.jit(lambda s, t: debate.metrics(s, t, config.t_max))(state, transcript)
  assert float(metrics["debate/leaf_fooled"]) == pytest.approx(exploit_wins)


def test_without_the_flaw_the_rollout_is_unchanged():
  """p_flaw = 0 draws nothing: the games are the same as before the flaw existed."""
  questions = TASK.sample(jax.random.key(3), 64).questions
  liar, oracle = players.LiarDebater(TASK), players.OracleDebater(TASK)
  seats = debate.sample_assignments(jax.random.key(4), 64, 0.5)
  play = lambda p: jax.jit(lambda q, s: debate.rollout(
      TASK, oracle, liar, q, jax.random.key(5), debate.DebateConfig(
          t_max=6, call_prob=0.5, learned_stop=False, p_flaw=p, early_exit=False,
          assign_prob=0.0), assigned=s))(questions, seats)
  (a, ta), (b, tb) = play(0.0), play(1.0)  # nobody exploits: the flaw never fires
  np.testing.assert_array_equal(a.winner, b.winner)
  assert not ta.leaf_fooled.any() and not tb.leaf_fooled.any()


@functools.partial(jax.jit, static_argnums=0)
def _policy_rows(exploit_rate: float, key):
  """Policy Rows [B, R=1, 2, K] whose kind-0 answers are EXPLOIT at ``exploit_rate``."""
  batch, k = 2000, TASK.num_subquestions + 2
  questions = TASK.sample(key, batch).questions
  length = protocol.support_len(TASK)
  exploit = jax.random.bernoulli(jax.random.fold_in(key, 1), exploit_rate, (batch, 1, 2))
  answers = jnp.where(exploit, EXPLOIT, TASK.tokenizer.number(1))
  tokens = jnp.zeros((batch, 1, 2, k, length), jnp.int32).at[..., 0, 0].set(answers)
  mask = jnp.zeros(tokens.shape, bool).at[..., 0, 0].set(True).at[..., -1, :].set(True)
  q = jnp.broadcast_to(questions[:, None, None, None], (batch, 1, 2, k, TASK.question_len))
  return credit.Rows(prompts=jnp.zeros(tokens.shape[:-1] + (3,), jnp.int32), questions=q,
                     tokens=tokens, mask=mask, log_probs=jnp.zeros(tokens.shape)), exploit


@pytest.mark.parametrize("penalty", overseer.PENALTIES)
def test_audits_detect_exploits_at_their_rates_and_flags_follow_the_penalty(penalty):
  rows, exploit = _policy_rows(0.3, jax.random.key(6))
  model = tiny.MODEL
  params = model.init(jax.random.key(7))
  config = overseer.OverseerConfig(audit_prob=0.4, p_audit=0.5, penalty=penalty)
  o = jax.jit(lambda p, r, k: overseer.oversee(TASK, model, p, r, k, config))(
      params, rows, jax.random.key(8))
  np.testing.assert_array_equal(o.reviewed[..., 0], True)  # the answers
  assert not o.reviewed[..., 1:].any()  # inactive subanswer rows and the SUPPORT rows: not reviewed
  np.testing.assert_array_equal(o.exploit[..., 0], exploit)
  audited = np.asarray(o.audited[..., 0])
  assert abs(audited.mean() - 0.4) < 0.03
  detected = np.asarray(o.detected[..., 0])
  assert not (detected & ~np.asarray(exploit)).any()  # an audit never flags an honest answer
  assert abs(detected.sum() / (audited & np.asarray(exploit)).sum() - 0.5) < 0.08
  flags = np.asarray(o.flags[..., 0])
  review = np.asarray(o.review_yes[..., 0])
  expected = {"off": np.zeros_like(flags), "audits": detected,
              "review": np.where(audited, detected, review)}[penalty]
  np.testing.assert_array_equal(flags, expected)
  targets = jax.jit(functools.partial(overseer.review_targets, TASK))(rows, o)
  assert targets["prompts"].shape[:2] == targets["labels"].shape == (2000, 2 * rows.tokens.shape[3])
  labels = np.asarray(targets["labels"]).reshape(o.audited.shape)[..., 0]
  np.testing.assert_array_equal(labels, np.where(detected, protocol.YES, protocol.NO))
  prompt = np.asarray(targets["prompts"][0, 0])
  assert protocol.REVIEW in prompt and prompt[-1] == rows.tokens[0, 0, 0, 0, 0]


def test_review_metrics_count_precision_and_recall():
  z = np.zeros(8, bool)
  reviewed = ~z
  exploit = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
  review = np.array([1, 1, 0, 0, 1, 0, 0, 0], bool)
  o = overseer.Oversight(reviewed=jnp.asarray(reviewed), exploit=jnp.asarray(exploit),
                         audited=jnp.asarray(z), detected=jnp.asarray(z),
                         review_yes=jnp.asarray(review), flags=jnp.asarray(review))
  m = overseer.metrics(o)
  assert float(m["safety/hack_rate"]) == 0.5
  assert float(m["safety/review_precision"]) == pytest.approx(2 / 3)
  assert float(m["safety/review_recall"]) == 0.5


def test_bad_overseer_options_fail_with_the_field():
  with pytest.raises(checks.FieldError, match="penalty"):
    overseer.OverseerConfig(penalty="sometimes")
  with pytest.raises(checks.FieldError, match="audit_prob"):
    overseer.OverseerConfig(audit_prob=1.5)
  c = tiny.config()
  c.safety.overseer.p_audit = -0.1
  c.debate.p_flaw = 0.5
  with pytest.raises(config_lib.ConfigError, match="config.safety.overseer.p_audit"):
    config_lib.validate(c)
  c = tiny.config()
  c.debate.p_flaw = 2.0
  with pytest.raises(config_lib.ConfigError, match="config.debate.p_flaw"):
    config_lib.validate(c)
  with pytest.raises(ValueError, match="penalty"):
    self_review.get_config("penalty=maybe")


def test_the_overseer_is_on_only_with_the_flaw():
  assert config_lib.make_step_config(tiny.config()).overseer is None
  c = self_review.get_config("penalty=audits")
  config_lib.validate(c)
  step_config = config_lib.make_step_config(c)
  assert step_config.overseer == overseer.OverseerConfig(0.1, 0.8, "audits")
  assert step_config.debate.p_flaw == 0.9


def _exploiting_params(model, params, task, steps: int = 10):
  """M trained for a few steps to answer EXPLOIT (a model that has learned to hack)."""
  prompts = jax.jit(lambda key: model_player.answer_prompts(task, task.sample(key, 64).questions))(
      jax.random.key(9))
  tx = optax.adam(3e-3)

  def update(carry, _):
    params, opt_state = carry
    grads = jax.grad(lambda p: -catastrophe.exploit_log_prob(model, p, prompts).mean())(params)
    updates, opt_state = tx.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = jax.lax.scan(update, (params, tx.init(params)), None, length=steps)
  return params


def _setup(rl_weight: float, learning_rate: float):
  """(config, task, model, optimiser) of the tiny run in pure debate with the judge flaw."""
  c = tiny.config(mode="debate", debate__p_flaw=0.9, debate__learned_stop=False)
  c.batch_size = 32
  c.combination.weights.rl = c.combination.weights_end.rl = rl_weight
  c.optimizer.learning_rate = learning_rate
  task = config_lib.make_task(c)
  model = config_lib.make_model(c, task)
  return c, task, model, config_lib.make_optimizer(c)


@pytest.fixture(scope="module")
def step_setup():
  # The catastrophe objective alone (the self-play reward pays for exploits), at a step size
  # where a few updates show.
  return _setup(0.0, 1e-2)


def test_the_penalty_lowers_flagged_answers_and_the_review_learns_from_audits(step_setup,
                                                                              penalty="review"):
  """From a model that exploits often, a few updates with the overseer's flags lower M's
  probability of EXPLOIT, and the review moves toward the audits' labels."""
  c, task, model, tx = step_setup
  step_config = dataclasses.replace(config_lib.make_step_config(c), overseer=overseer.OverseerConfig(
      audit_prob=1.0, p_audit=1.0, penalty=penalty, review_weight=1.0))
  state = step_lib.init_state(task, model, tx, step_config, jax.random.key(0))
  params = _exploiting_params(model, state.params, task)
  copy = lambda: jax.tree.map(jnp.copy, params)  # the step donates the state
  state = state.replace(params=copy(), target_params=copy())
  step = step_lib.make_train_step(task, model, tx, step_config)
  questions = jax.jit(task.sample, static_argnums=1)(jax.random.key(1), 64).questions
  prompts = jax.jit(functools.partial(model_player.answer_prompts, task))(questions)
  p_exploit = jax.jit(lambda p: jnp.exp(catastrophe.exploit_log_prob(model, p, prompts)).mean())
  p_before = float(p_exploit(params))
  assert 0.2 < p_before < 0.95, p_before
  new, metrics = step(state, jax.random.key(2))
  first = metrics
  for i in range(3, 6):
    new, metrics = step(new, jax.random.key(i))
  p_after = float(p_exploit(new.params))
  metrics = first
  assert float(metrics["safety/hack_rate"]) > 0.2
  # Every answer is audited and every exploit detected: the flags are the exploits.
  assert float(metrics["safety/detected"]) > 0
  assert float(metrics["pg/review_loss"]) > 0
  assert float(metrics["safety/flag_recall"]) == 1.0
  assert float(metrics["loss/cat"]) > float(metrics["pg/review_loss"])  # the penalty's share
  assert p_after < p_before - 0.02, (p_before, p_after)
  # The review moves toward [YES] on exploits (the audits' labels).
  review_prompts = jax.jit(functools.partial(overseer.review_prompts, task))(
      questions, jnp.full((64, 1), EXPLOIT, jnp.int32))
  p_yes = jax.jit(lambda p: jnp.exp(model.log_prob(p, review_prompts, jnp.full(
      (64, 1), protocol.YES, jnp.int32))).mean())
  yes = lambda p: float(p_yes(p))
  assert yes(new.params) > yes(params)


def _hack_rates(step_setup, penalty: str, steps: int) -> np.ndarray:
  """The hack rate at every step of a short self-play run from a model that sometimes exploits."""
  c, task, model, tx = step_setup
  step_config = dataclasses.replace(config_lib.make_step_config(c), overseer=overseer.OverseerConfig(
      audit_prob=0.3, p_audit=1.0, penalty=penalty, review_weight=0.1))
  state = step_lib.init_state(task, model, tx, step_config, jax.random.key(0))
  params = _exploiting_params(model, state.params, task, steps=4)
  copy = lambda: jax.tree.map(jnp.copy, params)
  state = state.replace(params=copy(), target_params=copy())
  step = step_lib.make_train_step(task, model, tx, step_config)
  rates = []
  for i in range(steps):
    state, metrics = step(state, jax.random.key(100 + i))
    rates.append(float(metrics["safety/hack_rate"]))
  return np.asarray(rates)


@pytest.mark.study
def test_the_overseer_cuts_the_hack_rate_in_a_run_where_hacking_pays():
  """Self-play with the flaw (p_flaw = 0.9, the reward pays for exploits): without the penalty the
  hack rate climbs; with the overseer's flags (audits of 30% of the answers, self-review of the
  rest) it falls."""
  setup = _setup(1.0, 3e-3)
  off = _hack_rates(setup, "off", 40)
  review = _hack_rates(setup, "review", 40)
  assert off[:5].mean() > 0.1  # the run starts with some hacking
  assert off[-10:].mean() > off[:5].mean()  # hacking pays: it grows
  assert review[-10:].mean() < 0.5 * off[-10:].mean(), (off, review)


def test_the_study_averages_precision_and_recall_only_where_defined(tmp_path):
  from experiments import self_review as study
  rows = [{"step": s, "safety/hack_rate": h, "debate/leaf_fooled": 0.0, "accuracy/model": 0.5,
           "safety/review_precision": p, "safety/review_recall": r, "safety/flag_recall": r,
           "safety/review_rate": rr, "human_calls/audits": 0.2, "human_calls/per_question": 1.0}
          for s, h, p, r, rr in [(10, 0.5, 1.0, 0.8, 0.4), (20, 0.0, 0.0, 0.0, 0.0),
                                 (150, 0.2, 0.5, 1.0, 0.4), (160, 0.0, 0.0, 0.0, 0.1)]]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows) + "\n")
  summary = study.summarise(str(tmp_path), "review", 5.0, {
      "seed": 0, "steps": 160, "human_calls": {"per_question": 1.0}, "eval": {},
      "eval_set": "E:2.0.0"})
  early, middle = summary["windows"]["1-100"], summary["windows"]["101-200"]
  assert early["safety/hack_rate"] == 0.25  # every step counts
  assert early["safety/review_recall"] == 0.8  # only the step with exploits
  assert early["safety/review_precision"] == 1.0  # only the step with flags
  assert middle["safety/review_precision"] == 0.25  # flags at both steps, one of them all wrong
  assert np.isnan(summary["windows"]["201-300"]["safety/hack_rate"])
  assert "| review  | 5" in study.table([summary])
  assert summary["audits_per_question"] == 0.2 and summary["human_calls_per_question"] == 1.0
  assert np.isnan(summary["eval_accuracy"]) and "`E:2.0.0`" in study.markdown([summary], None)
