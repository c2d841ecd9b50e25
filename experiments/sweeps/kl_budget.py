"""The KL-budget study's runs: π_safe, then a fine-tune from it without and with the budget.

  python -m experiments.kl_budget_study --workdir=workdir/kl_budget_study   # the runs, the study
  python -m amp_debate.sweep --sweep=experiments/sweeps/kl_budget.py \
      --workdir=workdir/kl_budget_study          # the runs alone, in order (not --parallel)

Runs (``experiments/configs/default.py:task=permutation,mode=M,quickstart``), named:
  safe    mode=amplification, ``safe_steps`` steps: π_safe (the end of an amplification-only
          phase; also the reference of ``python -m amp_debate.tools.kl_attack``).
  free    mode=``mode`` (default debate: pure self-play RL, which moves M most) from π_safe
          (``init_from``), ``phases`` x ``phase_steps`` steps, a checkpoint at every phase end,
          no budget.
  budget  the same with ``safety.kl_budget.reference`` = π_safe and the schedule
          ε_k = ``epsilon0`` x ``growth``^k.
The fine-tunes start from ``<workdir>/safe``: ``stage=safe`` and then ``stage=finetune`` run the
two stages (the study does; the second may run ``--parallel=2``); the default, ``stage=all``, all
three in order. A finished run is not rerun, whatever the sizes: change them in a new workdir.

``arg``: ``stage``, ``safe_steps`` (600), ``mode`` (debate), ``phases`` (4), ``phase_steps`` (50),
``epsilon0`` (0.01), ``growth`` (2.0), ``margin`` (0.1).
"""

from amp_debate import options

CONFIG = "experiments/configs/default.py:task=permutation,quickstart"
DEFAULTS = {"stage": "all", "safe_steps": 600, "mode": "debate", "phases": 4, "phase_steps": 50,
            "epsilon0": 0.01, "growth": 2.0, "margin": 0.1}


def parse(arg: str = "") -> dict:
  """The study's sizes (``DEFAULTS`` updated from ``arg``)."""
  sizes = dict(DEFAULTS, **options.parse(arg, keys=tuple(DEFAULTS), what="kl_budget sweep arg"))
  if sizes["stage"] not in ("all", "safe", "finetune"):
    raise ValueError(f"stage={sizes['stage']!r} is not one of all, safe, finetune")
  if sizes["mode"] not in ("hybrid", "debate"):
    raise ValueError(f"mode={sizes['mode']!r}: the fine-tune is hybrid or debate")
  return sizes


def get_sweep(arg: str = ""):
  s = parse(arg)
  safe = [{"name": "safe", "mode": "amplification", "num_steps": s["safe_steps"]}]
  finetune = {"mode": s["mode"], "num_steps": s["phases"] * s["phase_steps"],
              "init_from": "{workdir}/safe", "checkpoint.every": s["phase_steps"],
              "checkpoint.keep": s["phases"] + 1, "checkpoint.best_metric": "", "eval.every": 0,
              "log_every": 1}
  budget = {"safety.kl_budget.reference": "{workdir}/safe",
            "safety.kl_budget.phase_steps": s["phase_steps"],
            "safety.kl_budget.epsilon0": float(s["epsilon0"]),
            "safety.kl_budget.growth": float(s["growth"]),
            "safety.kl_budget.margin": float(s["margin"])}
  finetunes = [{"name": "free", **finetune}, {"name": "budget", **finetune, **budget}]
  return {"all": safe + finetunes, "safe": safe, "finetune": finetunes}[s["stage"]]
