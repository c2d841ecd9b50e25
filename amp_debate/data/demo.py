"""Task demo: sample questions, show H's decomposition of each and the ground truth.

  python -m amp_debate.data.demo --task=permutation --num=3 --option=n=6 --option=max_exponent=8

The subquestions are answered by an oracle (a perfect M), so the recombined answer must equal the
ground truth: this prints Amp(H, oracle)(q) next to solve(q).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import flags

from amp_debate import cli, options, tasks
from amp_debate.procedure.amplify import amplify, oracle_fn


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it for ``describe`` defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("task", "permutation", f"One of: {', '.join(tasks.names())}.", **define)
  flags.DEFINE_integer("num", 3, "How many questions to show.", **define)
  flags.DEFINE_integer("seed", 0, "PRNG seed.", **define)
  flags.DEFINE_integer("difficulty", None, "Only this difficulty level (default: any).",
                       **define)
  flags.DEFINE_multi_string("option", [], "Task option as key=value (repeatable).", **define)
  return values


def describe(task: tasks.Task, num: int, seed: int, difficulty: int | None = None) -> str:
  """Text showing ``num`` sampled questions with H's decomposition and the ground truth."""
  key = jax.random.key(seed)
  batch = jax.jit(task.sample, static_argnums=1)(key, num, difficulty=difficulty)
  out = jax.jit(lambda q, k: amplify(task, oracle_fn(task), q, k))(batch.questions, key)
  lines = [f"task {task.name} {task.options()}  (question length {task.question_len}, "
           f"answer length {task.answer_len}, vocabulary {task.vocab_size}, "
           f"difficulty 0..{task.max_difficulty})", ""]
  for b in range(num):
    lines.append(f"Q{b} [difficulty {int(batch.difficulty[b])}]: {task.format_question(batch.questions[b])}")
    if bool(out.is_leaf[b]):
      lines.append(f"    H answers alone (leaf): {task.format_answer(out.amplified[b])}")
    else:
      for i in np.flatnonzero(np.asarray(out.sub_valid[b])):
        lines.append(f"    sub {i}: {task.format_question(out.subquestions[b, i])}"
                     f"  -> M says {task.format_answer(out.subanswers[b, i])}")
      lines.append(f"    H recombines: {task.format_answer(out.amplified[b])}")
    lines.append(f"    ground truth: {task.format_answer(batch.answers[b])}")
  return "\n".join(lines)


def main(argv):
  """absl's main: the flags are parsed into FLAGS already (stray arguments refused)."""
  del argv
  values = flags.FLAGS
  try:
    task = tasks.get(values.task, **options.parse(values.option))
  except ValueError as e:
    cli.fail(str(e))
  print(describe(task, values.num, values.seed, values.difficulty))


def run_main():
  cli.run(define_flags, main)


if __name__ == "__main__":
  run_main()
