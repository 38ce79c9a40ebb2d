"""Static-shape KV cache with a per-row fill length.

Every row of a batch owns slots [0, lengths[b]). A forward over T new tokens writes them at
slots lengths[b] .. lengths[b]+T-1 (their RoPE positions too) and advances `lengths` by T.
Rolling back rejected draft tokens is just lowering `lengths`: stale slots past the length are
never attended to, because a query at position p only sees keys at slots <= p, and they are
overwritten before a later query reaches them.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
  k: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
  v: jax.Array  # [layers, batch, max_len, kv_heads, head_dim]
  lengths: jax.Array  # [batch] int32: number of committed slots per row.

  @classmethod
  def init(cls, cfg, batch_size: int, max_len: int, dtype=None) -> "KVCache":
    dtype = dtype or cfg.jnp_dtype
    shape = (cfg.num_layers, batch_size, max_len, cfg.num_kv_heads, cfg.head_dim)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
               lengths=jnp.zeros((batch_size,), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.k.shape[2]

  def with_lengths(self, lengths: jax.Array) -> "KVCache":
    """Commit or roll back: keep slots [0, lengths[b]) of each row."""
    return self.replace(lengths=jnp.asarray(lengths, jnp.int32))
