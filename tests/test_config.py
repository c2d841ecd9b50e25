"""Experiment configs: every mode validates; bad fields are named before anything compiles (by the
dataclass that owns them, or by config_lib); the option parser; resume compatibility."""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax
import pytest

from amp_debate import checks, models, options, tasks
from amp_debate.procedure import combine, curriculum, debate
from amp_debate.safety import adversary, overseer
from amp_debate.train import config_lib
from amp_debate.train import step as step_lib
from experiments.configs import adversary as adversary_config
from experiments.configs import default, self_review


@pytest.mark.parametrize("mode", default.MODES)
@pytest.mark.parametrize("size", ["", "runlocal", "quickstart"])
def test_every_mode_validates_and_builds(mode, size):
  config = default.get_config(f"task=permutation,mode={mode}" + (f",{size}" if size else ""))
  runlocal = bool(size)
  config_lib.validate(config, num_devices=8)
  task = config_lib.make_task(config)
  model = config_lib.make_model(config, task)
  step_config = config_lib.make_step_config(config)
  assert model.config.vocab_size == task.vocab_size and model.config.pad_id == tasks.PAD
  assert step_config.batch_size == config.batch_size
  assert config.runlocal == runlocal
  if size == "quickstart":  # the README main job
    assert task.options() == {"n": 8, "max_exponent": 2}
    assert (model.config.num_layers, model.config.d_model, config.num_steps) == (4, 64, 600)
  if size == "runlocal":  # permutation's recipe: three levels
    assert task.options() == {"n": 8, "max_exponent": 4} and task.max_difficulty == 2
    assert (model.config.num_layers, model.config.d_model) == (4, 64)
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
    ("model.num_heads", 3, "config.model.num_heads must divide d_model=64, got 3"),
    ("model.preset", "huge", "config.model.preset must be one of 'tiny'"),
    ("step.temperature", 0.0, "config.step.temperature must be > 0.0, got 0.0"),
    ("step.clip_eps", -0.1, "config.step.clip_eps must be > 0.0"),
    ("step.advantage", "gae", "config.step.advantage must be one of 'none'"),
    ("step.target_period", -1, "config.step.target_period must be >= 1, got -1"),
    ("step.target_ema", 1.0, "config.step.target_ema must be < 1.0"),
    ("combination.beta", -0.5, "config.combination.beta must be >= 0.0"),
    ("curriculum.ema", 1.0, "config.curriculum.ema must be < 1.0"),
    ("curriculum.min_steps", 0, "config.curriculum.min_steps must be >= 1"),
    ("debate.confidence_threshold", 1.5, "config.debate.confidence_threshold must be <= 1.0"),
    ("step.pack_width", -1, "config.step.pack_width must be >= 0, got -1"),
    ("step.update_epochs", 0, "config.step.update_epochs must be >= 1, got 0"),
    ("step.num_minibatches", 3, "config.step.num_minibatches must divide batch_size=64, got 3"),
    ("step.num_minibatches", 16, "config.step.num_minibatches=16 makes minibatches of 4 games, "
                                 "not divisible by the 8 data-parallel shards"),
])
def test_invalid_values_name_the_field(field, value, message):
  config = default.get_config("task=permutation,quickstart")
  *parents, leaf = field.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value
  pattern = message.replace("(", r"\(").replace(")", r"\)")
  with pytest.raises(config_lib.ConfigError, match=pattern) as error:
    config_lib.validate(config, num_devices=8)
  assert "\n" not in str(error.value)


def test_unknown_and_missing_fields():
  config = default.get_config("task=permutation,quickstart")
  config.unlock()
  config.debate.tmax = 3
  with pytest.raises(config_lib.ConfigError, match="config.debate.tmax: unknown field"):
    config_lib.validate(config, num_devices=8)
  config = default.get_config("task=permutation,quickstart")
  del config.eval["every"]
  with pytest.raises(config_lib.ConfigError, match="config.eval.every: missing field"):
    config_lib.validate(config, num_devices=8)


def test_bad_task_option_is_a_config_error():
  config = default.get_config("task=permutation,quickstart")
  config.task_options.n = 1
  with pytest.raises(config_lib.ConfigError, match=r"config.task_options.n must be in \[2, 64\], got 1"):
    config_lib.validate(config, num_devices=8)


def test_force_stop_beyond_t_max_is_refused():
  config = default.get_config("task=permutation,quickstart")
  config.debate.force_stop_after = 7
  with pytest.raises(config_lib.ConfigError, match="force_stop_after=7 exceeds"):
    config_lib.validate(config, num_devices=8)


def test_the_league_is_for_pure_debate_only():
  config = default.get_config("task=permutation,mode=debate,quickstart")
  config.step.league_size, config.step.league_games = 2, 16
  config_lib.validate(config, num_devices=8)
  assert config_lib.make_step_config(config).league_size == 2
  hybrid = default.get_config("task=permutation,quickstart")
  hybrid.step.league_size, hybrid.step.league_games = 2, 16
  with pytest.raises(config_lib.ConfigError, match="league_size: games against the league"):
    config_lib.validate(hybrid, num_devices=8)


def test_annealed_weights_follow_a_schedule():
  config = default.get_config("task=permutation,quickstart")
  config.combination.weights.rl = 1.0
  config.combination.weights_end.rl = 0.0
  config.combination.anneal_steps = 10
  assert config_lib._weight(config, "rl") == combine.Linear(1.0, 0.0, 10)
  tx = combine.weighted({"rl": config_lib._weight(config, "rl")})
  update = jax.jit(tx.update)
  state, applied = tx.init({}), []
  for _ in range(12):
    _, state = update({"rl": {}}, state)
    applied.append(float(combine.weights(state)["rl"]))
  assert applied[0] == 1.0 and applied[5] == pytest.approx(0.5) and applied[10:] == [0.0, 0.0]
  sup = config_lib._weight(config, "sup")  # weights.sup == weights_end.sup: a constant
  assert sup.start == sup.end == config.combination.weights.sup


@pytest.mark.parametrize("task", tasks.names())
def test_every_task_has_a_runlocal_recipe(task):
  """Each task's runlocal options and model recipe (default.RUNLOCAL) build a valid config in
  every mode, with at least 3 levels."""
  recipe = default.RUNLOCAL[task]
  for mode in default.MODES:
    config = default.get_config(f"task={task},mode={mode},runlocal")
    config_lib.validate(config, num_devices=8)
    assert dict(config.task_options) == {**tasks.get(task).options(), **recipe.task_options}
    assert config.model.num_layers == recipe.num_layers and config.num_steps == recipe.num_steps
    assert config.batch_size == recipe.batch_size
    assert config.model.d_model == recipe.d_model and config.model.d_ff == 4 * recipe.d_model
    assert config.optimizer.decay_steps == (recipe.num_steps if recipe.decay else 0)
  levels = tasks.get(task, **recipe.task_options).max_difficulty + 1
  assert levels >= 3


def test_learning_rate_schedule_warms_up_then_decays():
  config = default.get_config("task=permutation,quickstart")
  assert config_lib.lr_multiplier(config.optimizer) is None  # constant by default
  config.optimizer.warmup_steps = 4
  config.optimizer.decay_steps = 20
  config.optimizer.final_fraction = 0.1
  schedule = config_lib.lr_multiplier(config.optimizer)
  values = [float(schedule(t)) for t in (0, 2, 4, 10, 20, 30)]
  assert values[0] == 0.0 and values[1] == pytest.approx(0.5 * (0.1 + 0.9 * 0.5 * (1 + jnp.cos(jnp.pi * 0.1))))
  assert values[3] == pytest.approx(0.55) and values[4] == values[5] == pytest.approx(0.1)
  # The update Adam applies follows it: with a constant gradient Adam's step is lr * multiplier.
  config.optimizer.warmup_steps = 0
  tx = config_lib.make_optimizer(config)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  sizes = []
  for _ in range(21):
    grads = {"rl": {"w": jnp.ones(())}, "sup": {"w": jnp.ones(())}, "cat": {"w": jnp.ones(())}}
    updates, state = tx.update(grads, state, params)
    sizes.append(float(-updates["w"]))
  lr = config.optimizer.learning_rate
  assert sizes[0] == pytest.approx(lr, rel=1e-3)
  assert sizes[10] == pytest.approx(0.55 * lr, rel=1e-3) and sizes[20] == pytest.approx(0.1 * lr, rel=1e-3)


def test_config_arg_errors():
  with pytest.raises(ValueError, match="unknown key 'tsk'"):
    default.get_config("tsk=permutation")
  with pytest.raises(ValueError, match="mode='hybird'"):
    default.get_config("mode=hybird")
  with pytest.raises(ValueError, match="size='huge'"):
    default.get_config("size=huge")
  with pytest.raises(ValueError, match="quickstart is the permutation quick start, not task=wild"):
    default.get_config("task=wildcard,quickstart")


def test_optional_fields_are_placeholders():
  """Optional values are typed ml_collections placeholders: None until set (the dataclasses' None),
  a value once set; the old sentinels (0, -1) are now values the dataclasses refuse."""
  config = default.get_config("task=permutation,quickstart")
  assert config.step.target_period is None and config.debate.confidence_threshold is None
  assert config.debate.force_stop_after is None and config.step.stop_cost is None
  step_config = config_lib.make_step_config(config)
  assert step_config.debate.confidence_threshold is None
  assert step_config.target_period is None and step_config.target_ema == 0.9
  assert step_config.debate.force_stop_after is None and step_config.stop_cost is None
  config.step.target_period = 50
  config.debate.confidence_threshold = 0.7
  step_config = config_lib.make_step_config(config)
  assert step_config.target_period == 50 and step_config.target_ema is None
  assert step_config.debate.confidence_threshold == 0.7
  assert isinstance(config_lib.make_optimizer(config), optax.GradientTransformation)
  with pytest.raises(TypeError):  # typed: a string is refused on assignment
    config.step.target_period = "never"
  config.step.target_period = 0
  with pytest.raises(config_lib.ConfigError, match=r"^config.step.target_period must be >= 1, "
                     r"got 0 \(None: Polyak averaging\)$"):
    config_lib.validate(config, num_devices=8)
  full = default.get_config("task=permutation")  # the full size: the preset's model sizes
  assert full.model.num_layers is None
  assert config_lib.make_model(full, config_lib.make_task(full)).config.num_layers == (
      models.PRESETS["small"]["num_layers"])


def test_saved_configs_with_the_old_sentinels_read_as_none():
  """A checkpoint's config saved before the placeholders (0 / -1 for None) rebuilds its run
  (``from_saved``) and resumes under today's config (``check_compatible``); other values stay."""
  today = default.get_config("task=permutation").to_dict()
  old = copy.deepcopy(today)
  old["debate"].update(confidence_threshold=-1.0, force_stop_after=0)
  old["step"].update(target_period=0, stop_cost=-1.0)
  old["model"].update(num_layers=0, d_model=0, num_heads=0, d_ff=0)
  assert config_lib.upgrade_saved(old) == today
  assert config_lib.check_compatible(old, today) == []
  rebuilt = config_lib.from_saved(old)
  step_config = config_lib.make_step_config(rebuilt)
  assert step_config.target_period is None and step_config.stop_cost is None
  assert step_config.debate.confidence_threshold is None
  assert step_config.debate.force_stop_after is None
  assert config_lib.make_model(rebuilt, config_lib.make_task(rebuilt)).config.num_layers == (
      models.PRESETS["small"]["num_layers"])
  del old["step"]["stop_cost"]  # saved before the field existed: off
  assert config_lib.make_step_config(config_lib.from_saved(old)).stop_cost is None
  kept = {**today, "step": {**today["step"], "target_period": 10, "stop_cost": 0.0}}
  assert config_lib.upgrade_saved(kept) == kept  # values, not sentinels
  with pytest.raises(config_lib.ConfigError, match="step.target_period: 10 → null"):
    config_lib.check_compatible(kept, today)


def _configs():
  """Every config the config files give: default.py in every mode at each size, every task's
  runlocal recipe, and the adversary and self-review configs."""
  for mode in default.MODES:
    for size in ("", ",runlocal", ",quickstart", ",size=large"):
      yield default.get_config(f"task=permutation,mode={mode}{size}")
    for task in tasks.names():
      yield default.get_config(f"task={task},mode={mode},runlocal")
  yield adversary_config.get_config()
  for penalty in overseer.PENALTIES:
    yield self_review.get_config(f"penalty={penalty}")


def _undescribed(schema, configs) -> list[str]:
  """Each config field that has no entry in ``schema`` or more than one (an entry describes a
  field, or ``task_options``, a section, as one value), and each entry no config uses."""
  problems, used = [], set()
  for config in configs:
    for name in config_lib.flatten(config, keep=("task_options",)):
      entries = [k for k in schema if name == k or name.startswith(k + ".")
                 or k.startswith(name + ".")]
      used.update(entries)
      if len(entries) != 1:
        problems.append(f"{name}: {len(entries)} entries {entries}")
  return sorted(set(problems)) + [f"{k}: no such field" for k in schema if k not in used]


def test_every_config_field_is_described_once():
  """SCHEMA has exactly one entry for every field of every config the config files give, so a new
  field cannot be added without saying its kind; and the test sees a missing entry."""
  configs = list(_configs())
  assert _undescribed(config_lib.SCHEMA, configs) == []
  schema = dict(config_lib.SCHEMA)
  del schema["eval.batch_size"]
  assert _undescribed(schema, configs) == ["eval.batch_size: 0 entries []"]
  schema = {**config_lib.SCHEMA, "eval": config_lib.Field(checks.boolean)}  # a second entry
  assert _undescribed(schema, configs)[0].startswith("eval.batch_size: 2 entries")
  assert set(config_lib.FIELDS) | set(config_lib.OWNED) == set(config_lib.SCHEMA)
  assert not set(config_lib.FIELDS) & set(config_lib.OWNED)


def test_the_kinds_derived_from_the_schema():
  """What reaches a traced program, what is data, what a resume may change: as the trainer, the
  vmapped groups and check_compatible have relied on (pinned, so a change is a decision)."""
  assert set(config_lib.HOST_ONLY) == {
      "num_steps", "log_every", "seed", "checkpoint", "eval.every", "eval.data_dir",
      "eval.examples_per_difficulty", "eval.batch_size", "resume_allow_unsafe", "distributed"}
  assert set(config_lib.SAFE_TO_CHANGE) == {"num_steps", "log_every", "eval", "checkpoint",
                                            "resume_allow_unsafe", "mesh", "distributed"}
  assert config_lib.DATA_FIELDS == (
      "optimizer.learning_rate", "combination.weights", "combination.weights_end",
      "combination.anneal_steps", "combination.limit", "combination.multiplier_lr",
      "combination.beta")
  assert config_lib.is_host_only("checkpoint.keep") and config_lib.is_host_only("seed")
  assert not config_lib.is_host_only("eval.debates") and not config_lib.is_host_only("debate.t_max")
  assert not config_lib.is_host_only("optimizer.learning_rate")  # data: an argument, not host
  assert not config_lib.is_host_only("no.such.field")  # unknown: assumed to reach a program
  assert config_lib.is_data_field("combination.weights.rl")
  assert not config_lib.is_data_field("combination.kind")
  assert config_lib.is_safe_to_change("eval.debates") and not config_lib.is_safe_to_change("seed")
  assert config_lib.PICKS_PROGRAM == ("eval.debates",) and config_lib.picks_program("eval.debates")
  for name, field in config_lib.SCHEMA.items():
    assert not (field.kind == config_lib.HOST and field.owner), name  # owned: in the programs
  with pytest.raises(ValueError, match="exactly one of check and owner"):
    config_lib.Field()


def test_dataclass_defaults_agree_with_the_default_config():
  """The config file is where defaults live: a dataclass field a config field sets has a default
  only where it equals what the default config builds (the rest have none)."""
  config = default.get_config()
  task = config_lib.make_task(config)
  step_config = config_lib.make_step_config(config)
  built = {"StepConfig": step_config, "DebateConfig": step_config.debate,
           "CurriculumConfig": step_config.curriculum,
           "OverseerConfig": overseer.OverseerConfig(**config.safety.overseer),
           "AdversaryConfig": adversary.AdversaryConfig(**config.safety.adversary),
           "ModelConfig": config_lib.make_model(config, task).config}
  classes = {name: type(value) for name, value in built.items()}
  checked = 0
  for owned in config_lib.OWNED.values():
    owner, name = owned.split(".")
    if owner not in built:
      continue
    field = {f.name: f for f in dataclasses.fields(classes[owner])}[name]
    if field.default is not dataclasses.MISSING:
      assert field.default == getattr(built[owner], name), owned
      checked += 1
  assert checked > 30
  required = lambda cls: {f.name for f in dataclasses.fields(cls)
                          if f.default is dataclasses.MISSING
                          and f.default_factory is dataclasses.MISSING}
  assert required(debate.DebateConfig) == {"early_exit", "assign_prob"}
  assert required(step_lib.StepConfig) == {"batch_size", "debate", "curriculum"}
  assert required(models.ModelConfig) == {"vocab_size", "num_layers", "d_model", "num_heads",
                                          "d_ff", "max_len"}


def test_every_owned_field_is_a_dataclass_field():
  owners = {"StepConfig": step_lib.StepConfig, "DebateConfig": debate.DebateConfig,
            "CurriculumConfig": curriculum.CurriculumConfig, "ModelConfig": models.ModelConfig,
            "OverseerConfig": overseer.OverseerConfig,
            "AdversaryConfig": adversary.AdversaryConfig}
  for name, owned in config_lib.OWNED.items():
    owner, field = owned.split(".")
    assert name not in config_lib.FIELDS, name  # one place checks each field
    if owner in owners:
      assert field in {f.name for f in dataclasses.fields(owners[owner])}, owned
  assert config_lib.OWNED["model.preset"] == "models.preset"


def test_a_dataclass_error_outside_the_config_keeps_its_own_name():
  with pytest.raises(checks.FieldError, match=r"^DebateConfig.t_max must be >= 1, got 0$"):
    debate.DebateConfig(t_max=0, early_exit=False, assign_prob=0.0)
  with pytest.raises(checks.FieldError, match=r"^CurriculumConfig.kind must be one of"):
    curriculum.CurriculumConfig(kind="linear")


def test_flatten():
  config = ml_collections.ConfigDict({"a": 1, "b": {"c": 2, "d": {"e": (3,)}}, "opts": {"n": 4}})
  assert config_lib.flatten(config) == {"a": 1, "b.c": 2, "b.d.e": (3,), "opts.n": 4}
  assert config_lib.flatten(config.to_dict(), keep=("opts", "b.d")) == {
      "a": 1, "b.c": 2, "b.d": {"e": (3,)}, "opts": {"n": 4}}


def test_option_parser():
  assert options.parse("task=permutation, mode=hybrid,runlocal", bare=True) == {
      "task": "permutation", "mode": "hybrid", "runlocal": True}
  assert options.parse(["n=8", "rate=0.5", "flag=False", "name=x"]) == {
      "n": 8, "rate": 0.5, "flag": False, "name": "x"}
  assert options.parse("") == {} and options.parse([]) == {}
  with pytest.raises(ValueError, match="--option 'runlocal' is not key=value"):
    options.parse(["runlocal"])
  with pytest.raises(ValueError, match="config arg: unknown key 'tsk'; allowed keys: task, mode"):
    options.parse("tsk=permutation", keys=("task", "mode"), what="config arg")
  assert not default.get_config("task=permutation,runlocal=False").runlocal


def test_check_compatible():
  saved = {"num_steps": 100, "lr": 1e-3, "model": {"d": 8, "heads": [2, 2]},
           "eval": {"every": 10, "n": 64}, "evaluation": 1, "flag": 1}
  same = {**saved, "model": {"d": 8, "heads": (2, 2)}}  # a tuple equals the saved list
  assert config_lib.check_compatible(saved, same, safe=()) == []
  current = {**saved, "num_steps": 200, "eval": {"every": 5, "n": 64, "new": True}}
  assert config_lib.check_compatible(saved, current, safe=("num_steps", "eval")) == [
      "eval.every", "eval.new", "num_steps"]
  current = {**current, "lr": 1e-2, "model": {"d": 16}, "flag": True, "evaluation": 2}
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.check_compatible(saved, current, safe=("num_steps", "eval"))
  message = str(error.value)
  for part in ["evaluation: 1 → 2", "flag: 1 → true", "lr: 0.001 → 0.01",
               "model.d: 8 → 16", "model.heads: [2, 2] → <absent>", "resume_allow_unsafe=True"]:
    assert part in message
  assert "num_steps" not in message and "eval.every" not in message
  assert config_lib.check_compatible(saved, current, safe=("num_steps", "eval"),
                                     allow_unsafe=True) == [
      "eval.every", "eval.new", "evaluation", "flag", "lr", "model.d", "model.heads", "num_steps"]
  config = default.get_config("task=permutation,quickstart").to_dict()
  changed = {**config, "num_steps": 5, "eval": {**config["eval"], "every": 7}}
  assert config_lib.check_compatible(config, changed) == ["eval.every", "num_steps"]
