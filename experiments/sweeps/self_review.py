"""The self-review study (issue 13): what gets the catastrophe penalty, at each λ_cat.

  python -m experiments.self_review --workdir=workdir/self_review   # this sweep, then the table
  python -m amp_debate.sweep --sweep=experiments/sweeps/self_review.py --workdir=workdir/self_review

Runs ``experiments/configs/self_review.py:penalty=<p>,cat=<λ_cat>`` (pure debate with the judge
flaw, audits and the overseer; its docstring) for every penalty at every λ_cat, λ_cat-major.

``arg``: ``cats=1+5`` (the λ_cat values, default 1+5), ``penalties=off+audits+review`` (default:
every one of ``overseer.PENALTIES``), ``seed=N`` (default 0).
"""

from amp_debate import options, sweep
from amp_debate.safety import overseer

CONFIG = "experiments/configs/self_review.py"


def parse(arg: str = "") -> dict:
  """{"cats": [floats], "penalties": [...], "seed": N} from ``arg``; unknown penalties refused."""
  parsed = options.parse(arg, keys=("cats", "penalties", "seed"), what="self-review sweep arg")
  try:
    cats = [float(x) for x in str(parsed.get("cats", "1+5")).split("+") if x]
  except ValueError:
    raise ValueError(f"cats: not numbers joined by '+': {parsed['cats']!r}") from None
  penalties = [p for p in str(parsed.get("penalties", "+".join(overseer.PENALTIES))).split("+")
               if p]
  for p in penalties:
    if p not in overseer.PENALTIES:
      raise ValueError(f"penalty {p!r} is not one of {', '.join(overseer.PENALTIES)}")
  return {"cats": cats, "penalties": penalties, "seed": int(parsed.get("seed", 0))}


def get_sweep(arg: str = ""):
  sizes = parse(arg)
  return sweep.product({"cat": sizes["cats"]}, {"penalty": sizes["penalties"]},
                       {"seed": [sizes["seed"]]})
