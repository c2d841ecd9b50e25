"""Training: train state, jitted step, sharding, checkpointing, metrics, evaluation (side effects live here).

``run(config, workdir)`` and ``run_group(configs, workdirs)`` are the training loop (``trainer.py``);
``evaluation`` evaluates a run, ``reports`` writes its tables and summary, ``programs`` builds and
caches its compiled programs, ``restore`` loads checkpoints for other tools, ``config_lib``
validates configs and builds the objects they describe.
"""

from amp_debate.train.restore import load_state
from amp_debate.train.trainer import RunResult, TrainingDiverged, WorkdirError, run, run_group

__all__ = ["RunResult", "TrainingDiverged", "WorkdirError", "load_state", "run", "run_group"]
