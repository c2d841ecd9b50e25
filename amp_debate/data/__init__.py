"""Data on disk: everything that reads or writes files for data lives here, above the pure tasks.

``eval_sets``: the TFDS dataset ``amp_debate_eval`` (fixed evaluation questions per task and
difficulty), its loader and CLI. ``mnist``: the MNIST loader (verified offline test split, or TFDS).
``demo``: a CLI that prints sampled questions with H's decomposition and the ground truth.

Import the submodules explicitly (``from amp_debate.data import eval_sets``): importing this package
loads neither TFDS nor JAX.
"""
