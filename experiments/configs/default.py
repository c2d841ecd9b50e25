r"""Default experiment config: one task, one mode.

Command (about 1 minute on 2 CPU cores today; the trainer arrives with issue 5):

  python -m amp_debate.main \
    --config=experiments/configs/default.py:task=permutation,mode=hybrid,runlocal \
    --workdir=workdir/quickstart

``arg`` is ``key=value,...`` with keys ``task`` (a registered task), ``mode``
(hybrid | amplification | debate | supervised) and the flag ``runlocal`` (a CPU-minutes run).
Any field can then be overridden with ``--config.field=value`` (e.g. ``--config.task_options.n=6``).
"""

from __future__ import annotations

import ml_collections

from amp_debate import tasks

MODES = ("hybrid", "amplification", "debate", "supervised")
ARG_KEYS = ("task", "mode", "runlocal")


def parse_arg(arg: str) -> dict[str, str | bool]:
  """'task=permutation,mode=hybrid,runlocal' -> {'task': 'permutation', 'mode': 'hybrid', 'runlocal': True}."""
  parsed: dict[str, str | bool] = {}
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, sep, value = item.partition("=")
    if key not in ARG_KEYS:
      raise ValueError(f"config arg: unknown key {key!r}; allowed keys: {', '.join(ARG_KEYS)}")
    parsed[key] = value if sep else True
  return parsed


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg)
  mode = args.get("mode", "hybrid")
  if mode not in MODES:
    raise ValueError(f"config arg: mode={mode!r} is not one of {', '.join(MODES)}")
  runlocal = bool(args.get("runlocal", False))

  config = ml_collections.ConfigDict()
  config.task = str(args.get("task", "permutation"))
  # The task's difficulty options, at its defaults (each overridable from the command line).
  config.task_options = ml_collections.ConfigDict(tasks.get(config.task).options())
  config.mode = mode
  config.runlocal = runlocal
  config.seed = 0
  # Evaluation on the task's TFDS eval split (amp_debate.tasks.eval_sets).
  config.eval = ml_collections.ConfigDict()
  config.eval.data_dir = ""  # "" -> $AMP_DEBATE_DATA_DIR or ~/tensorflow_datasets
  config.eval.examples_per_difficulty = 200 if runlocal else 500
  return config
