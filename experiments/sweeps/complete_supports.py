"""Issue 28: does pure debate learn both levels once the support check tests the rows a side chose?
In pure debate at level 1, nearly every game used to be decided by H's recombination check, which
M's supports failed whenever they did not repeat their own claim (``experiments/support_probe.py``),
so a root claim's reward said little about its truth. With ``debate.complete_supports`` the rows
a claim determines are set from it, the check passes by construction, and the dispute descends to
a row where the two sides differ, which H decides at the leaf.

Pure debate (λ_sup = 0, H never in a claim) from scratch on both levels mixed from the first step,
on-policy (``step.target_ema`` 0), contest by construction, no assigned claims, 1,500 steps, seeds
0, 1, 2; arms: without (the control) and with completed supports.

  python -m amp_debate.sweep --sweep=experiments/sweeps/complete_supports.py \
      --config=experiments/configs/default.py:task=permutation,mode=debate,quickstart \
      --workdir=workdir/complete_supports --vmap=3
"""

from amp_debate import sweep

BASE = {"debate.assign_prob": 0.0, "step.target_ema": 0.0, "debate.distinct_claims": True,
        "num_steps": 1500, "eval.every": 250}
ARMS = ({}, {"debate.complete_supports": True})


def get_sweep():
  return sweep.chain(*[[dict(BASE, **arm, seed=seed) for seed in (0, 1, 2)] for arm in ARMS])
