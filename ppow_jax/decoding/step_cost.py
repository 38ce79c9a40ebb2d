"""The drafter/target step-cost ratio gamma of PPOW's speedup reward, measured on this machine.

R_speedup = k / (k * gamma + 1) charges each accepted token one drafter step in units of one
target step. gamma = (marginal cost of one more draft token in the engine's `propose`) / (one
cached 1-token target forward), both jitted as the engine runs them (decode-layout weights, a
cache filled to `context` slots, batch 1) and timed in interleaved rounds (median).

The marginal cost is the least-squares slope of propose time over every window from k1 to k2.
Where per-call overheads swamp it (a tiny drafter, a loaded machine) the slope can come out at or
below zero; gamma then falls back to the whole proposal's cost per token, an upper bound, and the
result says which was used ("method").
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from ppow_jax.decoding import sampling
from ppow_jax.decoding.drafter import DraftContext
from ppow_jax.models import transformer
from ppow_jax.models.kv_cache import KVCache


def _target_loop(cfg, params, cache, width: int, inner: int, fill: int):
  @jax.jit
  def loop(p, x, c):
    def body(_, carry):
      x, c = carry
      out = transformer.forward(cfg, p, x, cache=c.with_lengths(jnp.full((1,), fill, jnp.int32)))
      return (x + jnp.argmax(out.logits[:, -1:], -1).astype(x.dtype)) % cfg.vocab_size, out.cache
    return jax.lax.fori_loop(0, inner, body, (x, c))[0]

  x = jnp.ones((1, width), jnp.int32)
  return lambda: loop(params, x, cache)


def _propose_loop(drafter, dparams, dstate, ctx, window: int, inner: int):
  sp = sampling.SamplingParams()

  @jax.jit
  def loop(dp, st, c):
    def body(i, acc):
      _, toks, _ = drafter.propose(dp, st, c._replace(buf=c.buf + acc), jax.random.key(i), window,
                                   sp)
      return acc + toks[:, :1] % 2  # a data dependence, so no call is skipped
    return jax.lax.fori_loop(0, inner, body, jnp.zeros((1, 1), jnp.int32))

  return lambda: loop(dparams, dstate, ctx)


def measure_gamma(cfg, params, drafter, dparams, *, context: int = 64, windows=(1, 5),
                  inner: int = 10, repeats: int = 5) -> dict:
  """{"gamma", "target_ms", "draft_token_ms", "method"}: the ratio, its two costs, how measured."""
  params = transformer.unstack(params)
  k1, k2 = windows
  cap = context + k2 + 4
  prompt = jnp.ones((1, context), jnp.int32)
  cache = KVCache.init(cfg, 1, cap, per_layer=transformer.is_unstacked(params))
  out = transformer.forward(cfg, params, prompt, cache=cache,
                            hidden_layers=drafter.target_hidden_layers, return_logits=False)
  dstate = drafter.prefill(dparams, drafter.init_state(dparams, 1, cap), prompt,
                           jnp.full((1,), context - 1, jnp.int32), out.hidden)
  pos = jnp.full((1,), context - 1, jnp.int32)
  buf = jnp.ones((1, cap), jnp.int32)
  thunks = {"target": _target_loop(cfg, params, out.cache, 1, inner, context)}
  for k in range(k1, k2 + 1):
    hidden = tuple(jnp.zeros((1, k + 1, h.shape[-1]), h.dtype) for h in out.hidden)
    ctx = DraftContext(buf=buf, pos=pos, fresh_start=pos - 1, target_hidden=hidden)
    thunks[k] = _propose_loop(drafter, dparams, dstate, ctx, k, inner)
  for fn in thunks.values():
    jax.block_until_ready(fn())  # compile
  times = {n: [] for n in thunks}
  for _ in range(repeats):
    for n, fn in thunks.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[n].append((time.perf_counter() - t0) / inner)
  med = {n: statistics.median(t) for n, t in times.items()}
  draft_token, method = draft_token_cost({k: med[k] for k in range(k1, k2 + 1)})
  return {"gamma": draft_token / med["target"], "target_ms": med["target"] * 1e3,
          "draft_token_ms": draft_token * 1e3, "method": method}


def draft_token_cost(propose_seconds: dict[int, float]) -> tuple[float, str]:
  """(seconds per draft token, "marginal" | "average") from propose times keyed by window.

  The marginal cost (least-squares slope) when it is positive; otherwise the longest window's
  time per token, so gamma is never zero or negative from timing noise.
  """
  ks = sorted(propose_seconds)
  if len(ks) < 2:
    raise ValueError(f"need propose times for two windows or more, got {ks}")
  mk = statistics.fmean(ks)
  mt = statistics.fmean(propose_seconds[k] for k in ks)
  slope = (sum((k - mk) * (propose_seconds[k] - mt) for k in ks)
           / sum((k - mk) ** 2 for k in ks))
  if slope > 0:
    return slope, "marginal"
  return propose_seconds[ks[-1]] / ks[-1], "average"
