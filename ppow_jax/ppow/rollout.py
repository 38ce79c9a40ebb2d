"""PPOW rollouts: the drafter samples groups of windows from prefixes of stored sequences, and
the frozen target verifies them, all as pure functions over batched rows.

Prefixes come from a teacher pass: the target reads each whole sequence once (KV cache, aux
states, next-token distributions) and the drafter ingests its features once (EAGLE pairing:
drafter slot j reads (feature j, token j+1) and predicts token j+2). A window with prefix end p
(last committed token at slot p) then starts from the drafter's slot p-1 output and continues
autoregressively from slot p, exactly as in decoding; its rows copy the sequence's caches with
length p.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppow_jax.decoding import sampling
from ppow_jax.eagle3 import model as e3
from ppow_jax.models import transformer
from ppow_jax.models.kv_cache import KVCache


class Teacher(NamedTuple):
  target_logits: jax.Array  # [N, T, V] target next-token logits per slot
  target_cache: KVCache  # the target's cache over all T slots
  aux: tuple  # target aux states for the drafter


class DraftPass(NamedTuple):
  logits: jax.Array  # [N, T, Vd] drafter slot j predicts token j+2
  hidden: jax.Array  # [N, T, H]
  cache: KVCache


def target_pass(tcfg, target_params, tokens, aux_layers, capacity: int) -> Teacher:
  """The frozen target over whole sequences [N, T], keeping its cache for later windows."""
  cache = KVCache.init(tcfg, tokens.shape[0], capacity)
  out = transformer.forward(tcfg, target_params, tokens, cache=cache, hidden_layers=aux_layers)
  return jax.lax.stop_gradient(Teacher(out.logits, out.cache, out.hidden))


def draft_pass(dcfg, dparams, embed, tokens, aux, capacity: int) -> DraftPass:
  """The drafter over (feature j, token j+1) pairs of whole sequences (differentiable)."""
  nxt = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))
  cache = e3.init_cache(dcfg, tokens.shape[0], capacity)
  out = e3.forward(dcfg, dparams, embed, nxt, e3.fuse(dparams, aux), cache=cache)
  return DraftPass(out.logits, out.hidden, out.cache)


def rows_of(cache: KVCache, seq: jax.Array, lengths: jax.Array) -> KVCache:
  """Cache rows for windows: row r copies sequence seq[r]'s cache, truncated to lengths[r]."""
  return cache.rows(seq, lengths)


def draft_windows(dcfg, dparams, embed, d2t, vocab_size: int, dp: DraftPass, seq, prefix_end,
                  window: int, *, rng=None, tokens=None, temperature: float = 1.0):
  """K drafter steps from each row's prefix end p.

  Samples tokens (rng given) or teacher-forces `tokens` [R, K] (to re-score a rollout under new
  parameters). Returns (tokens [R, K], logits over the target vocabulary at temperature 1
  [R, K, V], log-probs of the tokens [R, K]).
  """
  first = dp.logits[seq, prefix_end - 1]
  hidden = dp.hidden[seq, prefix_end - 1]
  cache = rows_of(dp.cache, seq, prefix_end)
  # Keys are unused when teacher-forcing; a fixed key keeps the scan's inputs the same type.
  keys = jax.random.split(rng if rng is not None else jax.random.key(0), window)
  forced = tokens.T if tokens is not None else jnp.zeros((window, seq.shape[0]), jnp.int32)

  def step(carry, xs):
    cache, logits_d, hidden = carry
    key, forced_tok = xs
    logits = e3.draft_to_target_logits(d2t, logits_d, vocab_size)
    if tokens is None:
      tok = sampling.categorical(key, logits / temperature)
    else:
      tok = forced_tok
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), tok[:, None], -1)[:, 0]
    # The K-th forward is unused; keeping it makes every step the same shape (one scan).
    out = e3.forward(dcfg, dparams, embed, tok[:, None], hidden[:, None], cache=cache)
    return (out.cache, out.logits[:, 0], out.hidden[:, 0]), (tok, logits, logp)

  _, (toks, logits, logp) = jax.lax.scan(step, (cache, first, hidden), (keys, forced))
  return toks.T, logits.transpose(1, 0, 2), logp.T


def verify_windows(tcfg, target_params, teacher: Teacher, tokens_seq, seq, prefix_end, draft):
  """Target forward over [x_p, d_1..d_K] per row -> (accepted k [R], logits [R, K+1, V]).

  Acceptance is greedy (a draft token counts while it equals the target's argmax): the tau a
  greedy deployment realises, and what the reward is meant to raise.
  """
  last = tokens_seq[seq, prefix_end]
  x = jnp.concatenate([last[:, None], draft], axis=1)
  cache = rows_of(teacher.target_cache, seq, prefix_end)
  logits = transformer.forward(tcfg, target_params, x, cache=cache).logits
  best = jnp.argmax(logits[:, :-1], axis=-1)
  k = jnp.sum(jnp.cumprod((best == draft).astype(jnp.int32), axis=-1), axis=-1)
  return k, logits


def target_greedy_logp(tcfg, target_params, teacher: Teacher, seq, prefix_end, window: int):
  """Per-token target log-probs [R, K] of the target's own greedy window after each prefix."""
  first = teacher.target_logits[seq, prefix_end]
  cache = rows_of(teacher.target_cache, seq, prefix_end + 1)

  def step(carry, _):
    cache, logits = carry
    tok = jnp.argmax(logits, axis=-1)
    logp = jnp.max(jax.nn.log_softmax(logits, -1), axis=-1)
    out = transformer.forward(tcfg, target_params, tok[:, None].astype(jnp.int32), cache=cache)
    return (out.cache, out.logits[:, 0]), logp

  _, logp = jax.lax.scan(step, (cache, first), None, length=window)
  return logp.T
