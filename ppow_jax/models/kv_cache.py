"""Static-shape KV cache with a per-row fill length.

Every row of a batch owns slots [0, lengths[b]). A forward over T new tokens writes them at
slots lengths[b] .. lengths[b]+T-1 (their RoPE positions too) and advances `lengths` by T.
Rolling back rejected draft tokens is just lowering `lengths`: stale slots past the length are
never attended to, because a query only sees committed slots and the new tokens it is given,
and they are overwritten before a later query reaches them.

Layout is head-major, [batch, kv_heads, max_len, head_dim] per layer, so attention reads each
(row, head) block contiguously. Two containers: one array stacked over layers (the `lax.scan`
forward over stacked weights) or a tuple of per-layer arrays (the unrolled decode forward over
`transformer.unstack`ed weights, whose in-place per-layer writes never copy the cache).
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class KVCache:
  k: jax.Array | tuple  # [layers, batch, kv_heads, max_len, head_dim] or per-layer tuple
  v: jax.Array | tuple
  lengths: jax.Array  # [batch] int32: number of committed slots per row.

  @classmethod
  def init(cls, cfg, batch_size: int, max_len: int, dtype=None, per_layer: bool = False
           ) -> "KVCache":
    dtype = dtype or cfg.jnp_dtype
    lengths = jnp.zeros((batch_size,), jnp.int32)
    shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
    if per_layer:
      zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
      return cls(k=zeros(), v=zeros(), lengths=lengths)
    shape = (cfg.num_layers, *shape)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype), lengths=lengths)

  @property
  def per_layer(self) -> bool:
    return isinstance(self.k, tuple)

  @property
  def max_len(self) -> int:
    return self.k[0].shape[2] if self.per_layer else self.k.shape[3]

  def with_lengths(self, lengths: jax.Array) -> "KVCache":
    """Commit or roll back: keep slots [0, lengths[b]) of each row."""
    return self.replace(lengths=jnp.asarray(lengths, jnp.int32))

  def rows(self, idx: jax.Array, lengths: jax.Array) -> "KVCache":
    """A cache whose row r copies row idx[r] of this one, truncated to lengths[r]."""
    take = lambda x: x[idx] if self.per_layer else x[:, idx]
    return KVCache(k=jax.tree.map(take, self.k), v=jax.tree.map(take, self.v),
                   lengths=jnp.asarray(lengths, jnp.int32))
