"""Safety studies (DESIGN.md section 4): the judge flaw and its overseer, self-review, relaxed
adversarial training, a KL budget to a known-safe policy with an attack study, and drift analysis.

Pure code, like ``tasks``, ``models`` and ``procedure`` (``tests/test_layering.py``): ``catastrophe``,
the overseer, the adversary, the KL constraint, the KL attackers and bound (``kl_attack``) and the
drift measures (``drift``). The command lines that read checkpoints and write results are
``amp_debate.tools.kl_attack`` and ``amp_debate.tools.drift``.
"""
