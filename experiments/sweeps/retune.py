"""Supervised recipe re-tune at the issue-27 sizes (issue 29): the three tasks whose runlocal
recipe no longer reaches 95% held out (permutation 0.364, assignments 0.898, shortest path 0.562
at the worst level, experiments/results/task_suite_supervised.md), each with more steps (the
cosine decay follows num_steps) and, where the curve was flat, more depth or width. One seed:
this picks a recipe to measure with three seeds, it is not the measurement.

  python -m amp_debate.sweep --sweep=experiments/sweeps/retune.py \
      --config=experiments/configs/default.py:mode=supervised,runlocal --workdir=workdir/retune \
      --parallel=2
"""

from amp_debate import sweep


def _width(d):
  return {"model.d_model": [d], "model.d_ff": [4 * d]}


def get_sweep():
  return sweep.chain(
      # Level 2 (k = 3, 4) flat at 0.30-0.37 from step 500 to 1500: more steps, more depth, width.
      sweep.product({"task": ["permutation"], "num_steps": [5000]}),
      sweep.product({"task": ["permutation"], "num_steps": [4000], "model.num_layers": [6]}),
      sweep.product({"task": ["permutation"], "num_steps": [4000]}, _width(128)),
      # Level 2 still rising at the end of 3,500 steps (0.88 -> 0.90 over the last 600).
      sweep.product({"task": ["assignments"], "num_steps": [7000]}),
      # Level 0 itself at 0.77 after 3,000 steps: width for the 256 neighbour-mask tokens' bits.
      sweep.product({"task": ["shortest_path"], "num_steps": [5000]}, _width(128)),
  )
