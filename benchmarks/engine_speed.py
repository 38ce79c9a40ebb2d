"""Speculative decoding engine speed vs the cost model tau*T(1) / (K*T_draft + T(K+1)).

  python benchmarks/engine_speed.py --window 4 --max_new_tokens 128 --repeats 5 \
      --out runs/engine_speed

A random-weight LLaMA-style target (default hidden 512, 8 layers, vocab 8192: 34M params, float32)
decodes one prompt (batch 1, greedy, 128 prompt tokens) through `engine.generate`: autoregressively
(drafter=None) and with two drafters, a small random LM (tau ~ 1) and the target drafting for
itself (tau = K+1). T(1), T(K+1), T_draft are cached forwards at the engine's cache capacity and
fill, jitted and chained inside one fori_loop (no Python dispatch, as in the engine's while loop).
Decode times leave out the prefill, timed separately with the calls `generate` makes before its
loop. All measurements are warmed, then interleaved round by round; each reports the median round
(the ratio from the fastest rounds is printed too). Per step LMDrafter really runs a 2-token
ingest and K-1 one-token steps; the ratio against those calls is printed as well.

--clock cpu (default) times process CPU seconds with single-threaded XLA: stable when other jobs
share the cores. --clock wall times wall seconds with XLA's default threading (a quiet machine).
Prints a markdown table; with --out writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

import common
from ppow_jax.decoding import engine, sampling
from ppow_jax.decoding.drafter import LMDrafter
from ppow_jax.models.config import ModelConfig
from ppow_jax.models.kv_cache import KVCache
from ppow_jax.models.transformer import Transformer, forward, is_unstacked

SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@functools.partial(jax.jit, static_argnums=0)
def _fill_cache(cfg, params, prompt, cache):
  """The cache after a forward over `prompt` (jitted once per config and shapes)."""
  return forward(cfg, params, prompt, cache=cache, return_logits=False).cache


def step_loop(cfg, params, cache_len, fill, width, inner, batch=1):
  """A thunk running `inner` chained `width`-token cached forwards with `fill` committed slots
  in each of `batch` rows.

  Each step carries the cache and feeds tokens that depend on the previous logits, as the
  engine's loop does.
  """

  @jax.jit
  def loop(p, x, c):
    def body(_, carry):
      x, c = carry
      out = forward(cfg, p, x, cache=c.with_lengths(jnp.full((batch,), fill, jnp.int32)))
      x = (x + jnp.argmax(out.logits[:, -1:], axis=-1).astype(x.dtype)) % cfg.vocab_size
      return x, out.cache
    return jax.lax.fori_loop(0, inner, body, (x, c))

  # Stacked weights run under lax.scan over one stacked cache; `unstack`ed (decode-layout)
  # ones over per-layer caches, as the engine decodes.
  cache = KVCache.init(cfg, batch, cache_len, per_layer=is_unstacked(params))
  prompt = jax.random.randint(jax.random.key(1), (batch, fill), 0, cfg.vocab_size)
  cache = _fill_cache(cfg, params, prompt, cache)
  x = jax.random.randint(jax.random.key(2), (batch, width), 0, cfg.vocab_size)
  return lambda: loop(params, x, cache)


def prefill_thunk(cfg, params, prompts, lens, cache_len, drafter, dparams):
  """A thunk for the part of `generate` before its while loop: target (and drafter) prefill."""

  @jax.jit
  def pre(params, dparams, prompts, lens):
    out = forward(cfg, params, prompts, cache=KVCache.init(cfg, 1, cache_len))
    first = jnp.argmax(out.logits[0, lens[0] - 1])
    dstate = None
    if drafter is not None:
      dstate = drafter.init_state(dparams, 1, cache_len)
      dstate = drafter.prefill(dparams, dstate, prompts, lens - 1, out.hidden)
    return first, out.cache, dstate

  return lambda: pre(params, dparams, prompts, lens)


def measure(thunks, repeats, clock, log=print):
  """name -> seconds of each of `repeats` interleaved rounds (after one warm-up call each)."""
  now = time.process_time if clock == "cpu" else time.perf_counter
  for name, fn in thunks.items():
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    log(f"  warmed {name} ({time.perf_counter() - t0:.1f} s)")
  times = {name: [] for name in thunks}
  for r in range(repeats):
    for name, fn in thunks.items():
      t0 = now()
      jax.block_until_ready(fn())
      times[name].append(now() - t0)
    log(f"  round {r + 1}/{repeats}")
  return times


def main():
  ap = common.parser(__doc__, target=None, out="optional")
  ap.add_argument("--window", type=int, default=4, help="draft window K")
  ap.add_argument("--max_new_tokens", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
  ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
  ap.add_argument("--prompt_len", type=int, default=128)
  ap.add_argument("--hidden", type=int, default=512)
  ap.add_argument("--layers", type=int, default=8)
  ap.add_argument("--vocab", type=int, default=8192)
  ap.add_argument("--draft_hidden", type=int, default=256)
  ap.add_argument("--draft_layers", type=int, default=1)
  ap.add_argument("--inner", type=int, default=48, help="chained steps per model-call timing")
  args = ap.parse_args()
  if args.clock == "cpu":  # XLA reads XLA_FLAGS when the backend starts: before any jax op.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD).strip()
  k, n, plen = args.window, args.max_new_tokens, args.prompt_len

  hd = 64
  tcfg = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                     intermediate_size=int(2.75 * args.hidden), num_layers=args.layers,
                     num_heads=args.hidden // hd, num_kv_heads=args.hidden // hd, head_dim=hd,
                     max_position_embeddings=4096)
  dcfg = tcfg.replace(hidden_size=args.draft_hidden, intermediate_size=int(2.75 * args.draft_hidden),
                      num_layers=args.draft_layers, num_heads=args.draft_hidden // hd,
                      num_kv_heads=args.draft_hidden // hd)
  tparams = Transformer(tcfg, rngs=nnx.Rngs(0)).params()
  dparams = Transformer(dcfg, rngs=nnx.Rngs(1)).params()
  print(f"target {tcfg.num_params() / 1e6:.1f}M params, random drafter {dcfg.num_params() / 1e6:.1f}M;"
        f" K={k}, prompt {plen}, max_new {n}, {args.repeats} rounds, {args.clock} clock, "
        f"{jax.devices()[0].platform}")

  prompts = jax.random.randint(jax.random.key(3), (1, plen), 0, tcfg.vocab_size, jnp.int32)
  lens = jnp.full((1,), plen, jnp.int32)
  sp = sampling.SamplingParams()
  cap, cap_ar = engine.capacity(plen, n, k), engine.capacity(plen, n, 0)
  drafters = {"random": (f"random LM ({args.draft_layers}L, h{args.draft_hidden})",
                         LMDrafter(dcfg), dparams, dcfg),
              "self": ("self-draft (target)", LMDrafter(tcfg), tparams, tcfg)}

  def gen(drafter=None, dp=None, window=0):
    kw = dict(drafter=drafter, drafter_params=dp, window=window, max_new_tokens=n, sp=sp)
    return lambda: engine.generate(tcfg, tparams, prompts, lens, jax.random.key(0), **kw)

  thunks = {
      "t1": step_loop(tcfg, tparams, cap, plen, 1, args.inner),
      "tk1": step_loop(tcfg, tparams, cap, plen, k + 1, args.inner),
      "t2": step_loop(tcfg, tparams, cap, plen, 2, args.inner),
      "d1": step_loop(dcfg, dparams, cap, plen, 1, args.inner),
      "d2": step_loop(dcfg, dparams, cap, plen, 2, args.inner),
      "ar_gen": gen(),
      "ar_pre": prefill_thunk(tcfg, tparams, prompts, lens, cap_ar, None, None),
  }
  for key, (_, drafter, dp, _) in drafters.items():
    thunks[f"{key}_gen"] = gen(drafter, dp, k)
    thunks[f"{key}_pre"] = prefill_thunk(tcfg, tparams, prompts, lens, cap, drafter, dp)
  raw = measure(thunks, args.repeats, args.clock)
  per_step = ("t1", "tk1", "t2", "d1", "d2")  # fori_loop thunks: `inner` calls each
  stats = {s: {name: f(ts) / (args.inner if name in per_step else 1) for name, ts in raw.items()}
           for s, f in (("median", statistics.median), ("min", min))}

  ar_out = jax.device_get(thunks["ar_gen"]())
  outs = {key: jax.device_get(thunks[f"{key}_gen"]()) for key in drafters}
  for out in outs.values():
    assert np.array_equal(out.tokens, ar_out.tokens), "greedy speculative output differs from AR"
  ar_steps = int(ar_out.num_steps[0])

  def analyze(m):
    """Table rows and the autoregressive summary from one statistic (seconds per thunk call)."""
    ar_dec = m["ar_gen"] - m["ar_pre"]
    t1, tk1 = m["t1"], m["tk1"]
    rows = []
    for key, (name, _, _, _) in drafters.items():
      td, td_ingest = (m["t1"], m["t2"]) if key == "self" else (m["d1"], m["d2"])
      out = outs[key]
      steps = int(out.num_steps[0])
      tau = float(out.accept_lengths[0, :steps].mean())
      dec = m[f"{key}_gen"] - m[f"{key}_pre"]
      measured = ar_dec / dec
      predicted = tau * t1 / (k * td + tk1)
      # The calls LMDrafter really makes per step: a 2-token ingest, then K-1 one-token steps.
      calls = td_ingest + (k - 1) * td + tk1
      rows.append(dict(
          drafter=name, t1_ms=1e3 * t1, tk1_ms=1e3 * tk1, tdraft_ms=1e3 * td,
          tdraft_ingest_ms=1e3 * td_ingest, gamma=td / t1, tau=tau, measured_speedup=measured,
          predicted_speedup=predicted, ratio=measured / predicted,
          predicted_speedup_actual_calls=tau * t1 / calls,
          ratio_actual_calls=measured * calls / (tau * t1),
          end_to_end_speedup=m["ar_gen"] / m[f"{key}_gen"], steps=steps,
          spec_step_ms=1e3 * dec / steps, model_calls_step_ms=1e3 * (k * td + tk1),
          actual_calls_step_ms=1e3 * calls, decode_s=dec, prefill_s=m[f"{key}_pre"],
          total_s=m[f"{key}_gen"]))
    ar = dict(steps=ar_steps, step_ms=1e3 * ar_dec / ar_steps, t1_ms=1e3 * t1, decode_s=ar_dec,
              prefill_s=m["ar_pre"], total_s=m["ar_gen"], step_over_t1=ar_dec / ar_steps / t1)
    return rows, ar

  results = {s: analyze(m) for s, m in stats.items()}
  rows, ar = results["median"]
  print(f"\nautoregressive: {ar_steps} steps of {ar['step_ms']:.2f} ms vs T(1) {ar['t1_ms']:.2f} ms "
        f"(x{ar['step_over_t1']:.3f}); prefill {1e3 * ar['prefill_s']:.1f} ms excluded\n")
  head = ["drafter", "T(1) ms", f"T(K+1={k + 1}) ms", "T_draft ms", "gamma", "tau",
          "measured speedup", "predicted speedup", "ratio"]
  table = common.markdown_table(head, [
      [r["drafter"], f"{r['t1_ms']:.2f}", f"{r['tk1_ms']:.2f}", f"{r['tdraft_ms']:.2f}",
       f"{r['gamma']:.3f}", f"{r['tau']:.2f}", f"{r['measured_speedup']:.3f}",
       f"{r['predicted_speedup']:.3f}", f"{r['ratio']:.3f}"] for r in rows])
  print(table)
  print()
  for r, r_min in zip(rows, results["min"][0]):
    print(f"{r['drafter']}: {r['steps']} steps of {r['spec_step_ms']:.2f} ms; K*T_draft + T(K+1) = "
          f"{r['model_calls_step_ms']:.2f} ms; the calls LMDrafter makes (T_draft(2) "
          f"{r['tdraft_ingest_ms']:.2f} + {k - 1}*T_draft + T(K+1)) {r['actual_calls_step_ms']:.2f} ms,"
          f" ratio against them {r['ratio_actual_calls']:.3f}; end-to-end speedup (with prefill) "
          f"{r['end_to_end_speedup']:.3f}; ratio from the fastest rounds {r_min['ratio']:.3f}")

  if args.out:
    res = dict(args=vars(args), target_params=tcfg.num_params(), drafter_params=dcfg.num_params(),
               backend=jax.devices()[0].platform, machine=platform.processor() or platform.machine(),
               ar=ar, rows=rows, min_over_rounds=dict(ar=results["min"][1], rows=results["min"][0]),
               rounds_s=raw)
    common.write_results(args.out, res, table,
                         title="Speculative decoding engine speed against the cost model")


if __name__ == "__main__":
  main()
