"""Experiment configs: the schema, validation before anything compiles, the objects a config
describes, and resume safety.

A config is an ``ml_collections.ConfigDict`` (``experiments/configs/*.py``, where every default
lives). ``SCHEMA`` describes each of its fields once (a ``Field``): how it is checked and what it
is. Checked:
  * ``debate.*``, ``curriculum.*``, ``step.*``, ``safety.overseer.*``, ``safety.adversary.*``,
    ``model.*`` and ``batch_size`` set fields of the frozen dataclasses the pure code consumes
    (``DebateConfig``, ``CurriculumConfig``, ``StepConfig``, ``OverseerConfig``,
    ``AdversaryConfig``, and ``ModelConfig`` through ``models.preset``), which check them on
    construction (``Field.owner``; ``OWNED`` lists them); the builders (``make_model``,
    ``make_step_config``) report the dataclass's ``checks.FieldError`` as a ``ConfigError`` naming
    the config field.
  * every other field is checked here (``Field.check``; ``FIELDS`` lists them).
What it is (``Field.kind`` and ``Field.safe``): a constant of the traced programs, data in the
TrainState (``DATA_FIELDS``), host-only, never reaching a traced program (``is_host_only``), or a
choice among a run's programs (``picks_program``); and whether a resumed run may change it
(``SAFE_TO_CHANGE``).

``validate`` rejects unknown and missing fields, runs the checks and builds the dataclasses, so a
typo or a negative weight stops the run in milliseconds, with a one-line message such as
``config.debate.t_max must be >= 1, got 0``, instead of minutes into an XLA compile. An optional
value is an ``ml_collections`` placeholder (None until set, typed, so ``--config.step.target_period=50``
parses); configs saved before that spelled None as 0 or a negative number, which ``from_saved``
(and ``check_compatible``) read as None.

``check_compatible`` refuses to resume a checkpoint with a config that changes more than
``SAFE_TO_CHANGE``; ``flatten`` gives the dotted field names both use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from amp_debate import checks, models, tasks
from amp_debate.procedure import combine, curriculum, debate
from amp_debate.procedure.model_player import required_max_len
from amp_debate.safety import adversary, kl_budget, overseer
from amp_debate.train import step as step_lib

MODES = ("hybrid", "amplification", "debate", "supervised")


class ConfigError(ValueError):
  """A config field is unknown, missing or invalid, or differs from a checkpoint's (the message
  names it)."""


# ---- the schema: every field described once ------------------------------------------------------
COMPILED, DATA, HOST, PICKS = "compiled", "data", "host", "picks"


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field (or ``task_options``, a section checked as one value): how it is checked and
  what it is.

  Attributes:
    check: the rule applied here (``validate``), where no dataclass owns the field.
    owner: "DebateConfig.t_max": the dataclass field the config field sets, whose own check
      applies on construction (its error is re-raised under the config field's name).
    kind: where its value goes. COMPILED: into the traced programs (a change traces and compiles
      them again). DATA: into the TrainState, as an argument of the compiled step (runs differing
      only in these and the seed share one step: ``DATA_FIELDS``, ``hparams``). HOST: never into a
      traced program (``is_host_only``; the seed's key is an argument): runs differing only in
      these reuse the compiled programs, so a wrong HOST entry would run a stale program. PICKS:
      chooses which of a run's programs is used, each built on demand under the same cache entry
      (``picks_program``; ``eval.debates``: the evaluation with or without debates).
    safe: a resumed run may change it without ``resume_allow_unsafe`` (it does not change what is
      learned; ``SAFE_TO_CHANGE``).
    note: what a special value means (None of an optional field: "None: never"), recalled in the
      field's errors.
    legacy_none: the sentinel for None in configs saved before the field was optional (a predicate
      on the saved number; ``from_saved`` maps it to None).
  """

  check: Callable[[Any], str | None] | None = None
  owner: str | None = None
  kind: str = COMPILED
  safe: bool = False
  note: str = ""
  legacy_none: Callable[[Any], bool] | None = None

  def __post_init__(self):
    if (self.check is None) == (self.owner is None):
      raise ValueError(f"Field: give exactly one of check and owner, got {self}")
    if self.kind not in (COMPILED, DATA, HOST, PICKS):
      raise ValueError(f"Field.kind must be one of {COMPILED!r}, {DATA!r}, {HOST!r}, {PICKS!r}, "
                       f"got {self.kind!r}")


def _fields(cls, *set_elsewhere: str) -> tuple[str, ...]:
  """The fields of dataclass ``cls`` but those the config sets elsewhere (or not at all)."""
  return tuple(f.name for f in dataclasses.fields(cls) if f.name not in set_elsewhere)


def _owned(prefix: str, cls, *set_elsewhere: str, **special: dict) -> dict[str, Field]:
  """Entries for the fields of dataclass ``cls`` (but ``set_elsewhere``) as config fields
  ``prefix + name``, each owned by the dataclass and compiled into the programs; ``special``:
  field name -> more ``Field`` arguments."""
  names = _fields(cls, *set_elsewhere)
  unknown = sorted(set(special) - set(names))
  if unknown:
    raise ValueError(f"SCHEMA: {cls.__name__} has no config field(s) {unknown}")
  return {f"{prefix}{name}": Field(owner=f"{cls.__name__}.{name}", **special.get(name, {}))
          for name in names}


def _zero(value) -> bool:
  return value == 0


def _negative(value) -> bool:
  return value < 0


_MODEL_SIZES = ("num_layers", "d_model", "num_heads", "d_ff")  # None in the config: the preset's


def _mesh_axis(value):
  if not checks.is_integer(value) or (value < 1 and value != -1):
    return f"must be a positive integer or -1 (all remaining devices), got {value!r}"
  return None


def checkpoint_spec(value: str) -> tuple[str, int | None]:
  """(workdir, step or None for the latest) of a ``workdir[:step]`` config value."""
  workdir, sep, step = value.rpartition(":")
  if sep and step.isdigit() and workdir:
    return workdir, int(step)
  return value, None


def _checkpoint_spec(value):
  """'' (none) or ``workdir[:step]``."""
  if not isinstance(value, str):
    return f"must be '' or a run's workdir[:step], got {value!r}"
  tail = value.rpartition(":")[2] if ":" in value else None
  if tail is not None and (tail == "" or (tail.lstrip("-").isdigit() and not tail.isdigit())):
    return f"must be '' or a run's workdir[:step] with step an integer >= 0, got {value!r}"
  return None


def _best_metric(value):
  if isinstance(value, str) and (value == "" or value.startswith("eval/")):
    return None
  return f"must be '' or an eval metric such as 'eval/accuracy/model/mean', got {value!r}"


_SAFE_HOST = dict(kind=HOST, safe=True)  # schedule, logging, paths: neither learned nor traced

# Every config field, in the config file's order: dotted name -> Field. A field missing here is an
# unknown field to ``validate`` (tests/test_config.py checks every config the config files give).
SCHEMA: dict[str, Field] = {
    "task": Field(checks.string),
    "task_options": Field(lambda value: None),  # the task checks its options (make_task)
    "mode": Field(checks.choice(*MODES)),
    "runlocal": Field(checks.boolean),
    "seed": Field(checks.integer(0), kind=HOST),  # its key is an argument of the programs
    "num_steps": Field(checks.integer(1), **_SAFE_HOST),
    "batch_size": Field(owner="StepConfig.batch_size"),
    "log_every": Field(checks.integer(1), **_SAFE_HOST),
    "model.preset": Field(owner="models.preset"),
    **{f"model.{k}": Field(owner=f"ModelConfig.{k}", note="None: the preset's", legacy_none=_zero)
       for k in _MODEL_SIZES},
    "model.mask": Field(owner="ModelConfig.mask"),
    "model.positions": Field(owner="ModelConfig.positions"),
    "model.dtype": Field(owner="ModelConfig.dtype", note="\"\": the preset's, float32 on CPU"),
    # The learning rate and the combination's hyperparameters are data in the optimiser's state
    # (``make_optimizer``); the combination's own rules (combine applies them to its options too).
    "optimizer.learning_rate": Field(checks.number(0.0, lo_open=True), kind=DATA),
    "optimizer.warmup_steps": Field(checks.integer(0)),
    "optimizer.decay_steps": Field(checks.integer(0)),
    "optimizer.final_fraction": Field(checks.number(0.0, 1.0)),
    "optimizer.clip_norm": Field(checks.number(0.0)),
    "optimizer.b2": Field(checks.number(0.0, 1.0, hi_open=True)),
    "combination.kind": Field(checks.choice("weighted", "constrained", "shaped")),
    **{f"combination.{group}.{k}": Field(combine.WEIGHT, kind=DATA)
       for group in ("weights", "weights_end") for k in combine.OBJECTIVES},
    "combination.anneal_steps": Field(combine.ANNEAL_STEPS, kind=DATA),
    "combination.limit": Field(combine.LIMIT, kind=DATA),
    "combination.multiplier_lr": Field(combine.MULTIPLIER_LR, kind=DATA),
    "combination.beta": Field(combine.BETA, kind=DATA),
    **_owned("debate.", debate.DebateConfig,
             confidence_threshold=dict(note="None: no confidence rule", legacy_none=_negative),
             force_stop_after=dict(note="None: never", legacy_none=_zero)),
    **_owned("step.", step_lib.StepConfig, "batch_size", "debate", "curriculum", "catastrophe",
             "overseer", "adversary", "pack_groups",  # pack_groups: the trainer's, from the mesh
             target_period=dict(note="None: Polyak averaging", legacy_none=_zero),
             stop_cost=dict(note="None: no RL credit for the stop", legacy_none=_negative)),
    **_owned("safety.overseer.", overseer.OverseerConfig),
    **_owned("curriculum.", curriculum.CurriculumConfig),
    **_owned("safety.adversary.", adversary.AdversaryConfig,
             weight=dict(note="0: no adversary")),
    # The mesh is part of the programs' cache key by its shape; changing it on resume reshards.
    "mesh.data": Field(_mesh_axis, safe=True),
    "mesh.fsdp": Field(_mesh_axis, safe=True),
    "distributed": Field(checks.boolean, **_SAFE_HOST),
    "eval.every": Field(checks.integer(0), **_SAFE_HOST),
    "eval.data_dir": Field(checks.string, **_SAFE_HOST),
    "eval.examples_per_difficulty": Field(checks.integer(1), **_SAFE_HOST),
    "eval.batch_size": Field(checks.integer(1), **_SAFE_HOST),
    "eval.debates": Field(checks.boolean, kind=PICKS, safe=True),  # eval with debates or not
    "checkpoint.every": Field(checks.integer(0), **_SAFE_HOST),
    "checkpoint.keep": Field(checks.integer(1), **_SAFE_HOST),
    "checkpoint.best_metric": Field(_best_metric, **_SAFE_HOST),
    "checkpoint.async_save": Field(checks.boolean, **_SAFE_HOST),
    "resume_allow_unsafe": Field(checks.boolean, **_SAFE_HOST),
    "init_from": Field(_checkpoint_spec),
    # The KL budget to a known-safe policy (amp_debate.safety.kl_budget applies the same rules).
    "safety.kl_budget.reference": Field(_checkpoint_spec),
    "safety.kl_budget.phase_steps": Field(kl_budget.PHASE_STEPS),
    "safety.kl_budget.epsilon0": Field(kl_budget.EPSILON0),
    "safety.kl_budget.growth": Field(kl_budget.GROWTH),
    "safety.kl_budget.margin": Field(kl_budget.MARGIN),
    "safety.kl_budget.num_prompts": Field(kl_budget.NUM_PROMPTS),
    "safety.kl_budget.seed": Field(kl_budget.SEED),
}


def _under(name: str, sections: Sequence[str]) -> bool:
  """Whether the dotted ``name`` is one of ``sections`` or lies under one ("eval" covers
  "eval.every")."""
  return any(name == s or name.startswith(s + ".") for s in sections)


def _sections(has: Callable[[Field], bool]) -> tuple[str, ...]:
  """The fields for which ``has`` holds, each inside the largest section (dotted prefix) all of
  whose fields have it ("checkpoint" for every checkpoint.* field), in SCHEMA's order."""
  names = [name for name, field in SCHEMA.items() if has(field)]
  out = []
  for name in names:
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts))] + [name]
    top = next(p for p in prefixes
               if all(has(f) for n, f in SCHEMA.items() if _under(n, (p,))))
    if top not in out:
      out.append(top)
  return tuple(out)


# Derived from SCHEMA:
# The fields no dataclass owns, each with the check applied here: dotted name -> check.
FIELDS: dict[str, Callable[[Any], str | None]] = {
    name: field.check for name, field in SCHEMA.items() if field.owner is None}
# The fields set on a dataclass of the pure code, which checks them: config field -> the
# dataclass field ("owner.field", as ``checks.FieldError`` names it).
OWNED: dict[str, str] = {name: field.owner for name, field in SCHEMA.items() if field.owner}
_CONFIG_FIELD = {owned: name for name, owned in OWNED.items()}
# Fields (or whole sections) a resumed run may change without resume_allow_unsafe (they do not
# change what is learned).
SAFE_TO_CHANGE = _sections(lambda field: field.safe)
# Fields (or sections) that never reach a traced program: runs in one process whose configs
# differ only in these (a resumed run, a sweep over seeds or run lengths, tests) can reuse the
# traced and compiled programs.
HOST_ONLY = _sections(lambda field: field.kind == HOST)
# Fields that are data in the TrainState (``make_optimizer``), not in the traced program: runs
# whose configs differ only in these (and the seed) share one compiled train step, and can run
# vmapped in one process (``trainer.run_group``). ``hparams`` turns them into the arguments
# of ``step.with_hparams``.
DATA_FIELDS = _sections(lambda field: field.kind == DATA)
# Fields that choose among a run's programs (built on demand) rather than change one.
PICKS_PROGRAM = _sections(lambda field: field.kind == PICKS)


def is_host_only(name: str) -> bool:
  """Whether the flattened config field ``name`` never reaches a traced program (HOST_ONLY); a
  field the schema does not know is assumed to reach one."""
  return _under(name, HOST_ONLY)


def is_data_field(name: str) -> bool:
  """Whether the flattened config field ``name`` is one of DATA_FIELDS (or inside one)."""
  return _under(name, DATA_FIELDS)


def picks_program(name: str) -> bool:
  """Whether the flattened config field ``name`` chooses among a run's programs (PICKS_PROGRAM)
  rather than changing one: the program cache keys a run without it."""
  return _under(name, PICKS_PROGRAM)


def is_safe_to_change(name: str) -> bool:
  """Whether a resumed run may change the flattened config field ``name`` (SAFE_TO_CHANGE)."""
  return _under(name, SAFE_TO_CHANGE)


def flatten(config: Mapping | ml_collections.ConfigDict, *, keep: Sequence[str] = (),
            prefix: str = "") -> dict[str, Any]:
  """{"a.b": value} for every leaf of a nested config (a ConfigDict or plain dicts); a section
  named in ``keep`` (dotted) stays one dict-valued leaf. An empty section has no leaves."""
  out = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
      out[name] = value
    elif name in keep:
      out[name] = dict(value)
    else:
      out.update(flatten(value, keep=keep, prefix=name + "."))
  return out


# ---- validation --------------------------------------------------------------------------------
@contextlib.contextmanager
def _named_as_config_fields():
  """Turns a dataclass's FieldError about an owned field into a ConfigError naming the config
  field (``OWNED``); any other error passes through."""
  try:
    yield
  except checks.FieldError as e:
    name = _CONFIG_FIELD.get(f"{e.owner}.{e.field}")
    if name is None:
      raise
    note = f" ({SCHEMA[name].note})" if SCHEMA[name].note else ""
    raise ConfigError(f"config.{name} {e.problem}{note}") from None


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the first unknown, missing or invalid field.

  Cross-field checks: the task and its options (``tasks.get``), the model shape (heads divide
  d_model), the forced stop within t_max, the mesh against ``num_devices`` (default: all devices)
  and the batch size against the number of data-parallel shards.
  """
  flat = flatten(config, keep=("task_options",))
  known = FIELDS.keys() | OWNED.keys()
  unknown = sorted(set(flat) - known)
  if unknown:
    raise ConfigError(f"config.{unknown[0]}: unknown field (known top-level fields: "
                      f"{', '.join(sorted({k.split('.')[0] for k in known}))})")
  missing = sorted(known - set(flat))
  if missing:
    raise ConfigError(f"config.{missing[0]}: missing field")
  for name, check in FIELDS.items():
    problem = check(flat[name])
    if problem:
      raise ConfigError(f"config.{name} {problem}")
  try:
    task = make_task(config)
  except checks.FieldError as e:  # the task's own rule for one of its options
    raise ConfigError(f"config.task_options.{e.field} {e.problem}") from None
  except ValueError as e:  # an unknown task or option
    raise ConfigError(f"config.task_options: {e}") from None
  make_model(config, task)
  make_step_config(config)
  if kl_budget_on(config) and config.mode == "supervised":
    raise ConfigError("config.safety.kl_budget.reference: the KL budget needs a mode with the "
                      "debate step (hybrid, amplification or debate), not supervised")
  league = config.step.get("league_size", 0) > 0
  if league and (config.mode == "supervised" or config.combination.weights.sup != 0
                 or config.combination.weights_end.sup != 0):
    raise ConfigError("config.step.league_size: games against the league's snapshots are for pure "
                      "debate (mode=debate, combination.weights.sup = weights_end.sup = 0): the "
                      "snapshots' computations would become distillation targets")
  force_stop_after = config.debate.force_stop_after
  if (config.mode != "supervised" and force_stop_after is not None
      and force_stop_after > config.debate.t_max):
    raise ConfigError(f"config.debate.force_stop_after={config.debate.force_stop_after} exceeds "
                      f"config.debate.t_max={config.debate.t_max}")
  data, fsdp = mesh_shape(config, num_devices)
  if config.batch_size % (data * fsdp):
    raise ConfigError(f"config.batch_size={config.batch_size} is not divisible by the "
                      f"{data * fsdp} data-parallel shards (mesh data={data} x fsdp={fsdp})")
  minibatch = config.batch_size // config.step.num_minibatches
  if config.mode != "supervised" and minibatch % (data * fsdp):
    raise ConfigError(f"config.step.num_minibatches={config.step.num_minibatches} makes "
                      f"minibatches of {minibatch} games, not divisible by the {data * fsdp} "
                      f"data-parallel shards")


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int | None = None) -> tuple[int, int]:
  """(data, fsdp) sizes with -1 resolved; ConfigError if they do not multiply to the devices."""
  n = jax.device_count() if num_devices is None else num_devices
  data, fsdp = config.mesh.data, config.mesh.fsdp
  if data == -1 and fsdp == -1:
    raise ConfigError("config.mesh: at most one of data, fsdp may be -1")
  if data == -1:
    data = n // fsdp if n % fsdp == 0 else 0
  if fsdp == -1:
    fsdp = n // data if n % data == 0 else 0
  if data * fsdp != n:
    raise ConfigError(f"config.mesh: data={config.mesh.data} x fsdp={config.mesh.fsdp} does not "
                      f"match the {n} devices")
  return data, fsdp


# ---- resume safety -----------------------------------------------------------------------------
_ABSENT = "<absent>"


def _as_json(config: Mapping[str, Any]) -> dict:
  """``config`` as a checkpoint's JSON holds it (tuples become lists, numpy scalars numbers)."""
  return json.loads(json.dumps(config, default=lambda value: value.item()))


def upgrade_saved(saved: Mapping[str, Any]) -> dict:
  """A saved config (a checkpoint's or a ``config.json``, as JSON holds it) in today's spelling:
  where it holds the sentinel an optional field had before it was a placeholder
  (``Field.legacy_none``: ``step.target_period`` 0, ``debate.confidence_threshold`` < 0, ...),
  None. Anything else is kept as saved."""
  out = _as_json(saved)
  for name, field in SCHEMA.items():
    *parents, leaf = name.split(".")
    node = out
    for part in parents:
      node = node.get(part) if isinstance(node, dict) else None
    if (field.legacy_none is not None and isinstance(node, dict)
        and checks.is_number(node.get(leaf)) and field.legacy_none(node[leaf])):
      node[leaf] = None
  return out


def from_saved(saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The ConfigDict of a saved config (``upgrade_saved``): what ``load_state`` builds a
  checkpoint's run from."""
  return ml_collections.ConfigDict(upgrade_saved(saved))


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], *,
                     safe: Sequence[str] = SAFE_TO_CHANGE, allow_unsafe: bool = False) -> list[str]:
  """The dotted config keys whose values differ between a checkpoint's config and this run's.

  A key is safe to change if it equals an entry of ``safe`` or lies under one (``"eval"`` covers
  ``"eval.every"``). Values are compared as JSON holds them (a tuple equals the saved list), the
  saved config read in today's spelling (``upgrade_saved``: an old sentinel equals None).
  Raises ConfigError listing the unsafe changes (saved → current) unless ``allow_unsafe``.
  """
  if isinstance(safe, str):
    safe = (safe,)
  old, new = flatten(upgrade_saved(saved)), flatten(_as_json(current))
  changed = sorted(k for k in old.keys() | new.keys()
                   if k not in old or k not in new or old[k] != new[k]
                   or isinstance(old[k], bool) != isinstance(new[k], bool))  # True == 1 in Python
  unsafe = [k for k in changed if not _under(k, safe)]
  if unsafe and not allow_unsafe:
    show = lambda cfg, k: json.dumps(cfg[k]) if k in cfg else _ABSENT
    fields = ", ".join(f"{k}: {show(old, k)} → {show(new, k)}" for k in unsafe)
    raise ConfigError(f"resume: the config differs from the checkpoint's in fields that are not "
                      f"safe to change ({fields}); restore the saved values, start a new workdir, "
                      f"or set resume_allow_unsafe=True to resume anyway")
  return changed


# ---- builders ----------------------------------------------------------------------------------
def make_task(config: ml_collections.ConfigDict) -> tasks.Task:
  return tasks.get(config.task, **dict(config.task_options))


def model_dtype(dtype: str, preset: str) -> str:
  """``ModelConfig.dtype`` for ``config.model.dtype``: a dtype name as given; "" (the default):
  the preset's, where a preset asking for half precision (``large``: bfloat16) gets "auto",
  which keeps float32 on CPU (bfloat16 matmuls are emulated there) and is resolved when the
  model is traced, not here (no JAX backend is initialised by building a config)."""
  if dtype:
    return dtype
  wanted = models.PRESETS[preset].get("dtype", "float32")
  return "float32" if wanted == "float32" else "auto"


def make_model(config: ml_collections.ConfigDict, task: tasks.Task) -> models.LanguageModel:
  """M: the config's preset with its size overrides (those not None), sized for ``task``'s
  protocol."""
  m = config.model
  overrides = {k: m[k] for k in _MODEL_SIZES if m[k] is not None}
  if m.preset in models.PRESETS:  # an unknown preset: models.preset names it
    overrides["dtype"] = model_dtype(m.dtype, m.preset)
  with _named_as_config_fields():
    model_config = models.preset(
        m.preset, task.vocab_size, required_max_len(task), mask=m.mask, positions=m.positions,
        pad_id=tasks.PAD, **overrides)
  return models.LanguageModel(model_config)


def make_step_config(config: ml_collections.ConfigDict) -> step_lib.StepConfig:
  """The step's static options (the debate's, the curriculum's and the adversary's inside; the
  adversary is None at weight 0, its other fields checked all the same)."""
  d, s = config.debate, config.step
  with _named_as_config_fields():
    adversary_config = adversary.AdversaryConfig(**config.safety.adversary)
    return step_lib.StepConfig(**{
        **s,
        "batch_size": config.batch_size,
        "debate": debate.DebateConfig(**d),
        "curriculum": curriculum.CurriculumConfig(**config.curriculum),
        # A config saved before the field existed (an older checkpoint's) lacks it: off.
        "stop_cost": s.get("stop_cost"),
        "target_ema": None if s.target_period is not None else s.target_ema,
        # The overseer watches for the judge flaw's exploit: only where there is a flaw.
        "overseer": (overseer.OverseerConfig(**config.safety.overseer) if d.p_flaw > 0
                     else None),
        "adversary": adversary_config if adversary_config.weight > 0 else None,
    })


def _weight(config: ml_collections.ConfigDict, name: str) -> combine.Linear:
  """λ_name: weights.name annealed linearly to weights_end.name over anneal_steps (0: constant)."""
  c = config.combination
  return combine.Linear(float(c.weights[name]), float(c.weights_end[name]), int(c.anneal_steps))


def lr_multiplier(optimizer: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array] | None:
  """The learning rate's multiplier as a function of the update count (None: constant 1):
  linear warm-up over ``warmup_steps`` times a cosine from 1 to ``final_fraction`` over
  ``decay_steps`` (held at ``final_fraction`` after)."""
  warmup, decay = int(optimizer.warmup_steps), int(optimizer.get("decay_steps", 0))
  final = float(optimizer.get("final_fraction", 0.0))
  if not warmup and not decay:
    return None

  cosine = optax.cosine_decay_schedule(1.0, decay, alpha=final) if decay else None

  def multiplier(count):
    value = jnp.minimum(1.0, count / warmup) if warmup else 1.0
    return value * cosine(count) if cosine is not None else value

  return multiplier


def kl_budget_on(config: ml_collections.ConfigDict) -> bool:
  """Whether the config names a reference checkpoint for the KL budget (configs saved before the
  budget existed have none)."""
  return bool(config.get("safety", {}).get("kl_budget", {}).get("reference", ""))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformationExtraArgs:
  """combination -> clip -> Adam (with optional linear warm-up and cosine decay), its steps
  projected into the KL budget when ``safety.kl_budget.reference`` is set.

  The combination's hyperparameters (the λ anneals, limit, multiplier_lr, β) are data in its
  state (``combine``), and so is Adam's learning rate (``optax.inject_hyperparams``; the warm-up
  multiplies the update by min(1, count / warmup_steps); with ``decay_steps`` > 0 a cosine
  takes it from 1 to ``final_fraction`` over that many updates, counted from the start, and
  holds it there), so configs that differ only in them share one compiled step;
  ``step.init_state(..., hparams=...)`` sets them. The decay is counted in updates, not steps,
  and does not follow ``num_steps``: extending a finished run keeps its schedule.

  The KL budget (``amp_debate.safety.kl_budget.constrain``) wraps the whole chain and evaluates
  M's KL to the anchor on the reference prompts (drawn here from the task) at M's sampling
  temperature. The anchor in its state starts as a copy of the initial parameters; the trainer
  replaces it with the reference checkpoint's.
  """
  kind = config.combination.kind
  if kind == "weighted":
    combination = combine.make("weighted", weights={k: _weight(config, k) for k in combine.OBJECTIVES})
  elif kind == "constrained":
    combination = combine.make("constrained", limit=config.combination.limit,
                               multiplier_lr=config.combination.multiplier_lr,
                               rl_weight=_weight(config, "rl"), cat_weight=_weight(config, "cat"))
  else:
    combination = combine.make("shaped", rl_weight=_weight(config, "rl"),
                               cat_weight=_weight(config, "cat"), beta=config.combination.beta)
  # Only the learning rate is injected: b2 compiled in keeps the updates bitwise those of
  # optax.adam (1 - b2 folded in float64 vs computed in float32 differs by an ulp).
  optimizer = optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"))(
      learning_rate=config.optimizer.learning_rate, b2=config.optimizer.b2)
  schedule = lr_multiplier(config.optimizer)
  if schedule is not None:
    optimizer = optax.chain(optimizer, optax.scale_by_schedule(schedule))
  tx = combine.chain(combination, clip_norm=config.optimizer.clip_norm or None,
                     optimizer=optimizer)
  if kl_budget_on(config):
    k = config.safety.kl_budget
    task = make_task(config)
    make_kl = kl_budget.policy_kl(
        make_model(config, task), kl_budget.reference_prompts(task, k.num_prompts, k.seed),
        task.answer_len, temperature=config.step.temperature)
    tx = kl_budget.constrain(tx, make_kl, epsilon0=k.epsilon0, growth=k.growth,
                             phase_steps=k.phase_steps, margin=k.margin)
  return tx



def hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config's DATA_FIELDS as keyword arguments of ``step.with_hparams``: a state built from
  another config's optimiser (same kind, differing only in data fields) and given these equals
  the state this config's own optimiser builds."""
  c = config.combination
  out: dict[str, Any] = {"learning_rate": float(config.optimizer.learning_rate)}
  if c.kind == "weighted":
    out["weights"] = {k: _weight(config, k) for k in combine.OBJECTIVES}
  else:
    out["weights"] = {k: _weight(config, k) for k in ("rl", "cat")}
  if c.kind == "constrained":
    out.update(limit=float(c.limit), multiplier_lr=float(c.multiplier_lr))
  if c.kind == "shaped":
    out["beta"] = float(c.beta)
  return out
