"""Fixed, versioned evaluation sets: one TFDS dataset ``amp_debate_eval`` (array_record, no TensorFlow).

Each builder config is one task at fixed options; each split ``difficulty_{d}`` holds
``examples_per_difficulty`` distinct questions of level d for d in ``[0, task.max_difficulty]``, all
from the **evaluation part** of the task's question space (``tasks.base.is_eval_question``), which
the training sampler never draws: held out by construction (DESIGN.md section 2). Examples are
generated with JAX from a fixed seed (``generate``: rounds of evaluation-part draws, first
occurrences kept in order), so the content is a pure function of (task code, options, seed,
``examples_per_difficulty``, version). Any change to a task's sampling code that changes its
questions needs a new ``AmpDebateEval.VERSION``.

Config names: the task name at the task's default options (``"permutation"``, one per registered task
in ``BUILDER_CONFIGS``); otherwise every option, sorted, is spelled out, then non-default
``examples_per_difficulty`` / ``seed``, e.g. ``"permutation+max_exponent-16+n-8"``. Such names are
parsed back on the fly, so TFDS-style names work everywhere:
``builder("amp_debate_eval/permutation+max_exponent-16+n-8:2.0.0")``, and also ``tfds.builder(...)``
once this module is imported.

Features per example:
  question    int32[Lq]
  answer      int32[La]   ground truth (``task.solve``)
  difficulty  int32[]     equals the split's level
  index       int32[]     position in generation order (TFDS shuffles on write; ``load`` sorts by it)

Usage::

  eval_set = eval_sets.load("permutation")          # builds into the data dir on first use
  eval_set.name                                     # "amp_debate_eval/permutation:2.0.0": cite it
  eval_set.splits[2]["question"]                    # int32[500, Lq]
  eval_set.batch(2)                                 # tasks.Batch of jnp arrays

CLI: ``python -m amp_debate.data.eval_sets --task permutation [--option max_exponent=16 ...]
[--data_dir D]`` builds the set and prints a summary.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import sys
from typing import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from etils import epath

from amp_debate import cli
from amp_debate import options as options_lib
from amp_debate import tasks as tasks_lib
from amp_debate.tasks.base import Batch, Task, check_option, is_eval_question

DATASET_NAME = "amp_debate_eval"
DATA_DIR_ENV = "AMP_DEBATE_DATA_DIR"
DEFAULT_EXAMPLES_PER_DIFFICULTY = 500
DEFAULT_SEED = 0
# The PRNG is pinned so that global JAX flags (``jax_default_prng_impl``,
# ``jax_threefry_partitionable``) cannot change the content.
PRNG_IMPL = "threefry2x32"
THREEFRY_PARTITIONABLE = True
_RESERVED = ("examples_per_difficulty", "seed")


# ---- configs and their names ------------------------------------------------------------------
def _format_value(key: str, value) -> str:
  """``str(value)``, checked to fit a TFDS config name and to parse back to ``value``
  (``options.parse_value`` reads it)."""
  text = str(value)
  if not re.fullmatch(r"[\w\-.]+", text) or options_lib.parse_value(text) != value:
    raise ValueError(f"option {key}={value!r} cannot be spelled in an eval-set config name "
                     "(ints, bools, plain floats and word-like strings can)")
  return text


def config_name(task: Task, examples_per_difficulty: int = DEFAULT_EXAMPLES_PER_DIFFICULTY,
                seed: int = DEFAULT_SEED) -> str:
  """Deterministic readable config name, e.g. ``"permutation"`` or ``"permutation+n-8+seed-1"``."""
  options = task.options()
  reserved = sorted(set(options) & set(_RESERVED))
  if reserved:
    raise ValueError(f"{task.name}: option names {reserved} clash with eval-set fields {_RESERVED}")
  parts = [task.name]
  if options != type(task)().options():
    parts += [f"{key}-{_format_value(key, options[key])}" for key in sorted(options)]
  if examples_per_difficulty != DEFAULT_EXAMPLES_PER_DIFFICULTY:
    parts.append(f"examples_per_difficulty-{examples_per_difficulty}")
  if seed != DEFAULT_SEED:
    parts.append(f"seed-{seed}")
  return "+".join(parts)


def full_name(task: Task, examples_per_difficulty: int = DEFAULT_EXAMPLES_PER_DIFFICULTY,
              seed: int = DEFAULT_SEED) -> str:
  """The TFDS name an eval set is cited by, ``"amp_debate_eval/<config>:<version>"``, without
  building it (``load`` returns the same as ``EvalSet.name``)."""
  return (f"{DATASET_NAME}/{config_name(task, examples_per_difficulty, seed)}:"
          f"{AmpDebateEval.VERSION}")


def parse_config_name(name: str) -> tuple[Task, int, int]:
  """Inverse of ``config_name``: -> (task, examples_per_difficulty, seed). Raises ValueError.

  Also accepts non-canonical names (options in any order, defaults left out): the returned settings
  then map back to the canonical name, so equal content always lives under one config.
  """
  task_name, *fields = name.split("+")
  if task_name not in tasks_lib.names():
    raise ValueError(f"unknown task {task_name!r} in eval-set config {name!r}; "
                     f"available tasks: {', '.join(tasks_lib.names())}")
  values = {}
  for field in fields:
    key, sep, text = field.partition("-")
    if not sep or not key:
      raise ValueError(f"malformed field {field!r} in eval-set config name {name!r} "
                       "(expected key-value, e.g. 'permutation+max_exponent-16+n-8')")
    values[key] = options_lib.parse_value(text)
  examples = values.pop("examples_per_difficulty", DEFAULT_EXAMPLES_PER_DIFFICULTY)
  seed = values.pop("seed", DEFAULT_SEED)
  return tasks_lib.get(task_name, **values), examples, seed


@dataclasses.dataclass(eq=False)
class EvalConfig(tfds.core.BuilderConfig):
  """One task at fixed options.

  Attributes:
    task: task name (a key of ``amp_debate.tasks.REGISTRY``).
    options: the task's options as sorted (key, value) pairs.
    examples_per_difficulty: examples in each ``difficulty_{d}`` split.
    seed: PRNG seed of the generator.
  """

  task: str = ""
  options: tuple[tuple[str, object], ...] = ()
  examples_per_difficulty: int = DEFAULT_EXAMPLES_PER_DIFFICULTY
  seed: int = DEFAULT_SEED

  @classmethod
  def create(cls, task: Task, examples_per_difficulty: int = DEFAULT_EXAMPLES_PER_DIFFICULTY,
             seed: int = DEFAULT_SEED) -> "EvalConfig":
    options = tuple(sorted(task.options().items()))
    described = ", ".join(f"{k}={v}" for k, v in options)
    return cls(
        name=config_name(task, examples_per_difficulty, seed),
        description=(f"{task.name}({described}): {examples_per_difficulty} examples per difficulty "
                     f"0..{task.max_difficulty}, seed {seed}."),
        task=task.name, options=options, examples_per_difficulty=examples_per_difficulty, seed=seed)

  def make_task(self) -> Task:
    return tasks_lib.get(self.task, **dict(self.options))


_CONFIG_CACHE: dict[str, EvalConfig] = {}


def get_config(task: Task, examples_per_difficulty: int = DEFAULT_EXAMPLES_PER_DIFFICULTY,
               seed: int = DEFAULT_SEED) -> EvalConfig:
  """The (unique, cached) config object for these settings; TFDS requires configs by identity."""
  check_option(DATASET_NAME, "examples_per_difficulty", examples_per_difficulty, 1)
  check_option(DATASET_NAME, "seed", seed, 0)
  name = config_name(task, examples_per_difficulty, seed)
  if name not in _CONFIG_CACHE:
    _CONFIG_CACHE[name] = EvalConfig.create(task, examples_per_difficulty, seed)
  return _CONFIG_CACHE[name]


# ---- generation -------------------------------------------------------------------------------
def split_name(difficulty: int) -> str:
  return f"difficulty_{difficulty}"


# Rounds of evaluation-part draws (each of ``num`` questions) before ``generate`` gives up on finding
# ``num`` distinct questions: a level whose evaluation part is smaller than the split.
MAX_ROUNDS = 32


class SpaceTooSmall(ValueError):
  """A level's evaluation part holds fewer distinct questions than the split asks for."""


def generate(task: Task, difficulty: int, num: int, seed: int = DEFAULT_SEED) -> Batch:
  """The questions of one split, in generation order: ``num`` distinct evaluation-part questions.

  Round r draws ``task.sample(fold_in(fold_in(key(seed), d), r), num, difficulty=d, part="eval")``;
  the first occurrence of each question is kept, in draw order, until ``num`` are found.

  Returns:
    Batch with questions int32[num, Lq], answers int32[num, La], difficulty int32[num].
  Raises:
    SpaceTooSmall: fewer than ``num`` distinct questions after ``MAX_ROUNDS`` rounds (the message
      gives the count found).
  """
  kept_q, kept_a, seen = [], [], set()
  with jax.threefry_partitionable(THREEFRY_PARTITIONABLE):
    key = jax.random.fold_in(jax.random.key(seed, impl=PRNG_IMPL), difficulty)
    for r in range(MAX_ROUNDS):
      batch = jax.device_get(_jitted_sample(task)(jax.random.fold_in(key, r), num,
                                                  difficulty=jnp.int32(difficulty)))
      evaluation = np.asarray(is_eval_question(batch.questions))
      for question, answer, ok in zip(batch.questions, batch.answers, evaluation):
        row = question.tobytes()
        if ok and row not in seen:  # (a draw that gave up after MAX_ATTEMPTS is not kept)
          seen.add(row)
          kept_q.append(question)
          kept_a.append(answer)
          if len(kept_q) == num:
            return Batch(questions=jnp.asarray(np.stack(kept_q)),
                         answers=jnp.asarray(np.stack(kept_a)),
                         difficulty=jnp.full((num,), difficulty, jnp.int32))
  raise SpaceTooSmall(
      f"{task.name} {task.options()}: level {difficulty} has only {len(kept_q)} distinct "
      f"evaluation-part questions in {MAX_ROUNDS * num} draws, fewer than the {num} asked for "
      f"(examples_per_difficulty); use larger task options or fewer examples")


@functools.cache
def _jitted_sample(task: Task):
  """``jax.jit(task.sample)`` on the evaluation part, kept so every round and difficulty reuse one
  compilation."""
  return jax.jit(functools.partial(task.sample, part="eval"), static_argnums=1)


# Under ``python -m`` this file runs as ``__main__``; registering there too would make a later import
# of ``amp_debate.data.eval_sets`` fail with "Dataset with name amp_debate_eval already registered".
class AmpDebateEval(tfds.core.GeneratorBasedBuilder, skip_registration=__name__ == "__main__"):
  """Fixed evaluation questions per task and difficulty (see module docstring)."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: splits difficulty_{d}; features question, answer, difficulty, index.",
      "1.1.0": "assignments: every level's table holds every depth up to max_depth and the query "
               "is a variable of depth d (1.0.0 built level-d tables from depths <= d). "
               "shortest_path: the graph is an N x N adjacency matrix of 0/1 tokens (1.0.0: a "
               "shuffled edge list) and each level's budget is h = d + 1 with answers h or inf "
               "(level 0: 0, 1 or inf; 1.0.0 had h = max_hops and no inf answers). permutation, "
               "union_find and wildcard questions are unchanged.",
      "1.2.0": "shortest_path: node i's adjacency row is one number token, the mask sum of 2^j "
               "over its neighbours j (Lq = N + 3; 1.1.0: the N x N matrix of 0/1 tokens), and "
               "num_nodes is at most 10. Every other task's questions are unchanged.",
      "2.0.0": "Held out by construction (issue 27): every split holds only questions of the "
               "evaluation part of its task's question space (a hash of the question tokens, "
               "tasks.base.is_eval_question: 1 bucket of 4), which the training sampler never "
               "draws, and no question twice (first occurrences of rounds of evaluation-part "
               "draws). Before, splits were plain draws from D: on four of five tasks most of "
               "their questions were also drawn in training, and splits repeated questions "
               "(permutation n=5 level 0: 338 distinct among 500). Every task's questions change.",
  }
  BUILDER_CONFIGS = [get_config(tasks_lib.get(name)) for name in tasks_lib.names()]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. TFDS's own lookup needs the ``importlib_resources`` backport (absent on Python >= 3.9
    unless installed) for builders defined in a package; this builder has no checksums file anyway."""
    return epath.Path(__file__)

  @classmethod
  def get_builder_config(cls, name: str, version=None) -> EvalConfig | None:
    """Registered configs, plus configs parsed from names such as ``"permutation+n-8"``."""
    return super().get_builder_config(name, version) or get_config(*parse_config_name(name))

  @property
  def task(self) -> Task:
    return self.builder_config.make_task()

  def _info(self) -> tfds.core.DatasetInfo:
    task = self.task
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=config.description,
        features=tfds.features.FeaturesDict({
            "question": tfds.features.Tensor(shape=(task.question_len,), dtype=np.int32),
            "answer": tfds.features.Tensor(shape=(task.answer_len,), dtype=np.int32),
            "difficulty": tfds.features.Tensor(shape=(), dtype=np.int32),
            "index": tfds.features.Tensor(shape=(), dtype=np.int32),
        }),
        metadata=tfds.core.MetadataDict(
            task=config.task, options=dict(config.options), seed=config.seed,
            examples_per_difficulty=config.examples_per_difficulty, prng_impl=PRNG_IMPL,
            threefry_partitionable=THREEFRY_PARTITIONABLE, generated_with_jax=jax.__version__,
            vocab=list(task.tokenizer.vocab)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: everything is generated.
    return {split_name(d): self._generate_examples(d) for d in range(self.task.max_difficulty + 1)}

  def _generate_examples(self, difficulty: int):
    config = self.builder_config
    batch = jax.device_get(generate(self.task, difficulty, config.examples_per_difficulty, config.seed))
    for i in range(config.examples_per_difficulty):
      yield i, {
          "question": batch.questions[i], "answer": batch.answers[i],
          "difficulty": np.int32(batch.difficulty[i]), "index": np.int32(i),
      }


# ---- loading ----------------------------------------------------------------------------------
def default_data_dir() -> str:
  """``$AMP_DEBATE_DATA_DIR``, else ``~/tensorflow_datasets``."""
  return os.environ.get(DATA_DIR_ENV) or os.path.expanduser("~/tensorflow_datasets")


def builder(task: Task | str, *, options: Mapping | None = None,
            examples_per_difficulty: int = DEFAULT_EXAMPLES_PER_DIFFICULTY, seed: int = DEFAULT_SEED,
            data_dir: str | os.PathLike | None = None) -> AmpDebateEval:
  """The TFDS builder (not yet prepared) for a task.

  Args:
    task: a Task, a task name (built with ``options``), or a TFDS-style name
      ``"amp_debate_eval/<config>[:<version>]"`` (then ``options``/``examples``/``seed`` must be unset).
    options: task options when ``task`` is a name.
    examples_per_difficulty, seed: generator settings.
    data_dir: root data directory (default ``default_data_dir()``).
  """
  data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
  kwargs = dict(data_dir=data_dir, file_format="array_record")
  if isinstance(task, str) and task.startswith(DATASET_NAME + "/"):
    if options or examples_per_difficulty != DEFAULT_EXAMPLES_PER_DIFFICULTY or seed != DEFAULT_SEED:
      raise ValueError(f"{task!r} already names options, examples and seed; do not pass them too")
    name, version = task[len(DATASET_NAME) + 1:].partition(":")[::2]
    return AmpDebateEval(config=name, version=version or None, **kwargs)
  if isinstance(task, str):
    task = tasks_lib.get(task, **dict(options or {}))
  elif options:
    raise ValueError("options are only accepted with a task name; got a Task instance and options")
  return AmpDebateEval(config=get_config(task, examples_per_difficulty, seed), **kwargs)


def prepare(eval_builder: AmpDebateEval) -> None:
  """Generates the dataset if it is missing (offline; never asks GCS).

  Safe when several processes prepare the same set at once (a sweep's ``--parallel`` runs, an
  array job's tasks on one data directory): on one host an exclusive lock file beside the
  dataset's directory makes the others wait and then reuse it; where locks do not reach (a shared
  filesystem without them), a process that loses TFDS's final rename to another's identical,
  deterministic copy uses that copy instead of failing.
  """
  final_dir = os.fspath(eval_builder.data_path)
  parent = os.path.dirname(final_dir)
  os.makedirs(parent, exist_ok=True)
  with open(os.path.join(parent, f".{os.path.basename(final_dir)}.lock"), "a") as lock:
    try:
      import fcntl  # POSIX only; elsewhere the rename fallback below still applies.
      fcntl.flock(lock, fcntl.LOCK_EX)
    except (ImportError, OSError):
      pass
    try:
      eval_builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except FileExistsError:
      if not os.path.isdir(final_dir):
        raise


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """A loaded evaluation set.

  Attributes:
    task: the Task the questions belong to.
    name: full TFDS name to cite, e.g. ``"amp_debate_eval/permutation:2.0.0"``.
    version: dataset version string, e.g. ``"2.0.0"``.
    path: directory holding the prepared files.
    splits: difficulty -> {"question": int32[N, Lq], "answer": int32[N, La], "difficulty": int32[N],
      "index": int32[N]}, rows in generation order.
  """

  task: Task
  name: str
  version: str
  path: str
  splits: dict[int, dict[str, np.ndarray]]

  def batch(self, difficulty: int) -> Batch:
    """One split as a ``tasks.Batch`` of jnp arrays."""
    split = self.splits[difficulty]
    return Batch(questions=jnp.asarray(split["question"]), answers=jnp.asarray(split["answer"]),
                 difficulty=jnp.asarray(split["difficulty"]))


def _read_split(eval_builder: AmpDebateEval, difficulty: int) -> dict[str, np.ndarray]:
  """All examples of one split, sorted by ``index`` (TFDS stores them in hashed-key order)."""
  source = eval_builder.as_data_source(split=split_name(difficulty))
  examples = source.__getitems__(list(range(len(source))))
  features = eval_builder.info.features
  arrays = {key: np.stack([np.asarray(ex[key], features[key].np_dtype) for ex in examples])
            for key in features}
  order = np.argsort(arrays["index"], kind="stable")
  return {key: value[order] for key, value in arrays.items()}


def _difficulties(task: Task, difficulty: int | Iterable[int] | None) -> list[int]:
  levels = list(range(task.max_difficulty + 1))
  if difficulty is None:
    return levels
  wanted = [int(difficulty)] if np.ndim(difficulty) == 0 else [int(d) for d in difficulty]
  bad = [d for d in wanted if d not in levels]
  if bad:
    raise ValueError(f"{task.name}: difficulty {bad} out of range; levels are 0..{task.max_difficulty}")
  return wanted


def load(task: Task | str, *, difficulty: int | Iterable[int] | None = None,
         options: Mapping | None = None,
         examples_per_difficulty: int = DEFAULT_EXAMPLES_PER_DIFFICULTY, seed: int = DEFAULT_SEED,
         data_dir: str | os.PathLike | None = None) -> EvalSet:
  """Loads (building first if missing) the evaluation set of a task.

  Args:
    task: a Task, a task name, or a TFDS-style name ``"amp_debate_eval/<config>[:<version>]"``.
    difficulty: None for every level, or one level, or several.
    options, examples_per_difficulty, seed, data_dir: see ``builder``.
  Returns:
    EvalSet whose ``splits`` map each requested difficulty to its arrays, in generation order.
  """
  eval_builder = builder(task, options=options, examples_per_difficulty=examples_per_difficulty,
                         seed=seed, data_dir=data_dir)
  task = eval_builder.task
  levels = _difficulties(task, difficulty)
  prepare(eval_builder)
  # Built again after preparing: a builder made before the files existed (another process may
  # have written them meanwhile) does not read their metadata.
  eval_builder = AmpDebateEval(config=eval_builder.builder_config.name,
                               version=str(eval_builder.version),
                               data_dir=os.fspath(eval_builder.data_dir_root),
                               file_format="array_record")
  splits = {d: _read_split(eval_builder, d) for d in levels}
  version = str(eval_builder.version)
  return EvalSet(task=task, name=f"{DATASET_NAME}/{eval_builder.builder_config.name}:{version}",
                 version=version, path=os.fspath(eval_builder.data_dir), splits=splits)


# ---- CLI --------------------------------------------------------------------------------------
def summary(eval_set: EvalSet, num_show: int = 3) -> str:
  """Split sizes, version, path and a few pretty-printed examples per split."""
  lines = [f"{eval_set.name}  (version {eval_set.version})", f"path: {eval_set.path}"]
  for d, split in eval_set.splits.items():
    lines.append(f"{split_name(d)}: {len(split['index'])} examples")
    for question, answer in zip(split["question"][:num_show], split["answer"][:num_show]):
      lines.append(f"  {eval_set.task.format_question(question)}  ->  "
                   f"{eval_set.task.format_answer(answer)}")
  return "\n".join(lines)


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module runs
  as the program: the trainer imports it). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("task", None, f"Task name ({', '.join(tasks_lib.names())}) or "
                      "amp_debate_eval/<config>.", **define)
  flags.DEFINE_multi_string("option", [], "Task option as key=value (repeatable), e.g. "
                            "--option n=8.", **define)
  flags.DEFINE_integer("examples_per_difficulty", DEFAULT_EXAMPLES_PER_DIFFICULTY,
                       "Questions per difficulty level.", **define)
  flags.DEFINE_integer("seed", DEFAULT_SEED, "Generation seed.", **define)
  flags.DEFINE_string("data_dir", None, f"Default: ${DATA_DIR_ENV} or ~/tensorflow_datasets.",
                      **define)
  flags.DEFINE_integer("num_show", 3, "Examples printed per split.", **define)
  flags.mark_flag_as_required("task", flag_values=values)
  return values


def _usage_error(message: str):
  """A user mistake (bad flag, task, option or name): one line on stderr, exit code 2."""
  sys.stderr.write(f"eval_sets: error: {message}\n")
  sys.exit(2)


def execute(values: flags.FlagValues) -> None:
  """Builds (or loads) the set the parsed flags ``values`` name and prints its summary."""
  try:
    eval_set = load(values.task, options=options_lib.parse(values.option),
                    examples_per_difficulty=values.examples_per_difficulty, seed=values.seed,
                    data_dir=values.data_dir)
  except ValueError as e:  # bad task, option or name: a usage error, not a crash
    _usage_error(str(e))
  print(summary(eval_set, values.num_show))


def command_line(argv: Sequence[str]) -> None:
  """The command line run in this process: ``argv`` are its arguments (no program name), parsed
  into flags of their own (absl's global FLAGS untouched)."""
  values = define_flags(flags.FlagValues())
  cli.parse(values, ["eval_sets", *argv], error=_usage_error)
  execute(values)


def main(argv: Sequence[str]) -> None:
  """absl's main: the flags are parsed into FLAGS already."""
  del argv  # cli.parse refused stray arguments
  execute(flags.FLAGS)


def run_main() -> None:
  cli.run(define_flags, main, error=_usage_error)


if __name__ == "__main__":
  run_main()
