"""Target verification of a drafted window and the acceptance rules (greedy and lossless sampling).

The target scores [last, d_1..d_K] in one forward, giving K+1 next-token distributions: entry i
judges d_{i+1}, entry K gives the bonus token when the whole window is accepted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppow_jax.decoding.sampling import SamplingParams, draw, log_probs


def _leading_true(ok: jax.Array) -> jax.Array:
  """Number of leading True values along the last axis."""
  return jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=-1), axis=-1).astype(jnp.int32)


def accept_greedy(draft_tokens: jax.Array, target_logits: jax.Array):
  """Accept while the draft equals the target's argmax, then emit the target's token.

  draft_tokens [B, K], target_logits [B, K+1, V] -> (n_accepted [B], next_token [B]).
  """
  best = jnp.argmax(target_logits, axis=-1).astype(jnp.int32)
  k = draft_tokens.shape[-1]
  n = _leading_true(draft_tokens == best[:, :k]) if k else jnp.zeros(best.shape[:1], jnp.int32)
  nxt = jnp.take_along_axis(best, n[:, None], axis=1)[:, 0]
  return n, nxt


def accept_sampling(rng: jax.Array, draft_tokens: jax.Array, draft_logp: jax.Array,
                    target_logp: jax.Array):
  """Lossless speculative sampling (Leviathan et al. 2023; Chen et al. 2023).

  Accept d_i with probability min(1, p_i(d_i)/q_i(d_i)); at the first rejection sample from the
  normalised residual max(0, p - q); if all K are accepted, sample the bonus token from p_K.
  draft_logp [B, K, V] (the drafter's real processed distribution), target_logp [B, K+1, V].
  """
  b, k = draft_tokens.shape
  r_accept, r_token = jax.random.split(rng)
  p, q = jnp.exp(target_logp), jnp.exp(draft_logp)
  if k:
    p_d = jnp.take_along_axis(p[:, :k], draft_tokens[..., None], axis=-1)[..., 0]
    q_d = jnp.take_along_axis(q, draft_tokens[..., None], axis=-1)[..., 0]
    u = jax.random.uniform(r_accept, (b, k))
    n = _leading_true(u * q_d < p_d)  # u < p/q without dividing by a tiny q.
  else:
    n = jnp.zeros((b,), jnp.int32)
  # Padding q with zeros makes the all-accepted case the residual p_K - 0 = p_K.
  q_ext = jnp.concatenate([q, jnp.zeros_like(p[:, :1])], axis=1)
  p_n = jnp.take_along_axis(p, n[:, None, None], axis=1)[:, 0]
  q_n = jnp.take_along_axis(q_ext, n[:, None, None], axis=1)[:, 0]
  resid = jnp.maximum(p_n - q_n, 0.0)
  # If p == q exactly at the rejection point (probability-zero event), fall back to p.
  resid = jnp.where(jnp.sum(resid, -1, keepdims=True) > 0, resid, p_n)
  nxt = draw(r_token, resid)
  return n, nxt.astype(jnp.int32)


def accept(rng, draft_tokens, draft_logp, target_logits, sp: SamplingParams):
  """Dispatches on the sampling mode; returns (n_accepted [B], next_token [B])."""
  if sp.greedy:
    return accept_greedy(draft_tokens, target_logits)
  return accept_sampling(rng, draft_tokens, draft_logp, log_probs(target_logits, sp))
