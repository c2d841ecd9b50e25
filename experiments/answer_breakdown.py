r"""M's held-out accuracy by level and by true answer, from a run's latest checkpoint.

  python -m experiments.answer_breakdown --workdir=workdir/run [--out=FILE.md]

Where a level's accuracy sits on a plateau, this says which answers M gets and which it does not
(e.g. experiments/results/retune/shortest_path_breakdown.md: at level 0, every a = b question
right, 51% of those where b neighbours a). M answers greedily, as in the trainer's
evaluation, on the run's own eval set (``eval.examples_per_difficulty`` questions per level).
"""

from __future__ import annotations

import collections

import jax
import numpy as np
from absl import flags

from amp_debate import cli
from amp_debate.data import eval_sets
from amp_debate.procedure.model_player import ModelDebater
from amp_debate.train import config_lib, restore


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program: importing it for ``breakdown`` defines nothing). Returns ``values``."""
  define = dict(flag_values=values)
  flags.DEFINE_string("workdir", None, "A run's directory (with checkpoints/).", **define)
  flags.DEFINE_string("out", "", "Also write the table to this file.", **define)
  flags.DEFINE_integer("batch_size", 250, "Questions per greedy pass.", **define)
  flags.mark_flag_as_required("workdir", flag_values=values)
  return values


def breakdown(task, model, params, eval_set, batch_size: int) -> dict[int, dict[str, tuple]]:
  """level -> {answer text: (questions, right)} for M's greedy answers on every split."""
  answer = jax.jit(lambda p, q: ModelDebater(model=model, params=p, task=task, temperature=1.0,
                                             greedy=True).answer(q, jax.random.key(0)).tokens)
  out = {}
  for level, split in sorted(eval_set.splits.items()):
    questions, answers = split["question"], split["answer"]
    predicted = np.concatenate([np.asarray(answer(params, questions[i:i + batch_size]))
                                for i in range(0, len(questions), batch_size)])
    right = (predicted == answers).all(-1)
    counts = collections.defaultdict(lambda: [0, 0])
    for a, ok in zip(answers, right):
      key = task.tokenizer.decode(a)
      counts[key][0] += 1
      counts[key][1] += int(ok)
    out[level] = {k: tuple(v) for k, v in sorted(counts.items())}
  return out


def table(result: dict[int, dict[str, tuple]]) -> str:
  lines = ["| level | true answer | questions | M right |", "|---|---|---|---|"]
  for level, rows in result.items():
    for answer, (n, right) in rows.items():
      lines.append(f"| {level} | {answer} | {n} | {right / n:.3f} |")
  return "\n".join(lines)


def execute(args: flags.FlagValues) -> str:
  """The breakdown of the run the parsed flags ``args`` name, printed and returned."""
  state, config, step = restore.load_state(args.workdir)
  task = config_lib.make_task(config)
  model = config_lib.make_model(config, task)
  eval_set = eval_sets.load(task, examples_per_difficulty=config.eval.examples_per_difficulty,
                            data_dir=config.eval.data_dir or None)
  text = (f"{args.workdir}, step {step}, eval set {eval_set.name}\n\n"
          + table(breakdown(task, model, state.params, eval_set, args.batch_size)) + "\n")
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return text


def command_line(argv: list[str]) -> str:
  """The command line run in this process on flags of its own (absl's FLAGS untouched)."""
  return cli.command_line(define_flags, execute, argv, program="answer_breakdown")


def main(argv):
  """absl's main: the flags are parsed into FLAGS already."""
  del argv
  execute(flags.FLAGS)


if __name__ == "__main__":
  cli.run(define_flags, main)
