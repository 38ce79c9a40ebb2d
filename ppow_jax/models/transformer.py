"""The decoder-only transformer (LLaMA / Qwen2 / Qwen3 / Mistral) as an NNX module over pure functions.

Layer weights are stacked along a leading `layers` axis and run with `lax.scan`, so compile time
does not grow with depth and a 70B model lowers as fast as a 2-layer one. `forward` is a pure
function of (params, tokens, cache); `Transformer` is the NNX container users hold.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from ppow_jax.models import rope
from ppow_jax.models.config import ModelConfig
from ppow_jax.models.kv_cache import KVCache

# Logical axes of every parameter; `ppow_jax.parallel.sharding` maps them onto a device mesh.
LOGICAL_AXES = {
    "embed": ("vocab", "embed"),
    "final_norm": ("norm",),
    "lm_head": ("embed", "vocab"),
    "layers/attn_norm": ("layers", "norm"),
    "layers/q_proj": ("layers", "embed", "q_heads"),
    "layers/k_proj": ("layers", "embed", "kv_heads"),
    "layers/v_proj": ("layers", "embed", "kv_heads"),
    "layers/o_proj": ("layers", "q_heads", "embed"),
    "layers/q_bias": ("layers", "q_heads"),
    "layers/k_bias": ("layers", "kv_heads"),
    "layers/v_bias": ("layers", "kv_heads"),
    "layers/q_norm": ("layers", "norm"),
    "layers/k_norm": ("layers", "norm"),
    "layers/mlp_norm": ("layers", "norm"),
    "layers/gate_proj": ("layers", "embed", "mlp"),
    "layers/up_proj": ("layers", "embed", "mlp"),
    "layers/down_proj": ("layers", "mlp", "embed"),
}

_NEG_INF = -1e30


class ModelOutput(NamedTuple):
  logits: jax.Array | None  # [B, T, V] float32
  cache: KVCache | None
  hidden: tuple[jax.Array, ...]  # residual stream after the layers named in `hidden_layers`
  last_hidden: jax.Array  # final-normed hidden state [B, T, H], the LM head's input


def layer_param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Shapes of one decoder layer's weights (stored stacked with a leading `num_layers` axis)."""
  h, hd, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
  q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
  shapes = {
      "attn_norm": (h,), "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
      "mlp_norm": (h,), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
  }
  if cfg.attention_bias:
    shapes.update(q_bias=(q,), k_bias=(kv,), v_bias=(kv,))
  if cfg.qk_norm:
    shapes.update(q_norm=(hd,), k_norm=(hd,))
  return shapes


def rms_norm(x, weight, eps):
  """RMSNorm computed in float32, cast back before the scale (as HF's LlamaRMSNorm)."""
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return weight * y.astype(x.dtype)


def attention(q, k, v, mask):
  """Grouped-query attention. q [B,T,Hq,D], k/v [B,S,Hkv,D], mask [B,T,S] -> [B,T,Hq*D]."""
  b, t, hq, d = q.shape
  hkv = k.shape[2]
  q = q.reshape(b, t, hkv, hq // hkv, d)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
  scores = scores * (d ** -0.5)
  scores = jnp.where(mask[:, None, None], scores, _NEG_INF)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
  return out.reshape(b, t, hq * d)


def attention_mask(cfg, q_pos, k_pos, k_valid=None):
  """Causal (optionally sliding-window) mask [B,T,S] from query and key positions."""
  mask = k_pos[:, None, :] <= q_pos[:, :, None]
  if cfg.sliding_window:
    mask &= k_pos[:, None, :] > q_pos[:, :, None] - cfg.sliding_window
  if k_valid is not None:
    mask &= k_valid[:, None, :]
  return mask


def _decoder_layer(cfg, p, h, sin, cos, mask, cache_kv, write_start):
  """One pre-norm decoder layer. Returns new h and this layer's (k, v) cache rows."""
  b, t, _ = h.shape
  x = rms_norm(h, p["attn_norm"], cfg.rms_norm_eps)
  q, k, v = x @ p["q_proj"], x @ p["k_proj"], x @ p["v_proj"]
  if cfg.attention_bias:
    q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
  q = q.reshape(b, t, cfg.num_heads, cfg.head_dim)
  k = k.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
  v = v.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
  if cfg.qk_norm:
    q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
  q, k = rope.apply(q, sin, cos), rope.apply(k, sin, cos)
  if cache_kv is not None:
    # Write the new keys/values at each row's own offset, then attend over the whole cache.
    ck, cv = cache_kv
    put = jax.vmap(lambda c, x, s: jax.lax.dynamic_update_slice(c, x.astype(c.dtype), (s, 0, 0)))
    ck, cv = put(ck, k, write_start), put(cv, v, write_start)
    attn = attention(q, ck, cv, mask)
    new_kv = (ck, cv)
  else:
    attn = attention(q, k, v, mask)
    new_kv = None
  h = h + attn @ p["o_proj"]
  x = rms_norm(h, p["mlp_norm"], cfg.rms_norm_eps)
  h = h + (jax.nn.silu(x @ p["gate_proj"]) * (x @ p["up_proj"])) @ p["down_proj"]
  return h, new_kv


def forward(cfg: ModelConfig, params: dict, tokens: jax.Array, *, cache: KVCache | None = None,
            positions: jax.Array | None = None, key_valid: jax.Array | None = None,
            hidden_layers: Sequence[int] = (), return_logits: bool = True,
            input_embeds: jax.Array | None = None) -> ModelOutput:
  """Pure forward pass.

  tokens: [B, T] int. With `cache`, the tokens extend each row at slot `cache.lengths[b]` and the
  returned cache has `lengths + T` (callers lower it to roll back). Without a cache, `positions`
  (default arange) and `key_valid` ([B, T] padding flags) define the causal mask.
  hidden_layers: indices of residual-stream states to return; i is the state after i decoder
  layers (0 = embeddings), HF's `hidden_states[i]` for i < num_layers.
  """
  b, t = tokens.shape
  h = params["embed"][tokens] if input_embeds is None else input_embeds
  h = h.astype(cfg.jnp_dtype)
  if cache is not None:
    start = cache.lengths
    positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)[None]
    k_pos = jnp.broadcast_to(jnp.arange(cache.max_len, dtype=jnp.int32), (b, cache.max_len))
    mask = attention_mask(cfg, positions, k_pos)
  else:
    start = None
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = attention_mask(cfg, positions, positions, key_valid)
  sin, cos = rope.sin_cos(cfg, positions)

  hidden_layers = tuple(hidden_layers)
  for i in hidden_layers:
    if not 0 <= i <= cfg.num_layers:
      raise ValueError(f"hidden layer index {i} outside [0, {cfg.num_layers}]")
  captured0 = tuple(jnp.zeros_like(h) if i else h for i in hidden_layers)

  def body(carry, xs):
    h, captured = carry
    p, kv, idx = xs
    h, new_kv = _decoder_layer(cfg, p, h, sin, cos, mask, kv, start)
    # Keep the state after layer idx+1 where it was asked for (a select, cheap next to matmuls).
    captured = tuple(jnp.where(idx + 1 == i, h, c) for i, c in zip(hidden_layers, captured))
    return (h, captured), new_kv

  kv_xs = (cache.k, cache.v) if cache is not None else None
  xs = (params["layers"], kv_xs, jnp.arange(cfg.num_layers))
  (h, captured), new_kv = jax.lax.scan(body, (h, captured0), xs)

  if cache is not None:
    cache = KVCache(k=new_kv[0], v=new_kv[1], lengths=cache.lengths + t)
  last = rms_norm(h, params["final_norm"], cfg.rms_norm_eps)
  logits = None
  if return_logits:
    head = params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]
    logits = (last @ head).astype(jnp.float32)
  return ModelOutput(logits=logits, cache=cache, hidden=captured, last_hidden=last)


class DecoderLayers(nnx.Module):
  """All decoder layers' weights, stacked on a leading `layers` axis."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    for name, shape in layer_param_shapes(cfg).items():
      shape = (cfg.num_layers, *shape)
      if name.endswith("norm"):
        value = jnp.ones(shape, cfg.jnp_dtype)
      elif name.endswith("bias"):
        value = jnp.zeros(shape, cfg.jnp_dtype)
      else:
        value = (0.02 * jax.random.normal(rngs.params(), shape)).astype(cfg.jnp_dtype)
      setattr(self, name, nnx.Param(value))


class Transformer(nnx.Module):
  """Causal LM. `model(tokens, cache=...)` -> ModelOutput; see `forward`."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    h, v = cfg.hidden_size, cfg.vocab_size
    self.embed = nnx.Param((0.02 * jax.random.normal(rngs.params(), (v, h))).astype(cfg.jnp_dtype))
    self.layers = DecoderLayers(cfg, rngs=rngs)
    self.final_norm = nnx.Param(jnp.ones((h,), cfg.jnp_dtype))
    if not cfg.tie_word_embeddings:
      self.lm_head = nnx.Param((0.02 * jax.random.normal(rngs.params(), (h, v))).astype(cfg.jnp_dtype))

  def params(self) -> dict:
    """The weights as a plain nested dict of arrays (the `forward` params pytree)."""
    return nnx.to_pure_dict(nnx.state(self, nnx.Param))

  def __call__(self, tokens, **kw) -> ModelOutput:
    return forward(self.cfg, self.params(), tokens, **kw)

  def init_cache(self, batch_size: int, max_len: int) -> KVCache:
    return KVCache.init(self.cfg, batch_size, max_len)
