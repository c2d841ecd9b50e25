"""Training: train state, jitted step, sharding, checkpointing, metrics, evaluation (side effects live here).

``run(config, workdir)`` is the trainer (``trainer.py``); ``config_lib`` validates configs and builds
the objects they describe.
"""

from amp_debate.train.trainer import RunResult, TrainingDiverged, WorkdirError, load_state, run

__all__ = ["RunResult", "TrainingDiverged", "WorkdirError", "load_state", "run"]
