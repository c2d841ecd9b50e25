"""Evaluation sets: offline TFDS build, exact regeneration, determinism, naming, no TensorFlow."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from amp_debate import tasks
from amp_debate.data import eval_sets

REPO = pathlib.Path(__file__).resolve().parents[1]
N = 16  # examples per difficulty in these tests


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def eval_set(data_dir):
  return eval_sets.load("permutation", examples_per_difficulty=N, data_dir=data_dir)


def assert_same_splits(a, b):
  assert sorted(a.splits) == sorted(b.splits)
  for d in a.splits:
    assert sorted(a.splits[d]) == sorted(b.splits[d])
    for key in a.splits[d]:
      np.testing.assert_array_equal(a.splits[d][key], b.splits[d][key], err_msg=f"{d}/{key}")


def test_content_equals_regeneration_with_task_sample(eval_set):
  """Each split is the first N distinct questions of rounds of evaluation-part draws."""
  task = tasks.get("permutation")
  assert sorted(eval_set.splits) == list(range(task.max_difficulty + 1))
  key = jax.random.key(eval_sets.DEFAULT_SEED, impl=eval_sets.PRNG_IMPL)
  for d, split in eval_set.splits.items():
    drawn = task.sample(jax.random.fold_in(jax.random.fold_in(key, d), 0), N, difficulty=d,
                        part="eval")
    questions = np.asarray(drawn.questions)
    _, first = np.unique(questions, axis=0, return_index=True)
    kept = questions[np.sort(first)]
    np.testing.assert_array_equal(split["question"][:len(kept)], kept)
    np.testing.assert_array_equal(split["answer"], np.asarray(task.batch_solve(split["question"])))
    np.testing.assert_array_equal(split["difficulty"], np.full(N, d))
    np.testing.assert_array_equal(split["index"], np.arange(N))
  # Global PRNG flags do not change the content (generation pins them).
  with jax.threefry_partitionable(not eval_sets.THREEFRY_PARTITIONABLE):
    again = eval_sets.generate(task, task.max_difficulty, N)
  np.testing.assert_array_equal(np.asarray(again.questions),
                                eval_set.splits[task.max_difficulty]["question"])


def test_splits_hold_distinct_evaluation_part_questions_only(eval_set):
  for d, split in eval_set.splits.items():
    assert np.asarray(tasks.base.is_eval_question(split["question"])).all(), d
    assert len(np.unique(split["question"], axis=0)) == N, d


def test_a_level_too_small_for_the_split_is_a_clear_error(tmp_path):
  # permutation n=3, k=1: 18 questions, about a quarter of them in the evaluation part.
  task = tasks.get("permutation", n=3, max_exponent=1)
  with pytest.raises(eval_sets.SpaceTooSmall, match=r"level 0 has only \d+ distinct evaluation"):
    eval_sets.generate(task, 0, 16)


def test_fields_shapes_ground_truth_and_difficulty(eval_set):
  task = eval_set.task
  for d, split in eval_set.splits.items():
    assert split["question"].shape == (N, task.question_len)
    assert split["answer"].shape == (N, task.answer_len)
    assert all(v.dtype == np.int32 for v in split.values())
    assert (split["difficulty"] == d).all()
    np.testing.assert_array_equal(split["answer"], np.asarray(task.batch_solve(split["question"])))
  batch = eval_set.batch(1)
  assert batch.questions.shape == (N, task.question_len) and (np.asarray(batch.difficulty) == 1).all()


def test_questions_differ_across_difficulties(eval_set):
  questions = [split["question"] for split in eval_set.splits.values()]
  assert not np.array_equal(questions[0], questions[1])


def test_reload_and_rebuild_elsewhere_are_identical(eval_set, data_dir, tmp_path):
  reloaded = eval_sets.load("permutation", examples_per_difficulty=N, data_dir=data_dir)
  assert_same_splits(eval_set, reloaded)
  rebuilt = eval_sets.load("permutation", examples_per_difficulty=N, data_dir=tmp_path)
  assert rebuilt.path.startswith(os.fspath(tmp_path))
  assert_same_splits(eval_set, rebuilt)


def test_version_name_and_path(eval_set, data_dir):
  assert eval_set.version == "2.0.0" == str(eval_sets.AmpDebateEval.VERSION)
  assert eval_set.name == "amp_debate_eval/permutation+examples_per_difficulty-16:2.0.0"
  assert eval_set.path == os.path.join(
      data_dir, "amp_debate_eval", "permutation+examples_per_difficulty-16", "2.0.0")
  metadata = json.loads(pathlib.Path(eval_set.path, "metadata.json").read_text())
  assert metadata["task"] == "permutation" and metadata["options"] == {"n": 8, "max_exponent": 8}
  assert metadata["seed"] == 0 and metadata["examples_per_difficulty"] == N


def test_config_names_are_canonical_and_parse_back():
  default = tasks.get("permutation")
  assert eval_sets.config_name(default) == "permutation"
  assert eval_sets.config_name(tasks.get("permutation", n=8, max_exponent=8)) == "permutation"
  custom = tasks.get("permutation", max_exponent=16)
  name = eval_sets.config_name(custom, seed=3)
  assert name == "permutation+max_exponent-16+n-8+seed-3"
  assert eval_sets.parse_config_name(name) == (custom, eval_sets.DEFAULT_EXAMPLES_PER_DIFFICULTY, 3)
  # Non-canonical spellings map to the same settings (so to the same directory).
  assert eval_sets.parse_config_name("permutation+max_exponent-16+seed-3") == (custom, 500, 3)
  assert eval_sets.get_config(custom, seed=3) is eval_sets.get_config(custom, seed=3)
  assert [c.name for c in eval_sets.AmpDebateEval.BUILDER_CONFIGS] == tasks.names()


def test_tfds_style_names(eval_set, data_dir):
  by_name = eval_sets.load(eval_set.name, data_dir=data_dir)
  assert by_name.name == eval_set.name
  assert_same_splits(eval_set, by_name)
  source = tfds.data_source(eval_set.name, split="difficulty_2", data_dir=data_dir, download=False)
  assert len(source) == N
  assert {int(source[i]["index"]) for i in range(N)} == set(range(N))


def test_task_instance_options_and_difficulty_subset(tmp_path):
  task = tasks.get("permutation", n=4, max_exponent=2)
  loaded = eval_sets.load(task, difficulty=1, examples_per_difficulty=4, data_dir=tmp_path)
  assert loaded.name == "amp_debate_eval/permutation+max_exponent-2+n-4+examples_per_difficulty-4:2.0.0"
  assert list(loaded.splits) == [1] and loaded.task == task
  assert loaded.splits[1]["question"].shape == (4, task.question_len)
  by_options = eval_sets.load("permutation", options={"n": 4, "max_exponent": 2}, difficulty=[0, 1],
                              examples_per_difficulty=4, data_dir=tmp_path)
  np.testing.assert_array_equal(by_options.splits[1]["question"], loaded.splits[1]["question"])


def test_data_dir_from_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(eval_sets.DATA_DIR_ENV, os.fspath(tmp_path))
  assert eval_sets.default_data_dir() == os.fspath(tmp_path)
  assert os.fspath(eval_sets.builder("permutation").data_dir).startswith(os.fspath(tmp_path))
  monkeypatch.delenv(eval_sets.DATA_DIR_ENV)
  assert eval_sets.default_data_dir() == os.path.expanduser("~/tensorflow_datasets")


@pytest.mark.parametrize("name", ["nosuch", "amp_debate_eval/nosuch", "amp_debate_eval/nosuch+n-3"])
def test_unknown_task_is_a_clear_value_error(name, tmp_path):
  with pytest.raises(ValueError, match="unknown task 'nosuch'.*available tasks: .*permutation"):
    eval_sets.load(name, data_dir=tmp_path)
  assert not list(tmp_path.iterdir())  # nothing was written


def test_bad_arguments_are_value_errors(tmp_path):
  with pytest.raises(ValueError, match=r"permutation.n must be in \[2, 64\], got 99"):
    eval_sets.builder("permutation", options={"n": 99}, data_dir=tmp_path)
  with pytest.raises(ValueError, match="malformed field 'n8'"):
    eval_sets.builder("amp_debate_eval/permutation+n8", data_dir=tmp_path)
  with pytest.raises(ValueError, match="only accepted with a task name"):
    eval_sets.builder(tasks.get("permutation"), options={"n": 4}, data_dir=tmp_path)
  with pytest.raises(ValueError, match="examples_per_difficulty must be >= 1, got 0"):
    eval_sets.builder("permutation", examples_per_difficulty=0, data_dir=tmp_path)
  with pytest.raises(ValueError, match="seed must be an integer"):
    eval_sets.builder("amp_debate_eval/permutation+seed-0.5", data_dir=tmp_path)
  with pytest.raises(ValueError, match=r"difficulty \[7\] out of range"):
    eval_sets.load("permutation", difficulty=7, examples_per_difficulty=4, data_dir=tmp_path)
  assert not list(tmp_path.iterdir())  # arguments are checked before anything is built


def test_cli_builds_prints_and_never_imports_tensorflow(tmp_path):
  script = textwrap.dedent(f"""
      import runpy, sys
      sys.argv = ["eval_sets", "--task", "permutation", "--option", "max_exponent=4", "--option", "n=5",
                  "--examples_per_difficulty", "8", "--num_show", "1",
                  "--data_dir", {os.fspath(tmp_path)!r}]
      try:
        runpy.run_module("amp_debate.data.eval_sets", run_name="__main__", alter_sys=True)
      except SystemExit as e:  # absl's app.run ends with sys.exit
        assert not e.code, e.code
      import amp_debate.data.eval_sets  # a normal import after the CLI must still register
      print("tensorflow imported:", "tensorflow" in sys.modules)
  """)
  python_path = os.pathsep.join([os.fspath(REPO), os.environ.get("PYTHONPATH", "")])
  env = dict(os.environ, PYTHONPATH=python_path)
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  config = "permutation+max_exponent-4+n-5+examples_per_difficulty-8"
  assert f"amp_debate_eval/{config}:2.0.0  (version 2.0.0)" in out
  assert "difficulty_2: 8 examples" in out and "difficulty_3" not in out and "σ^k(x)?" in out
  assert "tensorflow imported: False" in out
  assert (tmp_path / "amp_debate_eval" / config / "2.0.0").is_dir()


def test_cli_reports_bad_arguments_as_usage_errors(capsys, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    eval_sets.command_line(["--task", "permutation", "--option", "n=99", "--data_dir",
                            os.fspath(tmp_path)])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "eval_sets: error: permutation.n must be in [2, 64], got 99\n"
  for argv, message in ((["--option", "n=4"], "flag --task=None: Flag --task must have a value "
                         "other than None."),
                        (["--task=permutation", "--num_shows=1"], "Unknown command line flag "
                         "'num_shows'. Did you mean: num_show ?"),
                        (["--task=permutation", "stray"], "unexpected arguments: stray")):
    with pytest.raises(SystemExit) as exit_info:
      eval_sets.command_line(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"eval_sets: error: {message}\n"


def test_full_name_is_the_name_load_cites(eval_set):
  """``full_name`` (what the study scripts cite without building the set) equals ``load``'s."""
  assert eval_sets.full_name(eval_set.task, N) == eval_set.name
  assert eval_sets.full_name(eval_set.task) != eval_set.name  # the size is part of the name


def test_processes_preparing_one_set_at_once_share_it(tmp_path):
  """A sweep's --parallel runs prepare the same eval set together: each gets the same arrays
  (before the lock, the second to finish failed on TFDS's rename, FileExistsError)."""
  import threading
  results, errors = [None, None], []

  def load(i):
    try:
      results[i] = eval_sets.load("wildcard", examples_per_difficulty=N, data_dir=tmp_path)
    except Exception as e:  # noqa: BLE001 -- reported below
      errors.append(e)

  threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors
  assert_same_splits(results[0], results[1])
  assert len(results[0].splits[0]["question"]) == N


def test_losing_the_final_rename_uses_the_winners_copy(tmp_path):
  """Where no lock reaches (a shared filesystem), the loser of the rename reuses the set."""
  first = eval_sets.builder("wildcard", examples_per_difficulty=N, data_dir=tmp_path)
  second = eval_sets.builder("wildcard", examples_per_difficulty=N, data_dir=tmp_path)

  def lose_the_race(**kwargs):
    first.download_and_prepare(**kwargs)  # the other process finishes first
    raise FileExistsError("Destination already exists.")

  second.download_and_prepare = lose_the_race
  eval_sets.prepare(second)
  loaded = eval_sets.load("wildcard", examples_per_difficulty=N, data_dir=tmp_path)
  assert len(loaded.splits[0]["question"]) == N
  broken = eval_sets.builder("wildcard", examples_per_difficulty=N, data_dir=tmp_path / "x")

  def fail(**kwargs):
    raise FileExistsError("something else exists")

  broken.download_and_prepare = fail
  with pytest.raises(FileExistsError):  # a FileExistsError with no dataset written is not hidden
    eval_sets.prepare(broken)
