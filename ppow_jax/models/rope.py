"""Rotary position embeddings (default, linear and Llama-3.1 frequency scaling)."""

import math

import jax.numpy as jnp
import numpy as np


def inverse_frequencies(cfg) -> np.ndarray:
  """Per-pair inverse frequencies, as `transformers.modeling_rope_utils` computes them."""
  dim = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
  if cfg.rope_linear_factor:
    inv = inv / cfg.rope_linear_factor
  if cfg.rope_llama3:
    # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the band between
    # smoothly interpolated (Meta's reference implementation).
    factor, low, high, old_ctx = cfg.rope_llama3
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(np.float32)


def sin_cos(cfg, positions):
  """sin/cos tables [..., head_dim] for integer positions [...]."""
  freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inverse_frequencies(cfg))
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.sin(emb), jnp.cos(emb)


def apply(x, sin, cos):
  """Rotates x [B, T, heads, head_dim] by the half-split convention HF checkpoints use."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  sin, cos = sin[:, :, None, :], cos[:, :, None, :]
  return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)
