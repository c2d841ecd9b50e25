"""Safety studies (DESIGN.md section 4): the judge flaw and its overseer, self-review, relaxed
adversarial training, a KL budget to a known-safe policy with an attack study, and drift analysis.

The jitted parts (``catastrophe``, the overseer, the adversary, the KL constraint) are pure
functions; the command-line studies (``kl_attack``, ``drift``) read checkpoints and write results.
"""
