"""Issue 28, a diagnostic: does pure debate learn level 1 once M already answers level 0? Level-0
learning by self-play is slow and erratic (``selfplay_leaf``), and every earlier two-level run
stayed at chance at level 1; this sweep separates the two questions. Every run starts from the
same checkpoint, the supervised arm of ``selfplay_leaf`` (seed 0: 1.000 held out at level 0,
chance at level 1, trained on ground truth at level 0 only), then trains by pure debate
(λ_sup = 0, H never in a claim) on both levels mixed from the first step, on-policy, no assigned
claims, contest by construction, 1,000 steps. Arms: without and with a KL anchor (0.1) to that
checkpoint (``step.kl_anchor``: the reference is M at step 0, here the loaded checkpoint), which
should keep level 0 while level 1 is learned; and claims credited only in games whose outcome
tested them (``step.claim_credit=tested``: not in games a failed consistency check decided); and
supports completed from their claims (``debate.complete_supports``). Two
seeds (the seed moves the debates, not the
start). Not a pure-debate result: level 0 came from supervised learning. Run ``selfplay_leaf``
first (``python -m experiments.sweep_study --sweeps=selfplay_leaf``).

  python -m amp_debate.sweep --sweep=experiments/sweeps/selfplay_from_leaf.py \
      --config=experiments/configs/default.py:task=permutation,mode=debate,quickstart \
      --workdir=workdir/selfplay_from_leaf --vmap=2
"""

from amp_debate import sweep

START = ("workdir/sweep_study/selfplay_leaf/kind=fixed,steps_per_level=100000,assign_prob=0.0,"
         "target_ema=0.0,num_steps=1000,debates=False,mode=supervised,seed=0")
BASE = {"init_from": START, "curriculum.kind": "off", "debate.assign_prob": 0.0,
        "step.target_ema": 0.0, "debate.distinct_claims": True, "num_steps": 1000,
        "eval.every": 250}


def get_sweep():
  anchors = sweep.product({**{k: [v] for k, v in BASE.items()}},
                          {"step.kl_anchor": [0.0, 0.1]}, {"seed": [0, 1]})
  # Added after the first two arms ran (so their overrides, and names, stay as they were): claims
  # credited only where the outcome tested them (``step.claim_credit``).
  tested = sweep.product({**{k: [v] for k, v in BASE.items()}},
                         {"step.claim_credit": ["tested"]}, {"seed": [0, 1]})
  # Added after those (2026-12-07, second session): supports completed from their claims
  # (``debate.complete_supports``), so that the support check no longer decides the game and the
  # dispute tests the rows each side chose.
  complete = sweep.product({**{k: [v] for k, v in BASE.items()}},
                           {"debate.complete_supports": [True]}, {"seed": [0, 1]})
  return anchors + tested + complete
