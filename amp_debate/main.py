r"""Entry point: flags only, then ``amp_debate.train.run(config, workdir)``.

  python -m amp_debate.main --config=experiments/configs/default.py:task=permutation,quickstart \
      --workdir=workdir/quickstart

Rerunning the same command resumes from the latest checkpoint in ``--workdir``. A bad or missing
config file, a workdir that is a file or cannot be created, an incompatible or unreadable checkpoint,
or a diverged run (NaN/Inf) end with a one-line error and a non-zero exit code, never a traceback;
SIGTERM saves a checkpoint and exits with code 0.

``--reference`` names a JSON file of supervised accuracies by eval-set name (default: the repository's
``experiments/results/supervised_reference.json`` when it exists under the working directory); the
final table shows them as a "supervised (reference)" column when it holds the run's eval set.
"""

from __future__ import annotations

import json
import os

from absl import flags, logging
from ml_collections import config_flags

from amp_debate import cli, train

_DEFAULT_REFERENCE = os.path.join("experiments", "results", "supervised_reference.json")


def define_flags(values: flags.FlagValues = flags.FLAGS) -> flags.FlagValues:
  """The command line's flags, defined in ``values`` (absl's global FLAGS only when this module
  runs as the program, so importing it defines nothing). Returns ``values``."""
  config_flags.DEFINE_config_file("config", None, "Config file (path.py:arg).", flag_values=values,
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and logs.",
                      flag_values=values)
  flags.DEFINE_string(
      "reference", _DEFAULT_REFERENCE if os.path.isfile(_DEFAULT_REFERENCE) else None,
      "JSON file {eval-set name: {difficulty: accuracy}} shown as the table's supervised reference "
      f"column (default: {_DEFAULT_REFERENCE} if it exists here; empty for none).",
      flag_values=values)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=values)
  return values


def load_reference(path: str) -> dict:
  """The supervised reference file: {eval-set name: {str(difficulty): accuracy}}."""
  try:
    with open(path) as f:
      reference = json.load(f)
  except OSError as e:
    raise ValueError(f"cannot read --reference {path}: {e.strerror or e}") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"--reference {path} is not valid JSON: {e}") from None
  if not isinstance(reference, dict) or not all(isinstance(v, dict) for v in reference.values()):
    raise ValueError(f"--reference {path} must map eval-set names to {{difficulty: accuracy}}")
  return reference


def main(argv):
  """absl's main: the flags are parsed into FLAGS already (stray arguments refused)."""
  del argv
  values = flags.FLAGS
  if not values["verbosity"].present:  # Orbax and TFDS log every file at INFO; --verbosity=0 shows it
    logging.set_verbosity(logging.WARNING)
  try:
    reference = load_reference(values.reference) if values.reference else None
    train.run(values.config, values.workdir, reference=reference)
  except (ValueError, train.TrainingDiverged) as e:  # user-facing errors: a message, no traceback
    cli.fail(str(e))


def run_main():
  cli.run(define_flags, main, config=True)


if __name__ == "__main__":
  run_main()
