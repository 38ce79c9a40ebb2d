"""The generation loop: prefill, then draft -> verify -> accept -> commit under `lax.while_loop`.

Everything is static-shaped: prompts are right-padded to a bucket, the KV caches and the token
buffer have a fixed capacity, and each row of the batch accepts its own prefix length and stops on
its own at EOS or `max_new_tokens`. With `drafter=None` the same loop decodes autoregressively
(a window of 0), so speedups compare like with like. With `tree` (a `tree.TreeSpec`) each step
drafts a dynamic tree instead of a chain, the target verifies its nodes in one forward under the
ancestor mask, and the accepted path's KV entries are moved into place (`ppow_jax.decoding.tree`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ppow_jax.decoding import sampling, verify
from ppow_jax.decoding import tree as draft_tree
from ppow_jax.decoding.drafter import DraftContext, window_slice
from ppow_jax.models import transformer
from ppow_jax.models.config import ModelConfig
from ppow_jax.models.kv_cache import KVCache


class GenerateOutput(NamedTuple):
  tokens: jax.Array  # [B, max_new_tokens] generated tokens (pad after num_tokens)
  num_tokens: jax.Array  # [B]
  accept_lengths: jax.Array  # [B, max_new_tokens] tokens produced per verification step (0 = no step)
  num_steps: jax.Array  # [B] verification steps taken


def capacity(prompt_len: int, max_new_tokens: int, window: int) -> int:
  """Cache/buffer slots: prompt + output + the scratch a window writes past the last token."""
  return prompt_len + max_new_tokens + window + 3


def _gather(x, idx):
  """x[b, idx[b]] for x [B, T, ...]."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 1)), axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=("cfg", "drafter", "window", "max_new_tokens", "sp",
                                             "eos_ids", "pad_id", "tree"))
def generate(cfg: ModelConfig, params: Any, prompts: jax.Array, prompt_lens: jax.Array,
             rng: jax.Array, *, drafter=None, drafter_params: Any = None, window: int = 0,
             max_new_tokens: int = 64, sp: sampling.SamplingParams = sampling.SamplingParams(),
             eos_ids: tuple[int, ...] = (), pad_id: int = 0,
             tree: draft_tree.TreeSpec | None = None) -> GenerateOutput:
  """Speculative (or, with drafter=None, autoregressive) generation.

  prompts [B, P] right-padded, prompt_lens [B] (>= 1). Greedy output equals the target's own
  greedy decoding token for token; at temperature > 0 it follows the target's distribution.
  A chain of `window` draft tokens per step, or with `tree` a dynamic draft tree (`window` is
  then unused).
  """
  b, p = prompts.shape
  if tree is not None and drafter is None:
    raise ValueError("tree decoding needs a drafter")
  # k: most draft tokens a step accepts; the capacity covers what a step writes past `pos`.
  k = (tree.depth if tree is not None else window) if drafter is not None else 0
  s = capacity(p, max_new_tokens, k if tree is None else tree.scratch - 1)
  hidden_layers = drafter.target_hidden_layers if drafter is not None else ()

  # Prefill: the target reads the prompt; its last position gives the first new token.
  cache = KVCache.init(cfg, b, s, per_layer=transformer.is_unstacked(params))
  out = transformer.forward(cfg, params, prompts, cache=cache, hidden_layers=hidden_layers,
                            return_logits=False)  # Only the last prompt slot needs the LM head.
  cache = out.cache.with_lengths(prompt_lens)
  rng, r0 = jax.random.split(rng)
  first, _ = sampling.sample(
      r0, transformer.lm_head(params, _gather(out.last_hidden, prompt_lens - 1)), sp)
  buf = jnp.zeros((b, s), jnp.int32).at[:, :p].set(prompts)
  buf = jax.vmap(lambda r, i, t: r.at[i].set(t))(buf, prompt_lens, first)
  pos = prompt_lens  # slot of the newest committed token (`first`), not yet in the cache

  dstate = None
  fresh = prompt_lens - 1
  hidden_win = ()
  if drafter is not None:
    # The drafter ingests slots [0, P-1) now; its first proposal re-reads slot P-1 with `first`.
    dstate = drafter.init_state(drafter_params, b, s)
    dstate = drafter.prefill(drafter_params, dstate, prompts, prompt_lens - 1, out.hidden)
    hidden_win = tuple(window_slice(jnp.pad(h, ((0, 0), (0, k + 1), (0, 0))), fresh, k + 1)
                       for h in out.hidden)

  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)
  done = jnp.isin(first, eos) | (max_new_tokens <= 1)
  state = dict(cache=cache, dstate=dstate, buf=buf, pos=pos, fresh=fresh, hidden=hidden_win,
               ngen=jnp.ones((b,), jnp.int32), done=done, rng=rng, step=jnp.zeros((), jnp.int32),
               acc=jnp.zeros((b, max_new_tokens), jnp.int32), nsteps=jnp.zeros((b,), jnp.int32))

  def cond(st):
    return ~jnp.all(st["done"]) & (st["step"] < max_new_tokens)

  def emit(st, draft, n, nxt):
    """Appends d_1..d_n then the target's token to each active row, cut at max_new_tokens and
    EOS; returns the updated loop fields."""
    pos, buf = st["pos"], st["buf"]
    width = draft.shape[1] + 1
    idx = jnp.arange(width)
    new = jnp.where(idx[None] < n[:, None], jnp.pad(draft, ((0, 0), (0, 1))), nxt[:, None])
    valid = idx[None] <= n[:, None]
    valid &= idx[None] < (max_new_tokens - st["ngen"])[:, None]
    is_eos = jnp.isin(new, eos) & valid
    valid &= jnp.cumsum(is_eos, axis=1) - is_eos == 0  # keep through the first EOS
    active = ~st["done"]
    m = jnp.where(active, jnp.sum(valid, axis=1), 0).astype(jnp.int32)
    # Writes past pos+m are scratch: overwritten before they are read.
    buf = jax.vmap(lambda r, s, t: jax.lax.dynamic_update_slice(r, t, (s,)))(
        buf, pos + 1, jnp.where(active[:, None], new, jax.vmap(lambda r, s: jax.lax.dynamic_slice(
            r, (s,), (width,)))(buf, pos + 1)))
    new_pos = pos + m
    ngen = st["ngen"] + m
    done = st["done"] | jnp.any(is_eos, axis=1) | (ngen >= max_new_tokens)
    acc = st["acc"].at[jnp.arange(b), st["nsteps"]].set(jnp.where(active, n + 1, 0))
    return dict(buf=buf, pos=new_pos, fresh=jnp.where(active, pos, st["fresh"]), ngen=ngen,
                done=done, acc=acc, nsteps=st["nsteps"] + active.astype(jnp.int32))

  def body(st):
    rng, r_draft, r_acc = jax.random.split(st["rng"], 3)
    pos, buf = st["pos"], st["buf"]
    last = _gather(buf, pos)
    if drafter is not None:
      ctx = DraftContext(buf=buf, pos=pos, fresh_start=st["fresh"], target_hidden=st["hidden"])
      dstate, draft, draft_logp = drafter.propose(drafter_params, st["dstate"], ctx, r_draft, k, sp)
    else:
      dstate, draft = None, jnp.zeros((b, 0), jnp.int32)
      draft_logp = jnp.zeros((b, 0, cfg.vocab_size), jnp.float32)

    # Verification: one target forward over [last, d_1..d_K] at slots pos..pos+K.
    x = jnp.concatenate([last[:, None], draft], axis=1)
    vout = transformer.forward(cfg, params, x, cache=st["cache"].with_lengths(pos),
                               hidden_layers=hidden_layers)
    n, nxt = verify.accept(r_acc, draft, draft_logp, vout.logits, sp)
    out = emit(st, draft, n, nxt)
    return dict(cache=vout.cache.with_lengths(out["pos"]), dstate=dstate, hidden=vout.hidden,
                rng=rng, step=st["step"] + 1, **out)

  def tree_body(st):
    rng, r_draft, r_acc = jax.random.split(st["rng"], 3)
    pos = st["pos"]
    ctx = DraftContext(buf=st["buf"], pos=pos, fresh_start=st["fresh"], target_hidden=st["hidden"])
    dstate, tr = drafter.propose_tree(drafter_params, st["dstate"], ctx, r_draft, tree, sp)
    # Verification: one target forward over the nodes at slots pos..pos+N-1, positions
    # pos + depth, each node seeing its ancestors only.
    vout = transformer.forward(cfg, params, tr.tokens, cache=st["cache"].with_lengths(pos),
                               positions=pos[:, None] + tr.depth, self_mask=tr.ancestors,
                               hidden_layers=hidden_layers)
    path, n, nxt = draft_tree.accept(r_acc, tr, vout.logits, sp, tree.depth)
    out = emit(st, jnp.take_along_axis(tr.tokens, path[:, 1:], axis=1), n, nxt)
    # Commit: the path's entries move to slots pos..pos+depth (the root's is in place); the
    # rest is scratch past the new length. The drafter's state and features follow the path.
    cache = draft_tree.move_slots(vout.cache, pos[:, None] + path, pos)
    dstate = drafter.commit_tree(drafter_params, dstate, tr, path, pos)
    hidden = tuple(jnp.take_along_axis(h, path[:, :, None], axis=1) for h in vout.hidden)
    return dict(cache=cache.with_lengths(out["pos"]), dstate=dstate, hidden=hidden, rng=rng,
                step=st["step"] + 1, **out)

  st = jax.lax.while_loop(cond, body if tree is None else tree_body, state)
  gen = jax.vmap(lambda r, s: jax.lax.dynamic_slice(r, (s,), (max_new_tokens,)))(
      jnp.pad(st["buf"], ((0, 0), (0, max_new_tokens))), prompt_lens)
  gen = jnp.where(jnp.arange(max_new_tokens)[None] < st["ngen"][:, None], gen, pad_id)
  return GenerateOutput(tokens=gen, num_tokens=st["ngen"], accept_lengths=st["acc"],
                        num_steps=st["nsteps"])
