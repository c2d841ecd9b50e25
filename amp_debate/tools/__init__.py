"""Command-line tools above ``train/``: they load checkpoints, train their own small models, write
files and plots. Each runs as ``python -m amp_debate.tools.<name>`` with absl flags (as
``amp_debate.main``; the pattern and its helpers are ``amp_debate.cli``'s), defined only when it
runs, so importing a tool defines no flags.

  drift          how far two checkpoints of M differ, layer by layer (``safety.drift``'s measures)
  kl_attack      the KL attack study on a π_safe checkpoint (``safety.kl_attack``'s attackers)
  trained_liar   a copy of M fine-tuned to win the false side against frozen M
  mnist_judge    the sparse-pixel ImageJudge trainer (the MNIST debate's judge, no-debate baseline)
  mnist_debater  the learned sparse-pixel debater, trained by self-play against a saved judge
  h_baselines    what H alone, and Amp(H, H alone), reach on a config's eval split

Nothing under ``train/`` (or any layer below it) imports this package (``tests/test_layering.py``).
"""
