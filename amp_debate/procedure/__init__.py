"""The procedure: amplification (Amp, Amp′), debate rollouts, losses and their optax combinations."""
