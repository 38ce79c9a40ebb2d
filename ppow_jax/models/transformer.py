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

from ppow_jax.models import cpu_kernels, rope
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
  """Grouped-query attention. q [B,T,Hq,D], k/v head-major [B,Hkv,S,D] (the cache layout: batch
  and head lead, so neither product needs a transposed copy of the cache), mask [B,T,S]
  -> [B,T,Hq*D]."""
  b, t, hq, d = q.shape
  hkv = k.shape[1]
  g = hq // hkv
  # Rows (group member, query) share each KV head: [B, Hkv, G*T, D].
  qg = q.reshape(b, t, hkv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, hkv, g * t, d)
  scores = jnp.einsum("bkqd,bksd->bkqs", qg, k.astype(qg.dtype),
                      preferred_element_type=jnp.float32) * (d ** -0.5)
  m = jnp.broadcast_to(mask[:, None, None], (b, 1, g, t, mask.shape[-1])).reshape(b, 1, g * t, -1)
  probs = jax.nn.softmax(jnp.where(m, scores, _NEG_INF), axis=-1)
  out = jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), v)
  return out.reshape(b, hkv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, hq * d)


def attention_mask(cfg, q_pos, k_pos, k_valid=None):
  """Causal (optionally sliding-window) mask [B,T,S] from query and key positions."""
  mask = k_pos[:, None, :] <= q_pos[:, :, None]
  if cfg.sliding_window:
    mask &= k_pos[:, None, :] > q_pos[:, :, None] - cfg.sliding_window
  if k_valid is not None:
    mask &= k_valid[:, None, :]
  return mask


def cache_mask(cfg, lengths, max_len: int, positions, self_mask=None):
  """Mask [B,T,S] of T new tokens, written at slots lengths[b].., over the whole cache.

  A new token sees every committed slot (s < lengths[b], where slot = position) and, among the
  new slots, itself and its predecessors (causal) or, with `self_mask` [B,T,T] (a draft tree's
  ancestor mask), the new tokens it marks. A wider `self_mask` [B,T,W] (W > T) governs the last W
  slots, the T new ones preceded by W-T written earlier (a tree's nodes from previous draft
  steps, as EAGLE's `tree_mask`); only slots before those count as committed. Sliding windows
  compare positions (a slot not among the new tokens counts as at position = slot).
  """
  b, t = positions.shape
  slots = jnp.arange(max_len, dtype=jnp.int32)
  rel = slots[None, :] - lengths[:, None]  # [B, S]: index among the new tokens
  if self_mask is None:
    self_mask = jnp.tril(jnp.ones((t, t), bool))
  w = self_mask.shape[-1]
  self_mask = jnp.broadcast_to(self_mask, (b, t, w))
  win = rel if w == t else rel + (w - t)  # index among the last w slots
  in_win = (win >= 0) & (win < w)
  vis = jnp.take_along_axis(self_mask, jnp.broadcast_to(jnp.clip(win, 0, w - 1)[:, None, :],
                                                        (b, t, max_len)), axis=2)
  mask = (win < 0)[:, None, :] | (in_win[:, None, :] & vis)
  if cfg.sliding_window:
    in_new = (rel >= 0) & (rel < t)
    key_pos = jnp.where(in_new, jnp.take_along_axis(positions, jnp.clip(rel, 0, t - 1), axis=1),
                        slots[None, :])
    mask &= key_pos[:, None, :] > positions[:, :, None] - cfg.sliding_window
  return mask


def _project(cfg, p, h, sin, cos, dense):
  """Pre-norm q (rotated) and head-major k (rotated), v of one layer; `dense` is the product
  with a weight (`jnp.matmul`, or `cpu_kernels.dense` in the decode layout)."""
  b, t, _ = h.shape
  x = rms_norm(h, p["attn_norm"], cfg.rms_norm_eps)
  q, k, v = dense(x, p["q_proj"]), dense(x, p["k_proj"]), dense(x, p["v_proj"])
  if cfg.attention_bias:
    q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
  q = q.reshape(b, t, cfg.num_heads, cfg.head_dim)
  k = k.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
  v = v.reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
  if cfg.qk_norm:
    q = rms_norm(q, p["q_norm"], cfg.rms_norm_eps)
    k = rms_norm(k, p["k_norm"], cfg.rms_norm_eps)
  q, k = rope.apply(q, sin, cos), rope.apply(k, sin, cos)
  return q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def _finish_layer(cfg, p, h, attn, dense):
  h = h + dense(attn, p["o_proj"])
  x = rms_norm(h, p["mlp_norm"], cfg.rms_norm_eps)
  return h + dense(jax.nn.silu(dense(x, p["gate_proj"])) * dense(x, p["up_proj"]), p["down_proj"])


def _decoder_layer(cfg, p, h, sin, cos, mask, cache_kv, write_start, dense=jnp.matmul):
  """One pre-norm decoder layer. With a cache (this layer's head-major [B,Hkv,S,D] k, v), the
  new keys/values are written first, at each row's own offset, and the queries attend over the
  whole cache; returns (h, (k, v)): the updated cache, or the new entries without one."""
  q, k, v = _project(cfg, p, h, sin, cos, dense)
  if cache_kv is None:
    return _finish_layer(cfg, p, h, attention(q, k, v, mask), dense), (k, v)
  # Batched per-row writes; inside a loop XLA updates the buffers in place.
  put = jax.vmap(lambda c, x, s: jax.lax.dynamic_update_slice(c, x.astype(c.dtype), (0, s, 0)))
  ck, cv = put(cache_kv[0], k, write_start), put(cache_kv[1], v, write_start)
  return _finish_layer(cfg, p, h, attention(q, ck, cv, mask), dense), (ck, cv)


def is_unstacked(params: dict) -> bool:
  """True for decode-layout params: `layers` a tuple of per-layer dicts (see `unstack`)."""
  return isinstance(params["layers"], (tuple, list))


def unstack(params: dict) -> dict:
  """Decode-layout params: one dict of arrays per layer, and an explicit LM head.

  `forward` runs these with an unrolled Python loop over layers. On CPU that decodes ~1.5x
  faster at batch 32 than the `lax.scan` over stacked weights, which copies every layer's
  weight and cache slices per step. Where the CPU kernel is in use, each float32 matrix
  `cpu_kernels.dense` multiplies by (the layers' and the LM head) is stored packed
  (`cpu_kernels.pack`), so that a verification's K+1 rows read it once as one token's do;
  elsewhere matrices stay row-major [K, N]. Idempotent; costs one copy of the weights, made once
  per decoding run. Training keeps the stacked layout (compile time independent of depth).
  """
  if is_unstacked(params):
    return params

  def matrix(w):  # packed where `dense` will run the kernel on it, else as it is
    return cpu_kernels.pack(w) if cpu_kernels.packs(w) else w

  n = jax.tree.leaves(params["layers"])[0].shape[0]
  out = {k: v for k, v in params.items() if k not in ("layers", "lm_head")}
  out["layers"] = tuple({k: matrix(jnp.array(v[i])) for k, v in params["layers"].items()}
                        for i in range(n))
  # Tied: the transposed embedding (a new array: JAX's transpose copies), laid out once.
  out["lm_head"] = matrix(params["lm_head"] if "lm_head" in params
                          else jnp.asarray(params["embed"]).T)
  return out


def forward(cfg: ModelConfig, params: dict, tokens: jax.Array, *, cache: KVCache | None = None,
            positions: jax.Array | None = None, key_valid: jax.Array | None = None,
            hidden_layers: Sequence[int] = (), return_logits: bool = True,
            input_embeds: jax.Array | None = None, self_mask: jax.Array | None = None
            ) -> ModelOutput:
  """Pure forward pass, over stacked params (`lax.scan`) or `unstack`ed ones (unrolled layers).

  tokens: [B, T] int. With `cache`, the tokens are written at slots cache.lengths[b].. and see
  the committed slots below plus each other (causal, or `self_mask` [B, T, T] for a draft tree:
  node i sees node j iff j is i or an ancestor; [B, T, W] also covers W-T slots written just
  before them, see `cache_mask`); their positions default to lengths[b] +
  arange(T) (a tree passes prefix length + node depth). The returned cache has lengths + T
  (callers lower it to roll back, or move a tree's accepted path into place). Without a cache,
  `positions` (default arange) and `key_valid` ([B, T] padding flags) define the causal mask.
  hidden_layers: indices of residual-stream states to return; i is the state after i decoder
  layers (0 = embeddings), HF's `hidden_states[i]` for i < num_layers.
  """
  b, t = tokens.shape
  h = params["embed"][tokens] if input_embeds is None else input_embeds
  h = h.astype(cfg.jnp_dtype)
  if cache is not None:
    start = cache.lengths
    if positions is None:
      positions = start[:, None] + jnp.arange(t, dtype=jnp.int32)[None]
    mask = cache_mask(cfg, start, cache.max_len, positions, self_mask)
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

  if is_unstacked(params):
    captured = {0: h}
    new_k, new_v = [], []
    for i, p in enumerate(params["layers"]):
      kv = (cache.k[i], cache.v[i]) if cache is not None else None
      h, (k, v) = _decoder_layer(cfg, p, h, sin, cos, mask, kv, start, cpu_kernels.dense)
      new_k.append(k)
      new_v.append(v)
      captured[i + 1] = h
    captured = tuple(captured[i] for i in hidden_layers)
    if cache is not None:
      cache = KVCache(k=tuple(new_k), v=tuple(new_v), lengths=cache.lengths + t)
  else:
    captured0 = tuple(jnp.zeros_like(h) if i else h for i in hidden_layers)

    def body(carry, xs):
      h, captured = carry
      p, kv, idx = xs
      h, new_kv = _decoder_layer(cfg, p, h, sin, cos, mask, kv, start)
      # Keep the state after layer idx+1 where it was asked for (a select, cheap next to matmuls).
      captured = tuple(jnp.where(idx + 1 == i, h, c) for i, c in zip(hidden_layers, captured))
      return (h, captured), (new_kv if cache is not None else None)

    kv_xs = (cache.k, cache.v) if cache is not None else None
    xs = (params["layers"], kv_xs, jnp.arange(cfg.num_layers))
    (h, captured), new_kv = jax.lax.scan(body, (h, captured0), xs)
    if cache is not None:
      cache = KVCache(k=new_kv[0], v=new_kv[1], lengths=cache.lengths + t)

  last = rms_norm(h, params["final_norm"], cfg.rms_norm_eps)
  logits = lm_head(params, last) if return_logits else None
  return ModelOutput(logits=logits, cache=cache, hidden=captured, last_hidden=last)


def lm_head(params: dict, last_hidden: jax.Array) -> jax.Array:
  """float32 logits from final-normed states (`ModelOutput.last_hidden`); tied or not."""
  head = params["lm_head"] if "lm_head" in params else params["embed"].T
  dense = cpu_kernels.dense if is_unstacked(params) else jnp.matmul
  return dense(last_hidden, head).astype(jnp.float32)


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

  def init_cache(self, batch_size: int, max_len: int, per_layer: bool = False) -> KVCache:
    return KVCache.init(self.cfg, batch_size, max_len, per_layer=per_layer)
