"""Issue 28: does the shaped combination learn, and does its β change what a run does? The shaped
combination trains by the debate's reward minus β times each sampled answer's disagreement with
its Amp′ target (no distillation loss); in the ablation (``experiments/results/ablation.md``, one
seed each, β = 0.5 and 0) it collapsed exactly like pure debate. Here it runs with the remedies
that made pure debate learn: on-policy (``step.target_ema`` 0), contest by construction, supports
completed from their claims, no assigned claims; H called in claims with probability 0.3 (where
the Amp′ targets come from); β = 0 (the debate reward alone), 0.5 and 2; seeds 0 and 1; 600
steps. β is data in the train state, so the runs of a seed share one compiled step.

  python -m amp_debate.sweep --sweep=experiments/sweeps/shaped.py \
      --config=experiments/configs/default.py:task=permutation,quickstart \
      --workdir=workdir/shaped --vmap=3
"""

from amp_debate import sweep

BASE = {"combination.kind": "shaped", "debate.call_prob": 0.3, "debate.assign_prob": 0.0,
        "step.target_ema": 0.0, "debate.distinct_claims": True, "debate.complete_supports": True,
        "num_steps": 600, "eval.every": 200}


def get_sweep():
  return sweep.chain(*[[dict(BASE, **{"combination.beta": beta}, seed=seed)
                        for beta in (0.0, 0.5, 2.0)] for seed in (0, 1)])
