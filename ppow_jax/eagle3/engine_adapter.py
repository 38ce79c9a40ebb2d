"""The EAGLE-3 drafter behind the engine's drafter interface (`ppow_jax.decoding.drafter`).

Alignment (EAGLE): drafter position j reads the pair (feature of target position j, token j+1)
and predicts token j+2. After a verification, the target's states for slots fresh..fresh+K are
fresh; the drafter ingests those K+1 pairs, reads its prediction at slot pos-1 (for the token after
the newest committed one), then drafts autoregressively, feeding back its own hidden state.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppow_jax.decoding import sampling
from ppow_jax.decoding import tree as draft_tree
from ppow_jax.decoding.drafter import window_slice
from ppow_jax.eagle3 import model as e3
from ppow_jax.eagle3.checkpoint import load_eagle3, read_embed_tokens


class Eagle3EngineDrafter:
  """Static (hashable) drafter object; params = {'draft': weights, 'd2t': map, 'embed': target's}."""

  def __init__(self, cfg: e3.Eagle3Config):
    self.cfg = cfg
    self.vocab_size = cfg.vocab_size
    self.target_hidden_layers = cfg.aux_layers

  def __hash__(self):
    return hash((Eagle3EngineDrafter, self.cfg))

  def __eq__(self, other):
    return isinstance(other, Eagle3EngineDrafter) and other.cfg == self.cfg

  @staticmethod
  def bind(drafter: e3.Eagle3Drafter, target_params: dict) -> dict:
    """The engine's params pytree for a drafter module and the target whose embedding it shares."""
    return {"draft": drafter.params(), "d2t": drafter.d2t[...], "embed": target_params["embed"]}

  def _target_logits(self, params, draft_logits):
    return e3.draft_to_target_logits(params["d2t"], draft_logits, self.cfg.vocab_size)

  def init_state(self, params, batch_size, max_len):
    return e3.init_cache(self.cfg, batch_size, max_len)

  def prefill(self, params, state, tokens, num_valid, target_hidden):
    # Pairs j = 0..P-2: (f_j, x_{j+1}); slot P-1 is re-read by the first proposal.
    feats = e3.fuse(params["draft"], target_hidden)
    nxt = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
    out = e3.forward(self.cfg, params["draft"], params["embed"], nxt, feats,
                     cache=state.with_lengths(0 * num_valid))
    return out.cache.with_lengths(num_valid)

  def _ingest(self, params, state, ctx, width):
    """Feeds the fresh pairs (target feature of slot j, token j+1) for j = fresh .. fresh+width-1;
    -> (cache up to slot pos-1, target-vocab logits and hidden state at slot pos-1)."""
    feats = e3.fuse(params["draft"], ctx.target_hidden)
    toks = window_slice(ctx.buf, ctx.fresh_start + 1, width)
    out = e3.forward(self.cfg, params["draft"], params["embed"], toks, feats,
                     cache=state.with_lengths(ctx.fresh_start))
    idx = jnp.clip(ctx.pos - 1 - ctx.fresh_start, 0, width - 1)
    take = lambda x: jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]
    return (out.cache.with_lengths(ctx.pos), self._target_logits(params, take(out.logits)),
            take(out.hidden))

  def propose(self, params, state, ctx, rng, window, sp):
    cache, logits, hidden = self._ingest(params, state, ctx, window + 1)

    def step(carry, key):
      cache, logits, hidden = carry
      tok, logp = sampling.sample(key, logits, sp)
      o = e3.forward(self.cfg, params["draft"], params["embed"], tok[:, None], hidden[:, None],
                     cache=cache)
      return (o.cache, self._target_logits(params, o.logits[:, 0]), o.hidden[:, 0]), (tok, logp)

    keys = jax.random.split(rng, window)
    (cache, last_logits, _), (toks, logps) = jax.lax.scan(step, (cache, logits, hidden), keys[:-1])
    tok_k, logp_k = sampling.sample(keys[-1], last_logits, sp)
    toks = jnp.concatenate([toks, tok_k[None]], 0).T
    logps = jnp.concatenate([logps, logp_k[None]], 0).transpose(1, 0, 2)
    return cache, toks, logps

  def propose_tree(self, params, state, ctx, rng, spec, sp):
    # Frontier nodes of depth d read their parent's fed-back hidden state (EAGLE `topK_genrate`)
    # at slots pos+(d-1)*topk.., positions pos+d-1 (as the chain's d-th step), over the tree
    # slots from pos with the ancestor mask.
    cache, logits, hidden = self._ingest(params, state, ctx, spec.depth + 1)
    b = hidden.shape[0]

    def expand(carry, depth, tokens, parents, mask):
      cache, prev_hidden = carry
      feats = jnp.take_along_axis(prev_hidden, parents[:, :, None], axis=1)
      o = e3.forward(self.cfg, params["draft"], params["embed"], tokens, feats,
                     cache=cache.with_lengths(ctx.pos + (depth - 1) * spec.topk),
                     positions=jnp.broadcast_to((ctx.pos + depth - 1)[:, None], tokens.shape),
                     self_mask=mask)
      return (o.cache, o.hidden), self._target_logits(params, o.logits)

    root = jnp.take_along_axis(ctx.buf, ctx.pos[:, None], axis=1)[:, 0]
    carry = (cache, jnp.broadcast_to(hidden[:, None], (b, spec.topk, hidden.shape[-1])))
    (cache, _), tr = draft_tree.build(spec, sp, root, logits, expand, carry)
    return cache, tr

  def commit_tree(self, params, state, tr, path, pos):
    # Nothing moves: the next proposal re-ingests the accepted path with the target's features.
    return state


def load_for_engine(path: str, target_cfg, target_params: dict):
  """(drafter, params) for `engine.generate` from an EAGLE-3 checkpoint directory.

  A checkpoint that ships `embed_tokens.weight` (SpecForge's HF export, EAGLE's) drafts with
  that embedding, as vLLM and EAGLE do; one without shares the target's.
  """
  drafter = load_eagle3(path, target_cfg)
  params = Eagle3EngineDrafter.bind(drafter, target_params)
  embed = read_embed_tokens(path)
  if embed is not None:
    params["embed"] = jnp.asarray(embed, drafter.cfg.jnp_dtype)
  return Eagle3EngineDrafter(drafter.cfg), params
