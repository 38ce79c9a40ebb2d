"""EAGLE-3 token-level training: the "training-time test" unrolled over several draft steps.

At decode time, draft step i at slot j sees real target features only up to slot j-i; later
slots hold the drafter's own fed-back hidden states. Training reproduces that for every position
at once (EAGLE-3, Li et al. 2025, Sec. 3; SpecForge's TTT loop): step 0 reads fused target
features; step i reads the step-(i-1) hidden state of the previous slot, and its query at slot j
attends to step-0 keys at slots <= j-i plus, for each earlier step s >= 1, the one key that step
wrote on the same diagonal (slot j-(i-s)). Tokens are teacher-forced. Step i at slot j predicts
token j+2, supervised by the target's distribution at slot j+1 restricted to the draft vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ppow_jax.eagle3 import model as e3
from ppow_jax.models import rope


def draft_vocab_ids(d2t: jax.Array) -> jax.Array:
  """Target ids of the draft vocabulary, in draft order."""
  return jnp.arange(d2t.shape[0], dtype=jnp.int32) + d2t.astype(jnp.int32)


def _shift(x: jax.Array, d: int) -> jax.Array:
  """x[:, j - d] along axis 1 (zeros where j < d)."""
  return x if d == 0 else jnp.pad(x[:, :-d], ((0, 0), (d, 0)) + ((0, 0),) * (x.ndim - 2))


def _ttt_attention(q, keys, values, i):
  """Step-i attention: causal over step-0 keys at slots <= j-i, plus one diagonal key per step.

  The diagonal keys are scored elementwise rather than through a masked [T, T] block each, so the
  cost stays ~T^2 + i*T instead of (i+1)*T^2. q [B,T,Hq,D]; keys/values: i+1 arrays [B,T,Hkv,D].
  """
  b, t, hq, d = q.shape
  hkv = keys[0].shape[2]
  qg = q.reshape(b, t, hkv, hq // hkv, d).astype(jnp.float32)
  scale = d ** -0.5
  s0 = jnp.einsum("btkgd,bskd->btkgs", qg, keys[0].astype(jnp.float32)) * scale
  causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None] - i
  s0 = jnp.where(causal[None, :, None, None, :], s0, -1e30)
  diag_k = [_shift(k, i - s).astype(jnp.float32) for s, k in enumerate(keys) if s >= 1]
  diag_v = [_shift(v, i - s) for s, v in enumerate(values) if s >= 1]
  sd = [jnp.einsum("btkgd,btkd->btkg", qg, k)[..., None] * scale for k in diag_k]
  probs = jax.nn.softmax(jnp.concatenate([s0] + sd, axis=-1), axis=-1)
  out = jnp.einsum("btkgs,bskd->btkgd", probs[..., :t], values[0].astype(jnp.float32))
  for n, v in enumerate(diag_v):
    out = out + probs[..., t + n, None] * v[:, :, :, None, :].astype(jnp.float32)
  return out.reshape(b, t, hq * d).astype(q.dtype)


def unroll(cfg: e3.Eagle3Config, params: dict, embed: jax.Array, tokens: jax.Array,
           aux_hidden, steps: int) -> list[jax.Array]:
  """Draft logits [B, T, Vd] of each unrolled step (teacher-forced tokens, TTT masks)."""
  b, t = tokens.shape
  p = params["midlayer"]
  dt = cfg.jnp_dtype
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  sin, cos = rope.sin_cos(cfg, pos)
  # Slot j reads token j+1 (the last slot's token is padding; its outputs are never supervised).
  emb = embed[jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))].astype(dt)
  feat = e3.fuse(params, aux_hidden).astype(dt)
  keys, values, out = [], [], []
  for i in range(steps):
    q, k, v, residual = e3.project(cfg, p, emb, feat, sin, cos)
    keys.append(k)
    values.append(v)
    attn = _ttt_attention(q, keys, values, i)
    logits, h = e3.finish(cfg, params, residual, attn)
    out.append(logits)
    # Next step at slot j continues from this step's state at slot j-1.
    feat = jnp.pad(h[:, :-1], ((0, 0), (1, 0), (0, 0)))
  return out


LOSSES = ("ce", "lk_alpha", "lk_lambda")


def step_objective(ce, accept, m, loss: str, lk_kl_scale: float, lk_kl_decay: float):
  """One unrolled step's loss from per-slot soft cross-entropy and acceptance sum_v min(p, q).

  "ce": the EAGLE-3 loss (KL to the target up to its entropy). The LK losses (arXiv 2602.23881)
  aim at acceptance itself: "lk_alpha" = -mean log alpha; "lk_lambda" = w * CE + (1 - w) *
  (1 - mean alpha) with w = lk_kl_scale * exp(-lk_kl_decay * mean alpha) (no gradient through
  w), which leans on the KL while acceptance is low and on acceptance once it is high.
  """
  denom = jnp.maximum(m.sum(), 1.0)
  mean = lambda x: jnp.sum(x * m) / denom
  if loss == "ce":
    return mean(ce)
  if loss == "lk_alpha":
    return -mean(jnp.log(jnp.maximum(accept, 1e-12)))
  if loss == "lk_lambda":
    alpha = mean(accept)
    w = lk_kl_scale * jnp.exp(-lk_kl_decay * jax.lax.stop_gradient(alpha))
    return w * mean(ce) + (1.0 - w) * (1.0 - alpha)
  raise ValueError(f"ttt loss {loss!r}: expected one of {LOSSES}")


def ttt_loss(cfg: e3.Eagle3Config, params: dict, embed: jax.Array, d2t: jax.Array,
             tokens: jax.Array, aux_hidden, target_logits: jax.Array, loss_mask: jax.Array, *,
             steps: int, decay: float, draft_logits: bool = False, loss: str = "ce",
             lk_kl_scale: float = 1.0, lk_kl_decay: float = 1.0):
  """Sum over steps of decay**i * the step objective (`step_objective`: soft cross-entropy to
  the target, or an LK acceptance loss); per-step objective, top-1 accuracy and acceptance.

  target_logits [B, T, V], or [B, T, Vd] already restricted to the draft vocabulary (in draft
  order) with `draft_logits`; loss_mask [B, T] marks slots whose *target* distribution is
  trained on (e.g. response tokens). Step i at slot j is supervised only where j >= i (a real
  prefix exists) and slot j+1 is in the mask.
  """
  b, t = tokens.shape
  tgt = target_logits[:, 1:]  # slot j -> target distribution at slot j+1
  if not draft_logits:
    tgt = tgt[..., draft_vocab_ids(d2t)]
  p_t = jax.nn.softmax(tgt, axis=-1)
  best = jnp.argmax(tgt, axis=-1)
  base = jnp.pad(loss_mask[:, 1:], ((0, 0), (0, 1)))[:, :t - 1]
  total, losses, accs, accepts = 0.0, [], [], []
  for i, logits in enumerate(unroll(cfg, params, embed, tokens, aux_hidden, steps)):
    m = (base & (jnp.arange(t - 1) >= i)[None]).astype(jnp.float32)
    logq = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    ce = -jnp.sum(p_t * logq, axis=-1)
    accept = jnp.sum(jnp.minimum(p_t, jnp.exp(logq)), axis=-1)
    denom = jnp.maximum(m.sum(), 1.0)
    loss_i = step_objective(ce, accept, m, loss, lk_kl_scale, lk_kl_decay)
    acc_i = jnp.sum((jnp.argmax(logq, -1) == best) * m) / denom
    total = total + decay ** i * loss_i
    losses.append(loss_i)
    accs.append(acc_i)
    accepts.append(jax.lax.stop_gradient(jnp.sum(accept * m) / denom))
  return total, {"step_loss": jnp.stack(losses), "step_acc": jnp.stack(accs),
                 "step_accept": jnp.stack(accepts)}
