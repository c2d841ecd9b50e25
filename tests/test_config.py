"""Experiment configs: every mode validates; bad fields are named before anything compiles."""

import jax
import optax
import pytest

from amp_debate import tasks
from amp_debate.procedure import combine
from amp_debate.train import config_lib
from experiments.configs import default


@pytest.mark.parametrize("mode", default.MODES)
@pytest.mark.parametrize("runlocal", [True, False])
def test_every_mode_validates_and_builds(mode, runlocal):
  config = default.get_config(f"task=permutation,mode={mode}" + (",runlocal" if runlocal else ""))
  config_lib.validate(config, num_devices=8)
  task = config_lib.make_task(config)
  model = config_lib.make_model(config, task)
  step_config = config_lib.make_step_config(config)
  assert model.config.vocab_size == task.vocab_size and model.config.pad_id == tasks.PAD
  assert step_config.batch_size == config.batch_size
  if runlocal:
    assert task.options() == {"n": 5, "max_exponent": 2}
    assert (model.config.num_layers, model.config.d_model) == (2, 128)
  if mode == "amplification":
    assert step_config.debate.force_stop_after == 1 and step_config.debate.t_max == 1
  tx = config_lib.make_optimizer(config)
  params = {"w": jax.numpy.zeros(3)}  # the combination's weights do not depend on the params
  weights = combine.weights(tx.init(params))
  rl = 0.1 if runlocal else 1.0
  expected = {"hybrid": (rl, 1), "amplification": (0, 1), "debate": (rl, 0), "supervised": (rl, 1)}
  assert (float(weights["rl"]), float(weights["sup"])) == pytest.approx(expected[mode])


@pytest.mark.parametrize("field, value, message", [
    ("debate.t_max", 0, "config.debate.t_max must be >= 1"),
    ("debate.call_prob", 1.5, "config.debate.call_prob must be <= 1.0"),
    ("combination.weights.sup", -1.0, "config.combination.weights.sup must be >= 0.0"),
    ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate must be > 0.0"),
    ("mode", "imitation", "config.mode must be one of"),
    ("model.mask", "sideways", "config.model.mask must be one of"),
    ("curriculum.kind", "random", "config.curriculum.kind must be one of"),
    ("eval.every", -1, "config.eval.every must be >= 0"),
    ("batch_size", 12, "config.batch_size=12 is not divisible by the 8 data-parallel shards"),
    ("mesh.fsdp", 3, "config.mesh: data=-1 x fsdp=3 does not match the 8 devices"),
    ("model.num_heads", 3, "num_heads"),
])
def test_invalid_values_name_the_field(field, value, message):
  config = default.get_config("task=permutation,runlocal")
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.validate(config, num_devices=8)


def test_unknown_and_missing_fields():
  config = default.get_config("task=permutation,runlocal")
  config.unlock()
  config.debate.tmax = 3
  with pytest.raises(config_lib.ConfigError, match="config.debate.tmax: unknown field"):
    config_lib.validate(config, num_devices=8)
  config = default.get_config("task=permutation,runlocal")
  del config.eval["every"]
  with pytest.raises(config_lib.ConfigError, match="config.eval.every: missing field"):
    config_lib.validate(config, num_devices=8)


def test_bad_task_option_is_a_config_error():
  config = default.get_config("task=permutation,runlocal")
  config.task_options.n = 1
  with pytest.raises(config_lib.ConfigError, match="config.task_options: .*n=1"):
    config_lib.validate(config, num_devices=8)


def test_force_stop_beyond_t_max_is_refused():
  config = default.get_config("task=permutation,runlocal")
  config.debate.force_stop_after = 7
  with pytest.raises(config_lib.ConfigError, match="force_stop_after=7 exceeds"):
    config_lib.validate(config, num_devices=8)


def test_annealed_weights_follow_a_schedule():
  config = default.get_config("task=permutation,runlocal")
  config.combination.weights.rl = 1.0
  config.combination.weights_end.rl = 0.0
  config.combination.anneal_steps = 10
  weight = config_lib._weight(config, "rl")
  assert float(weight(0)) == 1.0 and float(weight(5)) == pytest.approx(0.5)
  assert float(weight(10)) == 0.0
  assert isinstance(config_lib._weight(config, "sup"), float)


def test_config_arg_errors():
  with pytest.raises(ValueError, match="unknown key 'tsk'"):
    default.get_config("tsk=permutation")
  with pytest.raises(ValueError, match="mode='hybird'"):
    default.get_config("mode=hybird")
  with pytest.raises(ValueError, match="size='huge'"):
    default.get_config("size=huge")


def test_target_and_confidence_sentinels():
  config = default.get_config("task=permutation,runlocal")
  step_config = config_lib.make_step_config(config)
  assert step_config.debate.confidence_threshold is None
  assert step_config.target_period is None and step_config.target_ema == 0.9
  config.step.target_period = 50
  config.debate.confidence_threshold = 0.7
  step_config = config_lib.make_step_config(config)
  assert step_config.target_period == 50 and step_config.target_ema is None
  assert step_config.debate.confidence_threshold == 0.7
  assert isinstance(config_lib.make_optimizer(config), optax.GradientTransformation)
