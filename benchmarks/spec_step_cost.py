"""Where a speculative step's time goes on a real target: cached target forwards of 1 and K+1
tokens, the autoregressive step, and whole speculative steps at each K, in one run, each beside
its memory roofline.

  python benchmarks/spec_step_cost.py --target ~/.cache/ppow_jax/models/SmolLM2-135M-Instruct \
    --drafter runs/default/sft --windows 1,2,3,4 --compare_xla --out runs/spec_step_cost

Forwards are `engine_speed.step_loop`s (chained inside one jitted fori_loop, decode-layout
weights, a cache filled to `--context` slots); autoregressive and speculative decoding run the
engine's real `generate` on one prompt of `--context` random tokens for `--new_tokens` tokens,
a step's cost being wall time over verification steps. Everything is timed by
`engine_speed.measure` in interleaved rounds after a compiling call (median reported), so a
drift in machine speed hits every variant alike. "step_over_ar" (a speculative step in
autoregressive steps) is what tau must beat: speedup = tau / step_over_ar. Without --drafter
only the forwards and the autoregressive step are timed. --draft_vocabs 4096,8192,... times the
speculative steps with random EAGLE-3 drafters of those draft-vocabulary sizes (the target's
shapes otherwise): what a larger draft vocabulary costs a step, whatever it is trained on.

Roofline: a forward reads every weight once (the embedding only at its rows) and the whole KV
cache (attention spans all slots, masked); bytes read / time is the bandwidth it implies, to set
against the host's memory bandwidth. --compare_xla times the forwards a second time with XLA's
own dots on row-major weights (PPOW_JAX_CPU_MATVEC=0: what the engine ran before cpu_kernels;
a second copy of the weights), in the same rounds; PPOW_JAX_CPU_MATVEC=0 in the environment runs
everything that way. With --out, writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import os
import platform
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import common
from engine_speed import SINGLE_THREAD, measure, step_loop
from ppow_jax.decoding import engine
from ppow_jax.decoding.drafter_io import load_drafter
from ppow_jax.models import cpu_kernels, transformer
from ppow_jax.models.kv_cache import KVCache

_SWITCH = "PPOW_JAX_CPU_MATVEC"
_ISA = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "asimd", "sve")


def cpu_model() -> dict:
  """The host CPU as /proc/cpuinfo names it, its core count and its vector-ISA flags."""
  name, flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          name = value.strip()
        elif key.strip() in ("flags", "Features"):
          flags = set(value.split())
  except OSError:
    pass
  return {"model": name, "cores": os.cpu_count(), "isa": [f for f in _ISA if f in flags]}


def forward_bytes(cfg, params, cache_len: int, width: int) -> dict:
  """Bytes a cached `width`-token forward reads: weights once, embedding rows, the KV cache."""
  weights = sum(x.nbytes for k, v in params.items() if k != "embed" for x in jax.tree.leaves(v))
  embed = params["embed"]
  cache = jax.eval_shape(lambda: KVCache.init(cfg, 1, cache_len, per_layer=True))
  return {"weights": weights + width * embed.shape[1] * embed.dtype.itemsize,
          "kv_cache": sum(x.size * x.dtype.itemsize for x in cache.k + cache.v)}


def random_eagle3(cfg, params, draft_vocab: int):
  """(drafter, params) for the engine: an EAGLE-3 drafter of `cfg`'s shapes with random weights
  and a `draft_vocab`-token draft vocabulary (its step costs what a trained one's does)."""
  from flax import nnx

  from ppow_jax.eagle3 import engine_adapter, model as e3
  d = e3.Eagle3Drafter(e3.Eagle3Config.from_target(cfg, draft_vocab), rngs=nnx.Rngs(0))
  return engine_adapter.Eagle3EngineDrafter(d.cfg), engine_adapter.Eagle3EngineDrafter.bind(
      d, params)


def _compiled(thunk):
  """The thunk, compiled now: under the PPOW_JAX_CPU_MATVEC setting of this moment."""
  jax.block_until_ready(thunk())
  return thunk


def main(argv=None):
  ap = common.parser(__doc__, out="optional")
  ap.add_argument("--drafter", default="", help="drafter directory (EAGLE-3 export or run dir)")
  ap.add_argument("--draft_vocabs", default="",
                  help="comma-separated draft-vocabulary sizes: random EAGLE-3 drafters' steps")
  ap.add_argument("--windows", default="1,2,3,4")
  ap.add_argument("--context", type=int, default=200)
  ap.add_argument("--new_tokens", type=int, default=128)
  ap.add_argument("--inner", type=int, default=20, help="chained forwards per timed call")
  ap.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
  ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                  help="wall seconds, XLA's threads (a quiet machine); or process CPU seconds, "
                       "one thread (stable when other jobs share the cores)")
  ap.add_argument("--compare_xla", action="store_true",
                  help="also time the forwards with XLA's dots on row-major weights, interleaved")
  a = ap.parse_args(argv)
  if a.clock == "cpu":  # XLA reads XLA_FLAGS when the backend starts: before any jax op.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD).strip()
  windows = [int(k) for k in a.windows.split(",") if k.strip()]
  cpu = cpu_model()

  model, _ = common.load_target(a.target, tokenizer=False)
  cfg, params = model.cfg, transformer.unstack(model.params())
  kernel = cpu_kernels.enabled()
  print(f"{cpu['model']} ({cpu['cores']} cores; {' '.join(cpu['isa'])}), "
        f"{jax.devices()[0].platform}; CPU kernel (packed weights) {'on' if kernel else 'off'}; "
        f"{a.clock} clock")
  cache_len = engine.capacity(a.context, a.new_tokens, max(windows))
  widths = sorted({1, *(k + 1 for k in windows)})
  thunks = {f"forward_{w}": _compiled(step_loop(cfg, params, cache_len, a.context, w, a.inner))
            for w in widths}
  if a.compare_xla and kernel:
    before = os.environ.get(_SWITCH)
    os.environ[_SWITCH] = "0"  # row-major weights (unpacked) and XLA's dots
    xla_params = transformer.unstack(model.params())
    thunks.update({f"xla_forward_{w}": _compiled(step_loop(cfg, xla_params, cache_len, a.context,
                                                           w, a.inner)) for w in widths})
    if before is None:
      os.environ.pop(_SWITCH)
    else:
      os.environ[_SWITCH] = before
  prompt = np.random.RandomState(0).randint(100, min(2000, cfg.vocab_size), (1, a.context))
  prompt, lens = jnp.asarray(prompt, jnp.int32), jnp.asarray([a.context], jnp.int32)
  rng = jax.random.key(0)
  gen = lambda **kw: (lambda: engine.generate(  # noqa: E731
      cfg, params, prompt, lens, rng, max_new_tokens=a.new_tokens, **kw))
  thunks["autoregressive"] = gen()
  # (thunk suffix, drafter, params): the trained drafter, then random ones per draft vocabulary.
  drafters = [("", *load_drafter(a.drafter, cfg, params))] if a.drafter else []
  drafters += [(f"_vocab{vd}", *random_eagle3(cfg, params, vd))
               for vd in (int(x) for x in a.draft_vocabs.split(",") if x.strip())]
  steps = {}  # thunk name -> verification steps of its decode
  for suffix, drafter, dparams in drafters:
    for k in windows:
      name = f"K{k}{suffix}"
      thunks[name] = gen(drafter=drafter, drafter_params=dparams, window=k)
      steps[name] = int(jax.device_get(thunks[name]().num_steps[0]))
  rounds = measure(thunks, a.repeats, a.clock)
  med = {n: statistics.median(t) for n, t in rounds.items()}

  res = {"context": a.context, "new_tokens": a.new_tokens, "device": str(jax.devices()[0]),
         "cpu": cpu, "clock": a.clock, "kernel": kernel, "repeats": a.repeats,
         "forwards": {}, "speculative": {}}
  for prefix, label in (("", "forward"), ("xla_", "forward, XLA's dots")):
    base = med.get(f"{prefix}forward_1")
    for w in widths if base else ():
      n = f"{prefix}forward_{w}"
      if n not in med:
        continue
      sec = med[n] / a.inner
      b = forward_bytes(cfg, params, cache_len, w)
      mb = sum(b.values())
      res["forwards"][n] = r = {
          "ms": sec * 1e3, "over_forward_1": med[n] / base,
          "min_over_forward_1": min(rounds[n]) / min(rounds[f"{prefix}forward_1"]),
          "weights_mb": b["weights"] / 1e6, "kv_cache_mb": b["kv_cache"] / 1e6,
          "gb_per_s": mb / sec / 1e9}
      print(f"{label} of {w}: {r['ms']:.2f} ms = {r['over_forward_1']:.3f}x 1 token "
            f"(fastest rounds {r['min_over_forward_1']:.3f}x); reads {r['weights_mb']:.0f} MB "
            f"weights + {r['kv_cache_mb']:.0f} MB cache: {r['gb_per_s']:.1f} GB/s")
  ar = med["autoregressive"] / a.new_tokens
  ar_gb = sum(forward_bytes(cfg, params, cache_len, 1).values()) / ar / 1e9
  res["autoregressive_step_ms"], res["autoregressive_gb_per_s"] = ar * 1e3, ar_gb
  print(f"autoregressive step: {ar * 1e3:.2f} ms ({ar_gb:.1f} GB/s at one forward's bytes)")
  for name, n in steps.items():
    step = med[name] / n
    key = name[1:] if name[1:].isdigit() else name  # the trained drafter's rows: "4", as before
    r = res["speculative"][key] = {"step_ms": step * 1e3, "steps": n, "step_over_ar": step / ar}
    print(f"{name}: {r['step_ms']:.2f} ms a step = {r['step_over_ar']:.3f} autoregressive steps")
  if a.out:
    res["rounds_s"] = rounds
    rows = [[n, f"{r['ms']:.2f}", f"{r['over_forward_1']:.3f}", f"{r['gb_per_s']:.1f}"]
            for n, r in res["forwards"].items()]
    rows.append(["autoregressive step", f"{ar * 1e3:.2f}", "", f"{ar_gb:.1f}"])
    rows += [[f"speculative step {'K=' if k.isdigit() else ''}{k}", f"{r['step_ms']:.2f}",
              f"{r['step_over_ar']:.2f} autoregressive steps", ""]
             for k, r in res["speculative"].items()]
    common.write_results(a.out, res, common.markdown_table(
        ["call", "ms", "over 1-token forward", "GB/s"], rows),
        title="Where a speculative step's time goes")


if __name__ == "__main__":
  main()
