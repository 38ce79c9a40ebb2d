"""Where a speculative step's time goes on a real target: cached target forwards of 1 and K+1
tokens, the autoregressive step, and whole speculative steps at each K, in one run.

  python benchmarks/spec_step_cost.py --target ~/.cache/ppow_jax/models/SmolLM2-135M-Instruct \
    --drafter runs/default/sft --windows 1,2,3,4 --out runs/spec_step_cost.json

Forwards are `engine_speed.step_loop`s (chained inside one jitted fori_loop, decode-layout
weights, a cache filled to `--context` slots); autoregressive and speculative decoding run the
engine's real `generate` on one prompt of `--context` random tokens for `--new_tokens` tokens,
a step's cost being wall time over verification steps. Everything is timed by
`engine_speed.measure` in interleaved rounds after a compiling call (median reported), so a
drift in machine speed hits every variant alike. "step_over_ar" (a speculative step in
autoregressive steps) is what tau must beat: speedup = tau / step_over_ar.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.engine_speed import measure, step_loop  # noqa: E402
from ppow_jax.decoding import engine  # noqa: E402
from ppow_jax.decoding.drafter_io import load_drafter  # noqa: E402
from ppow_jax.models import hf_checkpoint, transformer  # noqa: E402


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--target", required=True, help="Hugging Face checkpoint directory")
  ap.add_argument("--drafter", default="", help="drafter directory (EAGLE-3 export or run dir)")
  ap.add_argument("--windows", default="1,2,3,4")
  ap.add_argument("--context", type=int, default=200)
  ap.add_argument("--new_tokens", type=int, default=128)
  ap.add_argument("--inner", type=int, default=20, help="chained forwards per timed call")
  ap.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
  ap.add_argument("--out", default="")
  a = ap.parse_args(argv)
  windows = [int(k) for k in a.windows.split(",") if k.strip()]

  model = hf_checkpoint.load_model(a.target)
  cfg, params = model.cfg, transformer.unstack(model.params())
  cache_len = engine.capacity(a.context, a.new_tokens, max(windows))
  thunks = {f"forward_{w}": step_loop(cfg, params, cache_len, a.context, w, a.inner)
            for w in sorted({1, *(k + 1 for k in windows)})}
  prompt = np.random.RandomState(0).randint(100, min(2000, cfg.vocab_size), (1, a.context))
  prompt, lens = jnp.asarray(prompt, jnp.int32), jnp.asarray([a.context], jnp.int32)
  rng = jax.random.key(0)
  gen = lambda **kw: (lambda: engine.generate(  # noqa: E731
      cfg, params, prompt, lens, rng, max_new_tokens=a.new_tokens, **kw))
  thunks["autoregressive"] = gen()
  steps = {}
  if a.drafter:
    drafter, dparams = load_drafter(a.drafter, cfg, params)
    for k in windows:
      thunks[f"K{k}"] = gen(drafter=drafter, drafter_params=dparams, window=k)
      steps[k] = int(jax.device_get(thunks[f"K{k}"]().num_steps[0]))
  med = {n: statistics.median(t) for n, t in measure(thunks, a.repeats, "wall").items()}

  res = {"context": a.context, "new_tokens": a.new_tokens, "device": str(jax.devices()[0])}
  for n in thunks:
    if n.startswith("forward_"):
      res[f"{n}_ms"] = med[n] / a.inner * 1e3
  ar = med["autoregressive"] / a.new_tokens
  res["autoregressive_step_ms"] = ar * 1e3
  print({k: round(v, 2) for k, v in res.items() if k.endswith("_ms")})
  res["speculative"] = {}
  for k in windows if a.drafter else ():
    step = med[f"K{k}"] / steps[k]
    r = res["speculative"][str(k)] = {"step_ms": step * 1e3, "steps": steps[k],
                                      "step_over_ar": step / ar}
    print(f"K={k}: {r['step_ms']:.2f} ms a step = {r['step_over_ar']:.2f} autoregressive steps")
  if a.out:
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
      json.dump(res, f, indent=1)
    print(f"-> {a.out}")


if __name__ == "__main__":
  main()
