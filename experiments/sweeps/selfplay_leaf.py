"""Issue 28: does the self-play estimator learn where H decides every game by the truth? Pure
debate (λ_sup = 0, H never in a claim) on level 0 alone (leaf questions: H answers the node, so a
decided game's winner is the side whose claim is true), on-policy (M_target = M: no importance
ratio, no clipping), no assigned claims, 1,000 steps, three seeds. Arms: plain self-play (the
control), contest by construction (``debate.distinct_claims``), contest plus challenger exploration
(``debate.explore_prob`` 0.25), supervised training on the same questions (the reference), and an
entropy bonus of 0.1 (``step.entropy_coef``) alone and with contest by construction, and a KL anchor
of 0.1 to M at step 0 (``step.kl_anchor``) alone; and, with contest by construction, assigned claims
in half the games without and with crediting the assigned claim (``step.credit_assigned_claims``);
and plain self-play with half of each step's games against a league of four snapshots of M, one
taken every 50 steps (``step.league_size``, item 4 of issue 28).

  python -m amp_debate.sweep --sweep=experiments/sweeps/selfplay_leaf.py \
      --config=experiments/configs/default.py:task=permutation,mode=debate,quickstart \
      --workdir=workdir/selfplay_leaf --vmap=3
"""

from amp_debate import sweep

LEAF = {"curriculum.kind": "fixed", "curriculum.steps_per_level": 100_000,
        "debate.assign_prob": 0.0, "step.target_ema": 0.0, "num_steps": 1000,
        "eval.debates": False}
DISTINCT = {"debate.distinct_claims": True}
ENTROPY = {"step.entropy_coef": 0.1}
ASSIGNED = {"debate.assign_prob": 0.5}  # half the games with an assigned claim (the debate mode's)
# Arms added later come last, so that the earlier ones keep their run indices (and workdirs).
ARMS = ({}, DISTINCT, {**DISTINCT, "debate.explore_prob": 0.25}, {"mode": "supervised"},
        ENTROPY, {**DISTINCT, **ENTROPY}, {"step.kl_anchor": 0.1},
        {**DISTINCT, **ASSIGNED}, {**DISTINCT, **ASSIGNED, "step.credit_assigned_claims": True},
        # The league is for pure debate: the mode is named so the arm builds on any base config.
        {"mode": "debate", "step.league_size": 4, "step.league_every": 50,
         "step.league_games": 32})


def get_sweep():
  return sweep.chain(*[[dict(LEAF, **arm, seed=seed) for seed in (0, 1, 2)] for arm in ARMS])
