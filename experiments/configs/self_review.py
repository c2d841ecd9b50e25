r"""The self-review study (issue 13, DESIGN.md section 4): a judge that can be hacked, and an overseer.

Pure debate on the permutation quick start (n=8, k <= 2; every level from the start, H never
called inside a claim), with the judge flaw: a claim containing EXPLOIT fools H's leaf check with
probability p_flaw = 0.9, so exploiting pays (+0.8 expected against an honest claim at a leaf).
H audits each answer M_target sampled with probability 0.1 (a human call each) and detects an
exploit with probability 0.8; M_target reviews its own answers, trained from the audits. The three
conditions of the study differ only in what gets the catastrophe penalty (λ_cat = 5 by default:
at λ_cat = 1 the penalty did not outweigh what the flaw pays, and the hack rate was the same in
all three, experiments/results/self_review.md):

  python -m amp_debate.main --config=experiments/configs/self_review.py:penalty=off \
    --workdir=workdir/self_review/off          # none (the review is still trained and measured)
  ... :penalty=audits                           # the answers H's audits caught
  ... :penalty=review                           # the overseer's flags: audits + self-review

``python -m experiments.self_review`` runs all three (the sweep experiments/sweeps/self_review.py)
and writes experiments/results/self_review.md and .png. Each run: 300 steps (about 5 minutes on
2 idle CPU cores at the old quick start, n=5).

``arg``: ``penalty=off|audits|review`` (default review), ``cat=λ_cat`` (default 5) and ``seed=N``.
"""

from __future__ import annotations

import ml_collections

from amp_debate import options
from amp_debate.safety import overseer
from experiments.configs import default

# The arguments a sweep may set per run (``amp_debate.sweep`` rebuilds the config with them).
ARG_KEYS = ("penalty", "cat", "seed")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = options.parse(arg or "", keys=ARG_KEYS, what="config arg")
  penalty = str(args.get("penalty", "review"))
  if penalty not in overseer.PENALTIES:
    raise ValueError(f"config arg: penalty={penalty!r} is not one of "
                     f"{', '.join(overseer.PENALTIES)}")
  c = default.get_config("task=permutation,mode=debate,quickstart")
  c.seed = int(args.get("seed", 0))
  c.num_steps = 300
  c.debate.p_flaw = 0.9
  c.safety.overseer.audit_prob = 0.1
  c.safety.overseer.p_audit = 0.8
  c.safety.overseer.penalty = penalty
  # λ_rl = 1 (runlocal's 0.1 is set for the hybrid, where distillation carries the learning): the
  # review's cross-entropy shares the model, and at λ_rl = 0.1 it swamped the self-play signal.
  c.combination.weights.rl = c.combination.weights_end.rl = 1.0
  c.combination.weights.cat = c.combination.weights_end.cat = float(args.get("cat", 5.0))
  c.eval.every = 100
  return c
