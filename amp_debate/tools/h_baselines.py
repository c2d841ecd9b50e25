"""What H can do without a trained M, measured on the fixed eval split: the floor every run must beat.

  python -m amp_debate.tools.h_baselines --config=experiments/configs/default.py:task=permutation \
      --workdir=workdir/h_baselines

Per difficulty level: accuracy of H alone (direct answers, exact only at leaves), of Amp(H, H alone)
(one level of decomposition), and of Amp(H, oracle) (a check: must be 100%), with H calls per
question.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import tqdm
from absl import flags
from ml_collections import config_flags

from amp_debate import cli, tasks
from amp_debate.data import eval_sets
from amp_debate.procedure.amplify import amplify, human_alone_fn, oracle_fn

COLUMNS = ("difficulty", "questions", "H alone", "Amp(H, H alone)", "Amp(H, oracle)",
           "H calls / question")


def evaluate_level(task: tasks.Task, questions: np.ndarray, answers: np.ndarray, seed: int = 0) -> dict:
  """Accuracies on one difficulty level. questions int32[N, Lq], answers int32[N, La]."""
  key = jax.random.key(seed)

  @jax.jit
  def measure(q, a):
    exact = lambda pred: (pred == a).all(-1).mean()
    alone = human_alone_fn(task)(q, key)
    amp_alone = amplify(task, human_alone_fn(task), q, key)
    amp_oracle = amplify(task, oracle_fn(task), q, key)
    return dict(alone=exact(alone), amp_alone=exact(amp_alone.answers),
                amp_oracle=exact(amp_oracle.answers),
                calls=amp_oracle.human_calls / q.shape[0])

  return {k: float(v) for k, v in measure(questions, answers).items()}


def format_table(rows: list[dict], version: str) -> str:
  """Markdown table of the per-level results."""
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for r in rows:
    lines.append(f"| {r['difficulty']} | {r['questions']} | {r['alone']:.1%} | {r['amp_alone']:.1%} | "
                 f"{r['amp_oracle']:.1%} | {r['calls']:.2f} |")
  lines.append(f"\nEval set: {version}.")
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Evaluates H's baselines on the config's task; prints and saves the table. Returns the rows."""
  task = tasks.get(config.task, **dict(config.task_options))
  os.makedirs(workdir, exist_ok=True)
  data = eval_sets.load(task, data_dir=config.eval.data_dir or None,
                        examples_per_difficulty=config.eval.examples_per_difficulty)
  rows = []
  for level in tqdm.tqdm(sorted(data.splits), desc=f"{task.name}: H baselines", unit="level"):
    split = data.splits[level]
    row = evaluate_level(task, split["question"], split["answer"], seed=config.seed)
    rows.append(dict(difficulty=level, questions=len(split["question"]), **row))
  table = format_table(rows, data.name)
  print(table)
  with open(os.path.join(workdir, "h_baselines.md"), "w") as f:
    f.write(f"# H baselines: {task.name} {task.options()}\n\n{table}\n")
  return rows


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program). Returns ``values``."""
  config_flags.DEFINE_config_file("config", None, "Config file (path.py:arg).", flag_values=values)
  flags.DEFINE_string("workdir", None, "Directory for the table.", flag_values=values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=values)
  return values


def main(argv):
  """absl's main: the flags are parsed into FLAGS already (stray arguments refused)."""
  del argv
  run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
  cli.run(define_flags, main, config=True)
