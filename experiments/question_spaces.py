"""Question-space sizes of every size used for results, next to what a run draws and the eval sets.

  python -m experiments.question_spaces   # writes experiments/results/question_spaces.md (~1 min)

Per task size (each runlocal recipe and the quick start) and level: the effective size of D's
question space (``amp_debate.data.question_space.estimate``, 100,000 draws), the questions a run
draws at most (steps x batch, over all levels), and the eval split (distinct evaluation-part
questions, never drawn in training: ``tests/test_held_out.py``).
"""

from __future__ import annotations

import os

from absl import flags

from amp_debate import cli, tasks
from amp_debate.data import eval_sets
from amp_debate.data import question_space
from amp_debate.tasks import base
from experiments.configs import default

OUT = os.path.join(os.path.dirname(__file__), "results", "question_spaces.md")
DRAWS = 100_000


def sizes():
  out = [(f"{name} runlocal", name, recipe) for name, recipe in sorted(default.RUNLOCAL.items())]
  return out + [("permutation quickstart (README main job)", "permutation", default.QUICKSTART)]


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line has no flags of its own (a stray argument is refused). Returns ``values``."""
  return values


def main(argv) -> None:
  """absl's main: writes the table."""
  del argv
  lines = [
      "# Question spaces (issue 27)", "",
      "Command: `python -m experiments.question_spaces`. Effective size of each level's question "
      f"space as D draws it (1 / Σ p², estimated from {DRAWS:,} draws of D; `>`: no two draws "
      "coincided, a 95% lower bound), the questions a run draws at most (num_steps × batch_size, "
      "over all levels), and the eval split: "
      f"{eval_sets.DEFAULT_EXAMPLES_PER_DIFFICULTY} distinct questions per level from the "
      f"evaluation part ({base.EVAL_BUCKETS} of {base.HASH_BUCKETS} hash buckets), which the "
      f"training sampler never draws (eval sets {eval_sets.AmpDebateEval.VERSION}).", "",
      "| size | options | level | effective space | distinct in draws | run draws (all levels) "
      "| space / run draws | eval split |",
      "|---|---|---|---|---|---|---|---|"]
  for label, name, recipe in sizes():
    task = tasks.get(name, **recipe.task_options)
    drawn = recipe.num_steps * recipe.batch_size
    for level in range(task.max_difficulty + 1):
      est = question_space.estimate(task, level, DRAWS)
      lines.append(f"| {label} | {recipe.task_options} | {level} | {est.text()} | "
                   f"{est.distinct:,} of {DRAWS:,} | {drawn:,} | {est.size() / drawn:.1f}x | "
                   f"{eval_sets.DEFAULT_EXAMPLES_PER_DIFFICULTY} |")
      print(lines[-1], flush=True)
  with open(OUT, "w") as f:
    f.write("\n".join(lines) + "\n")
  print(f"wrote {OUT}")


if __name__ == "__main__":
  cli.run(define_flags, main)
