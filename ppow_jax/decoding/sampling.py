"""Turning logits into the distributions decoding samples from: temperature, top-k, top-p."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG = -1e30  # "minus infinity" that keeps softmax and arithmetic NaN-free.


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Static sampling settings, applied to target and drafter alike. temperature 0 = greedy."""
  temperature: float = 0.0
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def log_probs(logits: jax.Array, sp: SamplingParams) -> jax.Array:
  """Log-probabilities [..., V] of the processed distribution (for greedy: temperature 1)."""
  logits = logits.astype(jnp.float32)
  if not sp.greedy:
    logits = logits / sp.temperature
  if sp.top_k and sp.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, sp.top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG, logits)
  if sp.top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it < p.
    keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < sp.top_p
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
    logits = jnp.where(keep, logits, NEG)
  return jax.nn.log_softmax(logits, axis=-1)


def sample(rng: jax.Array, logits: jax.Array, sp: SamplingParams):
  """Draws tokens [...] and returns (tokens, processed log-probs [..., V])."""
  logp = log_probs(logits, sp)
  if sp.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), logp
  return jax.random.categorical(rng, logp, axis=-1).astype(jnp.int32), logp
