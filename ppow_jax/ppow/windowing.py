"""Adaptive divergence-aware window selection of PPOW (arXiv 2605.14978).

Candidate windows are scored by how confident the target is and how far the drafter is from it,
v_t = C(P_t) · KL(P_t ‖ Q_t), and a subset is chosen for the policy update.

Logits are [..., V] over one shared vocabulary. A drafter with a smaller vocabulary puts -inf on
tokens it cannot emit; then Q = 0 where P may be > 0 and KL(P ‖ Q) would be infinite, so log Q is
floored at LOG_Q_FLOOR = log(1e-9) (see `floored_log_probs`). A row that is -inf everywhere is
not a distribution and gives NaN.
"""

import math

import jax
import jax.numpy as jnp

Q_FLOOR = 1e-9
LOG_Q_FLOOR = math.log(Q_FLOOR)
SELECTION_MODES = ("top", "proportional")


def masked_mean(x, mask=None, axis=None):
  """Mean of x over `axis` (None = all) weighted by mask (bool or float, broadcast to x).

  Masked entries may hold inf/NaN: they are replaced before weighting, so neither the value nor
  the gradient sees them. An all-masked reduction gives 0.
  """
  x = jnp.asarray(x, jnp.float32)
  if mask is None:
    return jnp.mean(x, axis=axis)
  m = jnp.broadcast_to(jnp.asarray(mask), x.shape).astype(jnp.float32)
  num = jnp.sum(jnp.where(m > 0, x, 0.0) * m, axis=axis)
  den = jnp.sum(m, axis=axis)
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


def floored_log_probs(logits):
  """log_softmax(logits) with values floored at LOG_Q_FLOOR, float32 [..., V].

  The floor bounds the value (-inf entries become log(1e-9)); for finite entries the gradient is
  that of the unfloored log-prob (straight-through), so a token the drafter gives < 1e-9 still
  pulls its probability up in KL / cross-entropy losses. -inf entries get zero gradient.
  """
  logq = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  finite = jnp.where(jnp.isfinite(logq), logq, LOG_Q_FLOOR)
  # floor + (x - sg(x)): exactly the floor in value (no x + (floor - x) cancellation, which is
  # 0, not the floor, for the finite -1e30 logits outside a draft vocabulary), x's gradient.
  return jnp.where(finite < LOG_Q_FLOOR,
                   LOG_Q_FLOOR + (finite - jax.lax.stop_gradient(finite)), finite)


def _probs_and_safe_log(logits):
  """(P, log P with 0 where P == 0) so P·log P terms are 0, not NaN, at -inf logits."""
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  p = jnp.exp(logp)
  return p, jnp.where(p > 0, logp, 0.0)


def _check_vocab(target_logits, draft_logits, name):
  if target_logits.shape[-1] != draft_logits.shape[-1]:
    raise ValueError(f"{name}: target vocab {target_logits.shape[-1]} != draft vocab "
                     f"{draft_logits.shape[-1]}; map the drafter into the target vocabulary "
                     "with -inf for tokens it cannot emit")


def token_kl(target_logits, draft_logits):
  """KL(P ‖ Q) = Σ_v P log(P/Q) per position [...], P = softmax(target), Q = softmax(draft).

  log Q is floored (see `floored_log_probs`), so the value is finite, at most ≈ 20.7 nats + H terms.
  """
  target_logits = jnp.asarray(target_logits, jnp.float32)
  draft_logits = jnp.asarray(draft_logits, jnp.float32)
  _check_vocab(target_logits, draft_logits, "token_kl")
  p, logp = _probs_and_safe_log(target_logits)
  logq = floored_log_probs(draft_logits)
  return jnp.sum(jnp.where(p > 0, p * (logp - logq), 0.0), axis=-1)


def confidence(target_logits):
  """C(P) = 1 − H(P)/log|V| per position [...], P = softmax over the last axis [..., V].

  1 for a one-hot target, 0 for a uniform one; clipped to [0, 1] against round-off.
  """
  target_logits = jnp.asarray(target_logits, jnp.float32)
  vocab = target_logits.shape[-1]
  if vocab < 2:
    raise ValueError(f"confidence: vocabulary size {vocab} < 2 has no normalised entropy")
  p, logp = _probs_and_safe_log(target_logits)
  entropy = -jnp.sum(p * logp, axis=-1)
  return jnp.clip(1.0 - entropy / math.log(vocab), 0.0, 1.0)


def divergence_scores(target_logits, draft_logits):
  """v_t = C(P_t) · KL(P_t ‖ Q_t) per position [...] (PPOW divergence-aware score).

  High where the target is sure of its next token and the drafter disagrees with it.
  """
  return confidence(target_logits) * token_kl(target_logits, draft_logits)


def window_scores(v, mask=None):
  """Masked mean of per-position scores v [..., K] over the window axis → [...]."""
  return masked_mean(v, mask, axis=-1)


def select_windows(rng, scores, num_select, *, mode, uniform):
  """Indices int32 [num_select] into the flattened `scores`, chosen without replacement.

  uniform (Python or traced bool; the warm-up phase): uniformly at random, scores ignored.
  Otherwise by `mode`: "top" = the num_select highest scores (ties to the lower index);
  "proportional" = sampling without replacement with probability ∝ score, by Gumbel-top-k over
  log(score) (Kool et al. 2019). Scores ≤ 0 get a key below every positive score, so they are only
  picked when fewer than num_select scores are positive.
  """
  if mode not in SELECTION_MODES:
    raise ValueError(f"select_windows: unknown mode {mode!r}; expected one of {SELECTION_MODES}")
  scores = jnp.ravel(jnp.asarray(scores, jnp.float32))
  n = scores.shape[0]
  if not 0 < num_select <= n:
    raise ValueError(f"select_windows: num_select={num_select} must be in 1..{n} candidates")
  gumbel = jax.random.gumbel(rng, (n,), jnp.float32)
  _, uniform_idx = jax.lax.top_k(gumbel, num_select)
  if mode == "top":
    _, mode_idx = jax.lax.top_k(scores, num_select)
  else:
    positive = scores > 0
    tiny = jnp.finfo(jnp.float32).tiny
    log_s = jnp.log(jnp.maximum(jnp.where(positive, scores, 1.0), tiny))
    # float32 Gumbel noise stays within about ±90 and log of a positive float32 is ≥ -104, so a
    # -1e4 key ranks every non-positive score below every positive one, still in random order.
    keys = jnp.where(positive, log_s, -1e4) + gumbel
    _, mode_idx = jax.lax.top_k(keys, num_select)
  idx = jnp.where(jnp.asarray(uniform, jnp.bool_), uniform_idx, mode_idx)
  return idx.astype(jnp.int32)
