"""The four modes (hybrid, amplification, debate, supervised), three seeds each.

  python -m amp_debate.sweep --sweep=experiments/sweeps/modes.py \
      --config=experiments/configs/default.py:task=shortest_path,runlocal --workdir=workdir/modes
"""

from amp_debate import sweep


def get_sweep():
  return sweep.product({"mode": ["hybrid", "amplification", "debate", "supervised"]},
                       {"seed": [0, 1, 2]})
