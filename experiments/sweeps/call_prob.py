"""How often the human is called: p in {1, 0.3, 0.1, 0.03}, in hybrid and amplification, two seeds.

  python -m amp_debate.sweep --sweep=experiments/sweeps/call_prob.py \
      --config=experiments/configs/default.py:task=permutation,quickstart --workdir=workdir/call_prob
"""

from amp_debate import sweep


def get_sweep():
  return sweep.product({"mode": ["hybrid", "amplification"]},
                       {"debate.call_prob": [1.0, 0.3, 0.1, 0.03]}, {"seed": [0, 1]})
