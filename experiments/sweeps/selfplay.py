"""Issue 28: which self-play remedy lets pure debate (λ_sup = 0, H never in a claim) learn.
Arms, three seeds each: plain self-play (the control), contest by construction
(``debate.distinct_claims``), per-question leave-one-out baselines over four debates of each
question (``step.advantage=rloo``), both, and the entropy bonus of 0.1 (the earlier remedy).
Not run as a sweep: single runs of its arms at both levels collapsed (BUILD_NOTES, "What limits
the estimator"); ``selfplay_leaf.py`` is the three-seed measurement on leaf questions.

  python -m amp_debate.sweep --sweep=experiments/sweeps/selfplay.py \
      --config=experiments/configs/default.py:task=permutation,mode=debate,quickstart \
      --workdir=workdir/selfplay
"""

from amp_debate import sweep

DISTINCT = {"debate.distinct_claims": True}
RLOO = {"step.advantage": "rloo", "step.debates_per_question": 4}
ARMS = ({}, DISTINCT, RLOO, {**DISTINCT, **RLOO}, {"step.entropy_coef": 0.1})


def get_sweep():
  return sweep.chain(*[[dict(arm, seed=seed) for seed in (0, 1, 2)] for arm in ARMS])
