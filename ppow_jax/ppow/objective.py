"""PPOW training objective (arXiv 2605.14978): group-relative advantages, a PPO-clipped
window-level policy loss, an exact KL penalty anchored to the target, and a soft cross-entropy
auxiliary loss.

Shapes: G windows per prefix, K tokens per window, V vocabulary. Token-level means are taken over
every unmasked token of the batch (one global masked mean), so long and short windows weigh each
token equally. All functions are pure, float32 and jit-safe.
"""

import jax
import jax.numpy as jnp

from ppow_jax.ppow.windowing import (_check_vocab, _probs_and_safe_log, floored_log_probs,
                                     masked_mean, token_kl)

TOKEN_MASK_MODES = ("through_first_reject", "all")


def group_advantages(rewards, eps=1e-6):
  """(r − mean_G r) / (std_G r + eps) over the last (group) axis of rewards [..., G].

  Population std (ddof=0), as in GRPO. A group whose rewards are all equal gives zeros.
  """
  r = jnp.asarray(rewards, jnp.float32)
  centred = r - jnp.mean(r, axis=-1, keepdims=True)
  std = jnp.sqrt(jnp.mean(centred * centred, axis=-1, keepdims=True))
  return centred / (std + jnp.float32(eps))


def clipped_policy_loss(logp_new, logp_old, advantages, mask, clip_eps):
  """PPO-clipped loss of per-token ratios r = exp(logp_new − logp_old) (Schulman et al. 2017).

  logp_new / logp_old / mask: [..., K]; advantages: [...] per window, broadcast over its tokens.
  Objective min(r·A, clip(r, 1−ε, 1+ε)·A). Returns (loss, clip_fraction): loss = −masked mean of
  the objective; clip_fraction = masked share of tokens where the clipped branch is strictly
  smaller, i.e. where the token gets no gradient. Masked tokens may hold -inf log-probs.
  """
  logp_new = jnp.asarray(logp_new, jnp.float32)
  logp_old = jnp.asarray(logp_old, jnp.float32)
  if logp_new.shape != logp_old.shape:
    raise ValueError(f"clipped_policy_loss: logp_new {logp_new.shape} != logp_old {logp_old.shape}")
  adv = jnp.asarray(advantages, jnp.float32)[..., None]
  m = jnp.broadcast_to(jnp.asarray(mask), logp_new.shape)
  keep = m.astype(jnp.float32) > 0
  # Zero the log-ratio on masked tokens first so exp() never sees inf/NaN there.
  ratio = jnp.exp(jnp.where(keep, logp_new - logp_old, 0.0))
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
  objective = jnp.minimum(unclipped, clipped)
  loss = -masked_mean(objective, m)
  clip_fraction = masked_mean((clipped < unclipped).astype(jnp.float32), m)
  return loss, jax.lax.stop_gradient(clip_fraction)


def loss_token_mask(k, K, mode):
  """Bool mask [..., K] of window tokens that enter the loss, for accepted lengths k [...].

  "through_first_reject": positions 0..min(k, K−1) — the accepted tokens plus the first rejected
  one; tokens after it cannot change k. "all": every one of the K tokens.
  """
  if mode not in TOKEN_MASK_MODES:
    raise ValueError(f"loss_token_mask: unknown mode {mode!r}; expected one of {TOKEN_MASK_MODES}")
  k = jnp.asarray(k, jnp.int32)
  pos = jnp.arange(K, dtype=jnp.int32)
  if mode == "all":
    return jnp.ones(k.shape + (K,), jnp.bool_)
  return pos <= jnp.minimum(k, K - 1)[..., None]


def kl_to_target(draft_logits, target_logits, mask=None):
  """Masked mean over positions of the exact KL(P_target ‖ Q_draft), logits [..., V], mask [...].

  The target is frozen, so no gradient flows into target_logits. log Q is floored at log(1e-9)
  for -inf draft logits (see windowing.floored_log_probs).
  """
  return masked_mean(token_kl(jax.lax.stop_gradient(target_logits), draft_logits), mask)


def soft_cross_entropy(draft_logits, target_logits, mask=None):
  """Masked mean over positions of −Σ_v P_target log Q_draft (token-level auxiliary loss).

  Differs from kl_to_target by the target entropy only; gradient wrt draft logits is Q − P.
  """
  target_logits = jax.lax.stop_gradient(jnp.asarray(target_logits, jnp.float32))
  draft_logits = jnp.asarray(draft_logits, jnp.float32)
  _check_vocab(target_logits, draft_logits, "soft_cross_entropy")
  p, _ = _probs_and_safe_log(target_logits)
  logq = floored_log_probs(draft_logits)
  ce = -jnp.sum(jnp.where(p > 0, p * logq, 0.0), axis=-1)
  return masked_mean(ce, mask)


def ppow_loss(logp_new, logp_old, advantages, mask, draft_logits, target_logits, *, clip_eps,
              beta, aux_coef, anchor_mask=None):
  """PPOW loss = −clipped objective + beta·KL(P_target ‖ Q_draft) + aux_coef·soft CE.

  logp_*: [..., K] drafter log-probs of the window tokens; advantages [...]; mask [..., K] for
  the policy term; anchor_mask [..., K] for the KL and soft-CE terms (default: mask);
  draft_logits / target_logits [..., K, V] at the window positions. Returns (loss, metrics) with
  metrics policy_loss, kl, clip_fraction, aux_ce.
  """
  policy_loss, clip_fraction = clipped_policy_loss(logp_new, logp_old, advantages, mask, clip_eps)
  anchor_mask = mask if anchor_mask is None else anchor_mask
  kl = kl_to_target(draft_logits, target_logits, anchor_mask)
  aux_ce = soft_cross_entropy(draft_logits, target_logits, anchor_mask)
  loss = policy_loss + beta * kl
  if aux_coef:  # a Python 0 leaves aux_ce a metric only (no gradient work for it)
    loss = loss + aux_coef * aux_ce
  metrics = {"policy_loss": policy_loss, "kl": kl, "clip_fraction": clip_fraction,
             "aux_ce": aux_ce}
  return loss, metrics
