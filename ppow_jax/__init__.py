"""ppow_jax: train speculative-decoding drafters with PPOW in JAX/Flax."""

__version__ = "0.1.0"
