"""λ annealing: the hybrid's objective weights moved linearly over the first half of the run toward
amplification (λ_rl -> 0) or toward debate (λ_sup -> 0), against constant weights; two seeds.

Uses the config's ``combination.weights`` -> ``combination.weights_end`` over
``combination.anneal_steps``. ``num_steps`` comes from the base config, so the anneal length is
set from it here for the quick start (600 steps) and runlocal recipes alike: pass ``--config`` as
usual; the half-run length below assumes the quick start's 600 steps (edit ``HALF`` for others).

  python -m amp_debate.sweep --sweep=experiments/sweeps/anneal.py \
      --config=experiments/configs/default.py:task=permutation,quickstart --workdir=workdir/anneal
"""

from amp_debate import sweep

HALF = 300


def get_sweep():
  constant = {"combination.anneal_steps": 0}
  to_amplification = {"combination.anneal_steps": HALF, "combination.weights.rl": 0.1,
                      "combination.weights_end.rl": 0.0}
  to_debate = {"combination.anneal_steps": HALF, "combination.weights.rl": 0.1,
               "combination.weights_end.rl": 1.0, "combination.weights_end.sup": 0.0}
  runs = [constant, to_amplification, to_debate]
  return [dict(run, mode="hybrid", seed=seed) for run in runs for seed in (0, 1)]
