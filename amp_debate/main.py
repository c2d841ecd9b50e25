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
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from amp_debate import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py:arg).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and logs.")
_DEFAULT_REFERENCE = os.path.join("experiments", "results", "supervised_reference.json")
_REFERENCE = flags.DEFINE_string(
    "reference", _DEFAULT_REFERENCE if os.path.isfile(_DEFAULT_REFERENCE) else None,
    "JSON file {eval-set name: {difficulty: accuracy}} shown as the table's supervised reference "
    f"column (default: {_DEFAULT_REFERENCE} if it exists here; empty for none).")
flags.mark_flags_as_required(["config", "workdir"])


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
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # Orbax and TFDS log every file at INFO; --verbosity=0 shows it
    logging.set_verbosity(logging.WARNING)
  try:
    reference = load_reference(_REFERENCE.value) if _REFERENCE.value else None
    train.run(_CONFIG.value, _WORKDIR.value, reference=reference)
  except (ValueError, train.TrainingDiverged) as e:  # user-facing errors: a message, no traceback
    sys.exit(f"error: {e}")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with user mistakes in --config reported as one line instead of a traceback."""
  try:
    argv = flags.FLAGS(argv)
    _CONFIG.value.keys()  # ml_collections defers a failed load of the file to the first access
  except flags.Error as e:  # errors raised by the config file itself (e.g. a bad task name)
    sys.exit(f"error: {str(e).strip().splitlines()[-1]}")
  except (AttributeError, KeyError) as e:  # --config.x.y=v naming a field that does not exist
    sys.exit(f"error: a --config override names a field the config does not have: {e}")
  except OSError as e:  # a missing or unreadable --config file (the last line names the file)
    cause = re.sub(r"^\[Errno \d+\] ", "", str(e).strip().splitlines()[-1].strip())
    sys.exit(f"error: cannot load --config: {cause}")
  return argv


def run_main():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run_main()
