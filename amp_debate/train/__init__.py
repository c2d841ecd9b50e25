"""Training: train state, jitted step, sharding, checkpointing, metrics, evaluation (side effects live here)."""
