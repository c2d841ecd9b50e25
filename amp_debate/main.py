r"""Entry point: flags only, then ``amp_debate.train.run(config, workdir)``.

  python -m amp_debate.main --config=experiments/configs/default.py:task=permutation,runlocal \
      --workdir=workdir/quickstart

Rerunning the same command resumes from the latest checkpoint in ``--workdir``. A bad config, an
incompatible or unreadable checkpoint, or a diverged run (NaN/Inf) end with a one-line error and a
non-zero exit code, never a traceback; SIGTERM saves a checkpoint and exits with code 0.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from amp_debate import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path.py:arg).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # Orbax and TFDS log every file at INFO; --verbosity=0 shows it
    logging.set_verbosity(logging.WARNING)
  try:
    train.run(_CONFIG.value, _WORKDIR.value)
  except (ValueError, train.TrainingDiverged) as e:  # user-facing errors: a message, no traceback
    sys.exit(f"error: {e}")


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with user mistakes in --config reported as one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # errors raised by the config file itself (e.g. a bad task name)
    sys.exit(f"error: {str(e).strip().splitlines()[-1]}")
  except (AttributeError, KeyError) as e:  # --config.x.y=v naming a field that does not exist
    sys.exit(f"error: a --config override names a field the config does not have: {e}")


def run_main():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run_main()
