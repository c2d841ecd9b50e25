"""Every task at its runlocal size: supervised, amplification-only and hybrid, one seed.

  python -m experiments.task_suite --workdir=workdir/task_suite   # this sweep, then the tables
  python -m amp_debate.sweep --sweep=experiments/sweeps/task_suite.py --workdir=workdir/task_suite

Each run is ``experiments/configs/default.py:task=<task>,mode=<mode>,runlocal`` (the task's
runlocal options and model recipe, ``default.RUNLOCAL``). Mode-major: every task's supervised run
first (the upper bound each column is read against).

``arg``: ``tasks=a+b`` (default: every registered task), ``modes=a+b`` (default
supervised+amplification+hybrid), ``seed=N`` (default 0).
"""

from amp_debate import options, sweep, tasks

CONFIG = "experiments/configs/default.py:runlocal"
MODES = ("supervised", "amplification", "hybrid")


def parse(arg: str = "") -> dict:
  """{"tasks": [...], "modes": [...], "seed": N} from ``arg``; unknown tasks or modes refused."""
  parsed = options.parse(arg, keys=("tasks", "modes", "seed"), what="task suite sweep arg")
  names = [t for t in str(parsed.get("tasks", "+".join(tasks.names()))).split("+") if t]
  modes = [m for m in str(parsed.get("modes", "+".join(MODES))).split("+") if m]
  for name in names:
    if name not in tasks.names():
      raise ValueError(f"unknown task {name!r} (known: {', '.join(tasks.names())})")
  for mode in modes:
    if mode not in MODES:
      raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
  return {"tasks": names, "modes": modes, "seed": int(parsed.get("seed", 0))}


def get_sweep(arg: str = ""):
  sizes = parse(arg)
  return sweep.product({"mode": sizes["modes"]}, {"task": sizes["tasks"]},
                       {"seed": [sizes["seed"]]})
