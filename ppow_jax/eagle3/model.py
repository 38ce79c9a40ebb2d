"""The EAGLE-3 drafter: one decoder layer over [token embedding; fused target feature].

Architecture as in SafeAILab/EAGLE `eagle/model/cnets.py` (EAGLE-3 `Model` and
`LlamaDecoderLayeremb`), vLLM `model_executor/models/llama_eagle3.py` and SpecForge
`specforge/modeling/draft/llama3_eagle.py`:

  feature  = fc(concat(h_low, h_mid, h_high))           # 3*H_target -> H, no bias
  x        = concat(input_layernorm(embed(token)), hidden_norm(feature))   # 2H
  h        = feature + o_proj(attention(q/k/v_proj(x)))  # residual = the *un-normed* feature
  h        = h + mlp(post_attention_layernorm(h))        # SiLU-gated MLP
  logits   = lm_head(norm(h))                            # over the draft vocabulary

`h` (before the final norm) is what later draft steps feed back in place of the fused
feature (EAGLE `topK_genrate`, SpecForge `Eagle3Model` TTT loop: `hidden_states = backbone(..)`;
vLLM's `LlamaModel.forward` returns it as `hidden_prenorm`). vLLM's optional
`norm_before_residual` (speculators checkpoints) takes the residual after `hidden_norm` instead.
The token embedding is the target's, shared and frozen, so it is an argument, not a parameter.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from ppow_jax.models import rope
from ppow_jax.models.config import SUPPORTED_DTYPES, ConfigError, ModelConfig
from ppow_jax.models.kv_cache import KVCache
from ppow_jax.models.transformer import attention, attention_mask, cache_mask, rms_norm

# Logical axes of the trainable weights (see ppow_jax.parallel.sharding).
LOGICAL_AXES = {
    "fc": ("fused", "embed"),
    "midlayer/input_layernorm": ("norm",),
    "midlayer/hidden_norm": ("norm",),
    "midlayer/q_proj": ("fused", "q_heads"),
    "midlayer/k_proj": ("fused", "kv_heads"),
    "midlayer/v_proj": ("fused", "kv_heads"),
    "midlayer/o_proj": ("q_heads", "embed"),
    "midlayer/post_attention_layernorm": ("norm",),
    "midlayer/gate_proj": ("embed", "mlp"),
    "midlayer/up_proj": ("embed", "mlp"),
    "midlayer/down_proj": ("mlp", "embed"),
    "norm": ("norm",),
    "lm_head": ("embed", "draft_vocab"),
}

# Logits outside the draft vocabulary: finite, so a softmax over them stays NaN-free.
NEG_LOGIT = -1e30


def default_aux_layers(num_target_layers: int) -> tuple[int, int, int]:
  """vLLM/SGLang's default capture points (2, L//2, L-3), clamped into [1, L] and sorted.

  Index i is the residual stream after i target decoder layers (ppow's `hidden_layers`
  convention), which is what vLLM captures: `aux_hidden_states.append(hidden_states + residual)`
  just before running layer i (vllm/model_executor/models/llama.py). SpecForge's equivalent
  default `[1, L//2 - 1, L - 4]` names the *output* of layer j, i.e. the same states.
  """
  n = num_target_layers
  if n < 1:
    raise ConfigError(f"target has num_layers={n}; EAGLE-3 needs at least one target layer")
  return tuple(sorted(min(max(i, 1), n) for i in (2, n // 2, n - 3)))


@dataclasses.dataclass(frozen=True)
class Eagle3Config:
  """Static description of an EAGLE-3 drafter; hashable so it can be a static jit argument."""

  hidden_size: int = 64
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  intermediate_size: int = 172
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_llama3: tuple[float, float, float, int] | None = None  # as ModelConfig.rope_llama3
  rope_linear_factor: float | None = None
  vocab_size: int = 512  # the target's vocabulary
  draft_vocab_size: int = 512
  target_hidden_size: int = 64
  aux_layers: tuple[int, int, int] = (1, 1, 2)  # residual stream after i target layers
  dtype: str = "float32"
  sliding_window: int | None = None
  num_layers: int = 1
  norm_before_residual: bool = False  # vLLM option: residual taken after hidden_norm.
  max_position_embeddings: int = 2048

  def __post_init__(self):
    if self.num_layers != 1:
      raise ConfigError(f"EAGLE-3 drafter: num_layers={self.num_layers}; only 1 (the midlayer) "
                        "is supported")
    if self.dtype not in SUPPORTED_DTYPES:
      raise ConfigError(f"EAGLE-3 drafter: unsupported dtype {self.dtype!r}; "
                        f"supported: {', '.join(SUPPORTED_DTYPES)}")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(f"EAGLE-3 drafter: num_heads={self.num_heads} is not a multiple of "
                        f"num_kv_heads={self.num_kv_heads}")
    if not 1 <= self.draft_vocab_size <= self.vocab_size:
      raise ConfigError(f"EAGLE-3 drafter: draft_vocab_size={self.draft_vocab_size} must be in "
                        f"[1, vocab_size={self.vocab_size}]")
    aux = tuple(self.aux_layers)
    if len(aux) != 3 or any(not isinstance(i, int) or i < 1 for i in aux):
      raise ConfigError(f"EAGLE-3 drafter: aux_layers={self.aux_layers!r} must be 3 target layer "
                        "indices >= 1 (index i = residual stream after i decoder layers)")
    object.__setattr__(self, "aux_layers", aux)

  @property
  def jnp_dtype(self):
    return SUPPORTED_DTYPES[self.dtype]

  def replace(self, **kw) -> "Eagle3Config":
    return dataclasses.replace(self, **kw)

  def check_target(self, target: ModelConfig, source: str = "EAGLE-3 drafter"):
    """Raises ConfigError unless this drafter can run on `target`'s vocabulary and hidden states."""
    if target.vocab_size != self.vocab_size:
      raise ConfigError(f"{source}: drafter vocab_size={self.vocab_size} differs from the target's "
                        f"vocab_size={target.vocab_size}")
    if target.hidden_size != self.target_hidden_size:
      raise ConfigError(f"{source}: drafter target_hidden_size={self.target_hidden_size} differs "
                        f"from the target's hidden_size={target.hidden_size}")
    if max(self.aux_layers) > target.num_layers:
      raise ConfigError(f"{source}: aux_layers={self.aux_layers} exceed the target's "
                        f"num_layers={target.num_layers}")

  @classmethod
  def from_target(cls, target: ModelConfig, draft_vocab_size: int | None = None,
                  **overrides) -> "Eagle3Config":
    """A drafter shaped like one layer of `target` (EAGLE-3's usual choice), default aux layers."""
    kw = dict(
        hidden_size=target.hidden_size, num_heads=target.num_heads,
        num_kv_heads=target.num_kv_heads, head_dim=target.head_dim,
        intermediate_size=target.intermediate_size, rms_norm_eps=target.rms_norm_eps,
        rope_theta=target.rope_theta, rope_llama3=target.rope_llama3,
        rope_linear_factor=target.rope_linear_factor, vocab_size=target.vocab_size,
        draft_vocab_size=target.vocab_size if draft_vocab_size is None else draft_vocab_size,
        target_hidden_size=target.hidden_size, aux_layers=default_aux_layers(target.num_layers),
        dtype=target.dtype, max_position_embeddings=target.max_position_embeddings)
    kw.update(overrides)
    return cls(**kw)


def param_shapes(cfg: Eagle3Config) -> dict:
  """Shapes of the trainable weights, in ppow's [in, out] layout (x @ W)."""
  h, hd, i = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
  q, kv = cfg.num_heads * hd, cfg.num_kv_heads * hd
  return {
      "fc": (3 * cfg.target_hidden_size, h),
      "midlayer": {
          "input_layernorm": (h,), "hidden_norm": (h,),
          "q_proj": (2 * h, q), "k_proj": (2 * h, kv), "v_proj": (2 * h, kv), "o_proj": (q, h),
          "post_attention_layernorm": (h,),
          "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
      },
      "norm": (h,),
      "lm_head": (h, cfg.draft_vocab_size),
  }


class DraftOutput(NamedTuple):
  logits: jax.Array  # [B, T, draft_vocab_size] float32
  hidden: jax.Array  # [B, T, H] pre-final-norm state: the next step's `features`
  cache: KVCache | None


def fuse(params: dict, aux_hidden) -> jax.Array:
  """Target features -> drafter feature [B, T, H]: fc(concat(low, mid, high)).

  aux_hidden: the three [B, T, H_target] states in `aux_layers` order, or their concatenation.
  """
  if isinstance(aux_hidden, (tuple, list)):
    aux_hidden = jnp.concatenate(aux_hidden, axis=-1)
  w = params["fc"]
  if aux_hidden.shape[-1] != w.shape[0]:
    raise ValueError(f"fuse: aux hidden width {aux_hidden.shape[-1]} != 3*target_hidden_size "
                     f"= {w.shape[0]}")
  return aux_hidden.astype(w.dtype) @ w


def project(cfg: Eagle3Config, p: dict, emb: jax.Array, feat: jax.Array, sin, cos):
  """Midlayer input side: rotated q, k and v from [input_layernorm(emb); hidden_norm(feat)], and
  the residual stream (the un-normed feature, or the normed one with norm_before_residual)."""
  b, t, _ = emb.shape
  normed_feat = rms_norm(feat, p["hidden_norm"], cfg.rms_norm_eps)
  residual = normed_feat if cfg.norm_before_residual else feat
  x = jnp.concatenate([rms_norm(emb, p["input_layernorm"], cfg.rms_norm_eps), normed_feat], -1)
  q = (x @ p["q_proj"]).reshape(b, t, cfg.num_heads, cfg.head_dim)
  k = (x @ p["k_proj"]).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
  v = (x @ p["v_proj"]).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
  return rope.apply(q, sin, cos), rope.apply(k, sin, cos), v, residual


def finish(cfg: Eagle3Config, params: dict, residual: jax.Array, attn: jax.Array):
  """Midlayer output side: o_proj + residual, the MLP block, then logits and the pre-norm state."""
  p = params["midlayer"]
  h = residual + attn @ p["o_proj"]
  y = rms_norm(h, p["post_attention_layernorm"], cfg.rms_norm_eps)
  h = h + (jax.nn.silu(y @ p["gate_proj"]) * (y @ p["up_proj"])) @ p["down_proj"]
  logits = (rms_norm(h, params["norm"], cfg.rms_norm_eps) @ params["lm_head"]).astype(jnp.float32)
  return logits, h


def forward(cfg: Eagle3Config, params: dict, embed_table: jax.Array, tokens: jax.Array,
            features: jax.Array, cache: KVCache | None = None, positions: jax.Array | None = None,
            key_valid: jax.Array | None = None, self_mask: jax.Array | None = None) -> DraftOutput:
  """One drafter pass over T positions (pure).

  tokens [B, T] int (target ids, embedded with the shared `embed_table` [V, H]); features
  [B, T, H]: the fused target feature (`fuse`) or the drafter's own fed-back `hidden`.
  Cache semantics are the target's (`transformer.forward`): with `cache`, the T tokens follow
  each row's lengths[b] committed slots, are written at slots lengths[b].., and the returned
  cache has lengths + T (lower it to roll back); `positions` / `self_mask` as there (draft trees).
  Without a cache, `positions` (default arange) and `key_valid` ([B, T]) define the mask.
  """
  b, t = tokens.shape
  dt = cfg.jnp_dtype
  p = params["midlayer"]
  emb = embed_table[tokens].astype(dt)
  feat = features.astype(dt)
  if cache is not None:
    if positions is None:
      positions = cache.lengths[:, None] + jnp.arange(t, dtype=jnp.int32)[None]
    mask = cache_mask(cfg, cache.lengths, cache.max_len, positions, self_mask)
  else:
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = attention_mask(cfg, positions, positions, key_valid)
  sin, cos = rope.sin_cos(cfg, positions)

  q, k, v, residual = project(cfg, p, emb, feat, sin, cos)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # head-major, as the cache
  if cache is not None:
    # Write first, then attend over the whole cache (in place inside a loop; no cache copy).
    put = jax.vmap(lambda c, x, s: jax.lax.dynamic_update_slice(c, x.astype(c.dtype), (0, s, 0)))
    k, v = put(cache.k[0], k, cache.lengths), put(cache.v[0], v, cache.lengths)
    cache = KVCache(k=k[None], v=v[None], lengths=cache.lengths + t)
  attn = attention(q, k, v, mask)
  logits, h = finish(cfg, params, residual, attn)
  return DraftOutput(logits=logits, hidden=h, cache=cache)


def init_cache(cfg: Eagle3Config, batch_size: int, max_len: int) -> KVCache:
  """An empty drafter KV cache (one layer), same layout and semantics as the target's."""
  return KVCache.init(cfg, batch_size, max_len)


def draft_to_target_logits(d2t: jax.Array, draft_logits: jax.Array, vocab_size: int) -> jax.Array:
  """Scatters draft-vocabulary logits [..., Vd] to the target vocabulary [..., V].

  Draft id i is target id i + d2t[i] (EAGLE-3's `d2t` offsets; vLLM `compute_logits`).
  Target ids outside the draft vocabulary get NEG_LOGIT (finite, unlike vLLM's -inf).
  """
  draft_logits = draft_logits.astype(jnp.float32)
  target_ids = jnp.arange(d2t.shape[0], dtype=jnp.int32) + d2t.astype(jnp.int32)
  out = jnp.full((*draft_logits.shape[:-1], vocab_size), NEG_LOGIT, jnp.float32)
  return out.at[..., target_ids].set(draft_logits)


class VocabMap(nnx.Variable):
  """Non-trainable draft<->target vocabulary maps (`d2t`, `t2d`): excluded by nnx.Param filters."""


class Eagle3Drafter(nnx.Module):
  """EAGLE-3 drafter weights; `params()` is the pytree `forward` takes."""

  def __init__(self, cfg: Eagle3Config, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt = cfg.jnp_dtype

    def init(shape):
      if len(shape) == 1:  # RMSNorm scales.
        return nnx.Param(jnp.ones(shape, dt))
      return nnx.Param((0.02 * jax.random.normal(rngs.params(), shape)).astype(dt))

    shapes = param_shapes(cfg)
    self.fc = init(shapes["fc"])
    self.midlayer = nnx.Dict({k: init(s) for k, s in shapes["midlayer"].items()})
    self.norm = init(shapes["norm"])
    self.lm_head = init(shapes["lm_head"])
    # Default maps: the first draft_vocab_size target ids (identity when the vocabularies match).
    self.d2t = VocabMap(jnp.zeros((cfg.draft_vocab_size,), jnp.int32))
    self.t2d = VocabMap(jnp.arange(cfg.vocab_size) < cfg.draft_vocab_size)

  def params(self) -> dict:
    """The trainable weights as a plain nested dict (the `forward` params pytree)."""
    return nnx.to_pure_dict(nnx.state(self, nnx.Param))

  def set_vocab_maps(self, d2t, t2d):
    """Installs maps from `ppow_jax.eagle3.vocab.build_vocab_maps` (shapes are checked)."""
    d2t, t2d = jnp.asarray(d2t, jnp.int32), jnp.asarray(t2d, jnp.bool_)
    if d2t.shape != (self.cfg.draft_vocab_size,) or t2d.shape != (self.cfg.vocab_size,):
      raise ValueError(f"vocab maps have shapes d2t {d2t.shape}, t2d {t2d.shape}; expected "
                       f"({self.cfg.draft_vocab_size},) and ({self.cfg.vocab_size},)")
    self.d2t[...] = d2t
    self.t2d[...] = t2d

  def fuse(self, aux_hidden) -> jax.Array:
    return fuse(self.params(), aux_hidden)

  def __call__(self, embed_table, tokens, features, **kw) -> DraftOutput:
    return forward(self.cfg, self.params(), embed_table, tokens, features, **kw)

  def to_target_logits(self, draft_logits) -> jax.Array:
    return draft_to_target_logits(self.d2t[...], draft_logits, self.cfg.vocab_size)

  def init_cache(self, batch_size: int, max_len: int) -> KVCache:
    return init_cache(self.cfg, batch_size, max_len)

