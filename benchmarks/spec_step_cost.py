"""Where a speculative step's time goes: bare target forwards of 1 and K+1 tokens, an
autoregressive step, and whole speculative steps at each K, in one run.

  python benchmarks/spec_step_cost.py --target ~/.cache/ppow_jax/models/SmolLM2-135M-Instruct \
    --drafter runs/default/sft --windows 1,2,3,4 --out runs/spec_step_cost.json

Bare forwards run 20 times inside one jitted `fori_loop` over a KV cache filled to
`--context` slots (dispatch amortised); autoregressive and speculative decoding run the
engine's real `generate` on one prompt of `--context` random tokens for `--new_tokens`
tokens, and a step's cost is wall time over verification steps. Every timing is the best of
3 after a compiling call. The ratio "step_over_ar" (a speculative step in autoregressive
steps) is what tau must beat for a speedup: speedup = tau / step_over_ar.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ppow_jax.decoding import engine  # noqa: E402
from ppow_jax.decoding.drafter_io import load_drafter  # noqa: E402
from ppow_jax.models import hf_checkpoint, transformer  # noqa: E402
from ppow_jax.models.kv_cache import KVCache  # noqa: E402

LOOP = 20  # forwards per timed call of the bare-forward loops


def best_seconds(fn, reps: int = 3) -> float:
  jax.block_until_ready(fn())  # compile
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best


def bare_forward_ms(cfg, params, cache, context: int, width: int, hidden=(),
                    logits: bool = True) -> float:
  """One target forward over `width` new tokens at a `context`-slot cache, in ms."""

  @jax.jit
  def loop(params, cache):
    toks = jnp.ones((1, width), jnp.int32)

    def body(_, c):
      o = transformer.forward(cfg, params, toks, cache=c.with_lengths(jnp.asarray([context])),
                              hidden_layers=hidden, return_logits=logits)
      # Depend on the output so XLA keeps it; the length stays `context`.
      used = (o.logits if logits else o.last_hidden).sum() > 1e30
      return o.cache.with_lengths(c.lengths + used.astype(jnp.int32))

    return jax.lax.fori_loop(0, LOOP, body, cache)

  return best_seconds(lambda: loop(params, cache)) / LOOP * 1e3


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--target", required=True, help="Hugging Face checkpoint directory")
  ap.add_argument("--drafter", default="", help="drafter directory (EAGLE-3 export or run dir)")
  ap.add_argument("--windows", default="1,2,3,4")
  ap.add_argument("--context", type=int, default=200)
  ap.add_argument("--new_tokens", type=int, default=128)
  ap.add_argument("--out", default="")
  a = ap.parse_args(argv)
  windows = [int(k) for k in a.windows.split(",") if k.strip()]

  model = hf_checkpoint.load_model(a.target)
  cfg, params = model.cfg, transformer.unstack(model.params())
  bucket = engine.capacity(a.context, 0, 0)
  prompt = np.random.RandomState(0).randint(100, min(2000, cfg.vocab_size), (1, bucket))
  prompt, lens = jnp.asarray(prompt, jnp.int32), jnp.asarray([a.context], jnp.int32)
  rng = jax.random.key(0)
  cache = KVCache.init(cfg, 1, engine.capacity(bucket, a.new_tokens, max(windows)),
                       per_layer=True)
  res = {"context": a.context, "new_tokens": a.new_tokens, "device": str(jax.devices()[0])}
  res["forward_1_ms"] = bare_forward_ms(cfg, params, cache, a.context, 1)
  res["forward_1_no_head_ms"] = bare_forward_ms(cfg, params, cache, a.context, 1, logits=False)
  for k in windows:
    res[f"forward_{k + 1}_ms"] = bare_forward_ms(cfg, params, cache, a.context, k + 1)
  print({k: round(v, 2) for k, v in res.items() if k.endswith("_ms")}, flush=True)

  t_ar = best_seconds(lambda: engine.generate(cfg, params, prompt, lens, rng,
                                              max_new_tokens=a.new_tokens))
  res["autoregressive_step_ms"] = t_ar / a.new_tokens * 1e3
  print(f"autoregressive: {res['autoregressive_step_ms']:.2f} ms a token", flush=True)
  if a.drafter:
    drafter, dparams = load_drafter(a.drafter, cfg, params)
    res["speculative"] = {}
    for k in windows:
      run = lambda: engine.generate(cfg, params, prompt, lens, rng, drafter=drafter,  # noqa: E731
                                    drafter_params=dparams, window=k,
                                    max_new_tokens=a.new_tokens)
      steps = int(jax.device_get(run().num_steps[0]))
      t = best_seconds(run)
      r = res["speculative"][str(k)] = {
          "step_ms": t / steps * 1e3, "steps": steps,
          "step_over_ar": (t / steps) / (t_ar / a.new_tokens)}
      print(f"K={k}: {r['step_ms']:.2f} ms a step = {r['step_over_ar']:.2f} autoregressive "
            "steps", flush=True)
  if a.out:
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
      json.dump(res, f, indent=1)
    print(f"-> {a.out}")


if __name__ == "__main__":
  main()
