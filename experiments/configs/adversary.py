r"""The quick start with relaxed adversarial training (``amp_debate.safety.adversary``).

  python -m amp_debate.main --config=experiments/configs/adversary.py --workdir=workdir/adversary

``default.py``'s config for ``arg`` (default ``task=permutation,mode=hybrid,quickstart``) with
``safety.adversary.weight = 1``: every update also runs the adversary (5 projected gradient steps in
a per-token l2 ball of radius 0.5 x M's RMS token-embedding norm around the embeddings of the
step's ANSWER prompts) and adds M's mean probability of arguing EXPLOIT at the points it found to
the catastrophe loss; ``adversary/p_cat`` and ``adversary/p_cat_clean`` are logged. Any field can be
overridden as in ``default.py`` (``--config.safety.adversary.radius=1.0``). The task here has no
planted weakness: this is the training-step integration (its cost, and what the adversary finds in
an ordinary M); ``python -m experiments.adversary_study`` is the study against a planted one
(experiments/results/adversary.md).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default.get_config(arg or "task=permutation,mode=hybrid,quickstart")
  c.safety.adversary.weight = 1.0
  return c
