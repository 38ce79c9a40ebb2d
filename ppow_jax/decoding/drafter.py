"""The drafter interface the engine rolls out, and its plainest member: a separate small LM.

A drafter is a static Python object (hashable, passed to jit as static) with pure methods over
(params, state). The engine keeps the committed tokens in a buffer `buf` [B, S]; `pos[b]` is the
slot of the newest committed token (not yet in the target's cache). Each `propose` first ingests
the *fresh* slots [fresh_start, pos] that the drafter has not processed (after a verification:
the previous `last` and the accepted tokens), then drafts K tokens autoregressively, or (tree
decoding, `propose_tree`) a dynamic tree of `depth` steps (`ppow_jax.decoding.tree`).
`target_hidden` holds the target's requested hidden states for slots fresh_start ..
fresh_start+K (from the verification forward; along the accepted path for a tree), for
feature-level drafters such as EAGLE-3.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from ppow_jax.decoding import sampling
from ppow_jax.decoding import tree as draft_tree
from ppow_jax.models import transformer
from ppow_jax.models.config import ModelConfig
from ppow_jax.models.kv_cache import KVCache


class DraftContext(NamedTuple):
  buf: jax.Array  # [B, S] int32 committed tokens (slots > pos are scratch)
  pos: jax.Array  # [B] slot of the newest committed token
  fresh_start: jax.Array  # [B] first slot the drafter has not ingested
  target_hidden: tuple[jax.Array, ...]  # each [B, K+1, H]: target states at fresh_start..


class Drafter(Protocol):
  """What the engine needs from a drafter."""

  target_hidden_layers: tuple[int, ...]  # target states to pass along (() = none)
  vocab_size: int

  def init_state(self, params, batch_size: int, max_len: int) -> Any: ...

  def prefill(self, params, state, tokens: jax.Array, num_valid: jax.Array,
              target_hidden: tuple[jax.Array, ...]) -> Any:
    """Ingests slots [0, num_valid[b]) of the right-padded prompt `tokens` [B, P]."""

  def propose(self, params, state, ctx: DraftContext, rng: jax.Array, window: int,
              sp: sampling.SamplingParams) -> tuple[Any, jax.Array, jax.Array]:
    """-> (state, draft tokens [B, K], processed draft log-probs over the target vocab [B, K, V])."""

  def propose_tree(self, params, state, ctx: DraftContext, rng: jax.Array,
                   spec: draft_tree.TreeSpec, sp: sampling.SamplingParams
                   ) -> tuple[Any, draft_tree.Tree]:
    """-> (state, a draft tree rooted at the token in slot pos, built by `tree.build`)."""

  def commit_tree(self, params, state, tr: draft_tree.Tree, path: jax.Array,
                  pos: jax.Array) -> Any:
    """The state after the tree's path [B, depth+1] (node indices) was committed at slots pos.."""


def window_slice(x: jax.Array, start: jax.Array, size: int) -> jax.Array:
  """Per-row dynamic slice x[b, start[b]:start[b]+size] along axis 1."""
  return jax.vmap(lambda r, s: jax.lax.dynamic_slice_in_dim(r, s, size, axis=0))(x, start)


class LMDrafter:
  """A separate small causal LM (any checkpoint the loader reads) as the drafter."""

  target_hidden_layers = ()

  def __init__(self, cfg: ModelConfig):
    self.cfg = cfg
    self.vocab_size = cfg.vocab_size

  def __hash__(self):
    return hash((LMDrafter, self.cfg))

  def __eq__(self, other):
    return isinstance(other, LMDrafter) and other.cfg == self.cfg

  def init_state(self, params, batch_size, max_len):
    return KVCache.init(self.cfg, batch_size, max_len, per_layer=transformer.is_unstacked(params))

  def prefill(self, params, state, tokens, num_valid, target_hidden):
    out = transformer.forward(self.cfg, params, tokens, cache=state.with_lengths(0 * num_valid),
                              return_logits=False)
    return out.cache.with_lengths(num_valid)

  def propose(self, params, state, ctx, rng, window, sp):
    # Ingest only slots pos-1 and pos (a 2-token forward, not K+2): the engine commits an
    # accepted prefix d_1..d_n of the last proposal plus one new token, and this drafter already
    # fed `last`, d_1..d_{K-1} at their slots, so its cache holds the committed tokens below
    # pos-1. Slot pos-1 is new only after a full acceptance (d_K); otherwise it is re-fed with
    # the token it holds. A slot past pos is scratch, overwritten before anything attends to it.
    start = jnp.maximum(ctx.pos - 1, ctx.fresh_start)
    toks = window_slice(ctx.buf, start, 2)
    out = transformer.forward(self.cfg, params, toks, cache=state.with_lengths(start))
    idx = ctx.pos - start
    logits = jnp.take_along_axis(out.logits, idx[:, None, None], axis=1)[:, 0]
    cache = out.cache.with_lengths(ctx.pos + 1)

    def step(carry, key):
      cache, logits = carry
      tok, logp = sampling.sample(key, logits, sp)
      out = transformer.forward(self.cfg, params, tok[:, None], cache=cache)
      return (out.cache, out.logits[:, 0]), (tok, logp)

    keys = jax.random.split(rng, window)
    # The K-th token is never fed: the next proposal re-ingests it if it is accepted.
    (cache, last_logits), (toks, logps) = jax.lax.scan(step, (cache, logits), keys[:-1])
    tok_k, logp_k = sampling.sample(keys[-1], last_logits, sp)
    toks = jnp.concatenate([toks, tok_k[None]], 0).T
    logps = jnp.concatenate([logps, logp_k[None]], 0).transpose(1, 0, 2)
    return cache, toks, logps

  def propose_tree(self, params, state, ctx, rng, spec, sp):
    # Ingest as `propose`; then frontier nodes of depth d go to slots pos+1+(d-1)*topk..,
    # positions pos+d, over the tree slots from pos+1 (the ancestor mask).
    start = jnp.maximum(ctx.pos - 1, ctx.fresh_start)
    out = transformer.forward(self.cfg, params, window_slice(ctx.buf, start, 2),
                              cache=state.with_lengths(start))
    logits = jnp.take_along_axis(out.logits, (ctx.pos - start)[:, None, None], axis=1)[:, 0]
    base = ctx.pos + 1

    def expand(cache, depth, tokens, parents, mask):
      o = transformer.forward(
          self.cfg, params, tokens, cache=cache.with_lengths(base + (depth - 1) * spec.topk),
          positions=jnp.broadcast_to((ctx.pos + depth)[:, None], tokens.shape), self_mask=mask)
      return o.cache, o.logits

    root = jnp.take_along_axis(ctx.buf, ctx.pos[:, None], axis=1)[:, 0]
    return draft_tree.build(spec, sp, root, logits, expand, out.cache)

  def commit_tree(self, params, state, tr, path, pos):
    # Path nodes 1..depth-1 that were fed move to slots pos+1..; the next proposal ingests slots
    # from pos+n on, so the last accepted node (maybe never fed) and any scratch are re-fed.
    slots = jnp.take_along_axis(tr.draft_slot, path[:, 1:-1], axis=1)
    return draft_tree.move_slots(state, pos[:, None] + 1 + slots, pos + 1)
