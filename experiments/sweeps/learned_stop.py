"""The learned stop on and off (hybrid and pure debate), two seeds; the table's debate length
column and each run's debate-length histogram (summary.json) show what the stop does.

  python -m amp_debate.sweep --sweep=experiments/sweeps/learned_stop.py \
      --config=experiments/configs/default.py:task=permutation,quickstart --workdir=workdir/stop
"""

from amp_debate import sweep


def get_sweep():
  return sweep.product({"mode": ["hybrid", "debate"]}, {"debate.learned_stop": [False, True]},
                       {"seed": [0, 1]})
