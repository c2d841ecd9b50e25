"""Target network kinds for M_target: Polyak averaging at two rates, a hard copy every 10 or 50
steps, and no target (M_target = M: Polyak with rate 0); hybrid, two seeds.

  python -m amp_debate.sweep --sweep=experiments/sweeps/target.py \
      --config=experiments/configs/default.py:task=permutation,quickstart --workdir=workdir/target
"""

from amp_debate import sweep


def get_sweep():
  kinds = sweep.chain(
      sweep.product({"step.target_period": [None]}, {"step.target_ema": [0.9, 0.99, 0.0]}),
      sweep.product({"step.target_period": [10, 50]}))
  return [dict(kind, seed=seed) for kind in kinds for seed in (0, 1)]
