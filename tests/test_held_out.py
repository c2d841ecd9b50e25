"""Held out by construction (DESIGN.md section 2): the trainer's sampler never draws a question of the
eval sets, on every task at every level, at every size the results use."""

import jax
import numpy as np
import pytest

from amp_debate import tasks
from amp_debate.data import eval_sets
from amp_debate.tasks import base
from amp_debate.train import step as step_lib
from experiments.configs import default

# Training questions drawn per level. 20,000 (was 100,000: 171 s of the suite's CPU): from D itself
# they still hit 35 of the quickstart space's 500 level-0 eval questions (162 at 100,000; the
# control test below), and a sampler that ignored the split would put a share of its draws in the
# eval part at any size (``is_eval_question`` below).
DRAWS = 20_000
SIZES = [(name, recipe.task_options) for name, recipe in sorted(default.RUNLOCAL.items())]
SIZES.append(("permutation", default.QUICKSTART.task_options))


def rows(questions: np.ndarray) -> set[bytes]:
  return {q.tobytes() for q in np.ascontiguousarray(questions, np.int32)}


@pytest.mark.parametrize("name,options", SIZES, ids=[f"{n}-{o}" for n, o in SIZES])
def test_training_sampler_never_draws_an_eval_question(name, options):
  task = tasks.get(name, **options)
  levels = task.max_difficulty + 1
  # The trainer's own sampler, with the top level open: every level gets its share of draws.
  sample = jax.jit(lambda key: step_lib.sample_batch(task, key, DRAWS * levels, task.max_difficulty))
  drawn = jax.device_get(sample(jax.random.key(123)))
  questions, difficulty = np.asarray(drawn.questions), np.asarray(drawn.difficulty)
  assert not np.asarray(base.is_eval_question(questions)).any()
  for level in range(levels):
    at_level = questions[difficulty == level]
    assert len(at_level) > 0.9 * DRAWS, (level, len(at_level))
    split = np.asarray(eval_sets.generate(task, level, eval_sets.DEFAULT_EXAMPLES_PER_DIFFICULTY)
                       .questions)
    assert len(rows(split)) == len(split)  # no repeats in the eval split
    assert not rows(split) & rows(at_level), (name, level)


def test_the_same_draws_from_d_itself_do_hit_the_eval_split():
  """The control: without the split (part="any"), a small space's eval questions are drawn."""
  task = tasks.get("permutation", **default.QUICKSTART.task_options)
  split = np.asarray(eval_sets.generate(task, 0, eval_sets.DEFAULT_EXAMPLES_PER_DIFFICULTY).questions)
  anywhere = task.sample(jax.random.key(123), DRAWS, difficulty=0, part="any")
  assert rows(split) & rows(np.asarray(anywhere.questions))


def test_parts_split_the_space_in_the_stated_share():
  task = tasks.get("permutation", n=8)
  drawn = np.asarray(task.sample(jax.random.key(0), 20_000, part="any").questions)
  share = np.asarray(base.is_eval_question(drawn)).mean()
  assert abs(share - base.EVAL_BUCKETS / base.HASH_BUCKETS) < 0.02
  # The hash is a function of the tokens only: the same question in any batch, jnp or numpy.
  np.testing.assert_array_equal(np.asarray(base.question_hash(drawn[:5])),
                                np.asarray(jax.jit(base.question_hash)(drawn[:5])))


def test_options_too_small_to_split_are_refused():
  with pytest.raises(ValueError, match="too small to hold out evaluation questions"):
    tasks.get("permutation", n=2, max_exponent=1).check_parts()
  tasks.get("permutation", n=5, max_exponent=2).check_parts()  # both parts present
