"""Window rewards of PPOW (arXiv 2605.14978): cost-aware speedup plus the proximity bonus.

A window is K draft tokens the frozen target verified; `k` in 0..K is its accepted length.
All functions are pure, batched over leading axes, float32 and jit-safe.
"""

import jax.numpy as jnp

DEFAULT_GAMMA = 0.12


def speedup_reward(k, gamma=DEFAULT_GAMMA):
  """Cost-aware speedup reward k / (k*gamma + 1) per window.

  gamma is the drafter/target cost ratio: each accepted token also costs one drafter step, so
  the reward grows sub-linearly in k and saturates at 1/gamma.
  """
  k = jnp.asarray(k, jnp.float32)
  return k / (k * jnp.float32(gamma) + 1.0)


def likelihood_gap(logp_target_greedy, logp_target_draft, mask=None):
  """Δ = Σ_t log p_target(y_t|y_<t) − Σ_t log p_target(ŷ_t|ŷ_<t) over masked positions.

  y is the target's own greedy window and ŷ the draft window; both inputs are per-token target
  log-probs [..., K] (mask [..., K] bool or 0/1, None = all). Returns [...]. A small Δ means the
  draft is nearly as likely under the target as the target's own continuation.
  """
  greedy = jnp.asarray(logp_target_greedy, jnp.float32)
  draft = jnp.asarray(logp_target_draft, jnp.float32)
  if greedy.shape != draft.shape:
    raise ValueError(f"likelihood_gap: shapes differ, greedy {greedy.shape} vs draft {draft.shape}")
  diff = greedy - draft
  if mask is not None:
    m = jnp.broadcast_to(jnp.asarray(mask), diff.shape).astype(jnp.float32)
    diff = jnp.where(m > 0, diff, 0.0) * m
  return jnp.sum(diff, axis=-1)


def proximity_reward(k, delta, eta, epsilon):
  """eta * 1[delta < epsilon] for windows rejected at the first token (k == 0), else 0.

  Gives a learning signal to windows that earn no speedup but stay close to the target's
  greedy continuation (likelihood gap `delta` below `epsilon`).
  """
  k = jnp.asarray(k)
  delta = jnp.asarray(delta, jnp.float32)
  hit = (k == 0) & (delta < jnp.float32(epsilon))
  return jnp.where(hit, jnp.float32(eta), jnp.float32(0.0))


def window_rewards(k, delta, *, gamma, eta, epsilon, use_proximity):
  """speedup_reward(k, gamma) + proximity_reward(k, delta, eta, epsilon) if use_proximity.

  `use_proximity` may be a Python bool or a traced bool (switched on inside a jitted loop).
  """
  speed = speedup_reward(k, gamma)
  prox = proximity_reward(k, delta, eta, epsilon)
  return speed + jnp.where(jnp.asarray(use_proximity, jnp.bool_), prox, 0.0)
