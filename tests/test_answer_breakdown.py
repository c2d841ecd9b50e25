"""experiments/answer_breakdown.py: accuracy by level and true answer, consistent with the
trainer's own evaluation."""

import jax
import numpy as np

import tiny
from amp_debate.data import eval_sets
from amp_debate.train import evaluation
from experiments import answer_breakdown


def test_breakdown_counts_every_question_and_matches_the_trainers_accuracy(tmp_path):
  task, model = tiny.TASK, tiny.MODEL
  # One program (eagerly, each layer's init ops compile on their own); the test compares two
  # readings of the same parameters, whichever they are.
  params = jax.jit(model.init)(jax.random.key(3))
  eval_set = eval_sets.load(task, examples_per_difficulty=16, data_dir=tmp_path)
  result = answer_breakdown.breakdown(task, model, params, eval_set, batch_size=16)
  eval_fn = jax.jit(evaluation.make_eval_fn(task, model, tiny.step_config(), with_debates=False))
  assert sorted(result) == sorted(eval_set.splits)
  for level, split in eval_set.splits.items():
    rows = result[level]
    assert sum(n for n, _ in rows.values()) == len(split["question"])
    expected = {task.tokenizer.decode(a) for a in split["answer"]}
    assert set(rows) == expected
    got = jax.device_get(eval_fn(params, split["question"], split["answer"],
                                 jax.random.key(0)))["accuracy/model"]
    assert sum(r for _, r in rows.values()) == int(np.round(got.sum()))
  assert "| level | true answer | questions | M right |" in answer_breakdown.table(result)
