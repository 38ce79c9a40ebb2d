"""Token-level (EAGLE-3 TTT) training throughput on a real target: online vs cached target
features, float32 vs bfloat16 drafter compute, in one run.

  python benchmarks/sft_throughput.py --target ~/.cache/ppow_jax/models/SmolLM2-135M-Instruct \
    --batch 8 --seq_len 512 --draft_vocab 16384 --steps 3 --out runs/sft_throughput

Each variant runs the real jitted step of `ppow_jax.eagle3.train_step` (7 TTT steps, AdamW) on
random token batches; timings leave the first (compiling) step out. Reported per variant: tokens/s
(wall), CPU seconds per 1,000 training tokens (user + system, both cores), and for the cached
mode the one-off cost of building the feature cache per 1,000 tokens (a target forward in
float32 over the sequences, written as bfloat16). Variants are timed one after the other, so
their ratios hold even on a machine other jobs share. With --out, writes OUT/results.json and
OUT/results.md.
"""

from __future__ import annotations

import resource
import time

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import common
from ppow_jax.eagle3 import model as e3
from ppow_jax.eagle3.train_step import make_train_step
from ppow_jax.models import transformer
from ppow_jax.training import drafter_init


def cpu_seconds():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def legacy_step(tcfg, dcfg, optimizer, steps, decay):
  """The step before this benchmark's changes: target forward with full-vocabulary logits,
  float32 drafter (kept here as the baseline being measured against)."""
  from ppow_jax.eagle3 import ttt
  import optax

  def train_step(state, target_params, d2t, batch, rng=None):
    out = transformer.forward(tcfg, target_params, batch["tokens"], key_valid=batch["valid"],
                              hidden_layers=dcfg.aux_layers)
    aux, tlogits = jax.lax.stop_gradient(out.hidden), jax.lax.stop_gradient(out.logits)
    loss_fn = lambda p: ttt.ttt_loss(dcfg, p, target_params["embed"], d2t, batch["tokens"], aux,
                                     tlogits, batch["loss_mask"], steps=steps, decay=decay)
    (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    return ({"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
             "step": state["step"] + 1}, {"loss": loss})

  return train_step


def main():
  ap = common.parser(__doc__, out="optional")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq_len", type=int, default=512)
  ap.add_argument("--draft_vocab", type=int, default=16384)
  ap.add_argument("--steps", type=int, default=3, help="timed steps per variant")
  ap.add_argument("--variants", default="legacy,online-f32,online-bf16,cached-bf16")
  args = ap.parse_args()

  target, _ = common.load_target(args.target, tokenizer=False)
  tp = target.params()
  dcfg = e3.Eagle3Config.from_target(target.cfg, draft_vocab_size=args.draft_vocab)
  drafter = e3.Eagle3Drafter(dcfg, rngs=nnx.Rngs(0))
  optim = ml_collections.ConfigDict(dict(learning_rate=1e-4, warmup_steps=1, final_lr_fraction=1.0,
                                         b1=0.9, b2=0.95, weight_decay=0.0, grad_clip=1.0))
  opt = drafter_init.make_optimizer(optim, 1000)
  rng = np.random.default_rng(0)
  b, t = args.batch, args.seq_len
  batch = {"tokens": rng.integers(0, target.cfg.vocab_size, (b, t)).astype(np.int32),
           "valid": np.ones((b, t), bool), "loss_mask": np.ones((b, t), bool)}
  tokens_per_step = b * t

  # The feature cache's one-off cost: a float32 target forward per sequence (features.build).
  feats = jax.jit(lambda p, x, v: jnp.concatenate(
      [*(o := transformer.forward(target.cfg, p, x, key_valid=v, hidden_layers=dcfg.aux_layers,
                                  return_logits=False)).hidden, o.last_hidden], -1
  ).astype(jnp.bfloat16))
  jax.block_until_ready(feats(tp, batch["tokens"], batch["valid"]))
  c0, w0 = cpu_seconds(), time.perf_counter()
  for _ in range(args.steps):
    cached = np.asarray(jax.device_get(feats(tp, batch["tokens"], batch["valid"])))
  cache_cpu = (cpu_seconds() - c0) / (args.steps * tokens_per_step) * 1000
  cache_wall = (time.perf_counter() - w0) / (args.steps * tokens_per_step) * 1000

  results = {}
  for name in args.variants.split(","):
    feat_mode, _, dtype = name.partition("-")
    if name == "legacy":
      fn = legacy_step(target.cfg, dcfg, opt, 7, 0.8)
    else:
      fn = make_train_step(target.cfg, dcfg, opt, steps=7, decay=0.8,
                           compute_dtype={"f32": "float32", "bf16": "bfloat16"}[dtype])
    step = jax.jit(fn, donate_argnums=(0,))
    params = jax.tree.map(jnp.copy, drafter.params())  # each variant donates its own copy
    state = {"params": params, "opt_state": opt.init(params), "step": jnp.zeros((), jnp.int32)}
    bt = dict(batch, features=cached) if feat_mode == "cached" else batch
    t0 = time.perf_counter()
    state, m = step(state, tp, drafter.d2t[...], bt)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    c0, w0 = cpu_seconds(), time.perf_counter()
    for _ in range(args.steps):
      state, m = step(state, tp, drafter.d2t[...], bt)
      jax.block_until_ready(m)
    wall = (time.perf_counter() - w0) / args.steps
    cpu = (cpu_seconds() - c0) / args.steps
    results[name] = {"tokens_per_second": tokens_per_step / wall,
                     "cpu_s_per_1k_tokens": cpu / tokens_per_step * 1000,
                     "step_seconds": wall, "first_step_seconds": compile_s,
                     "loss": float(m["loss"])}
    print(f"{name:12s} {results[name]['tokens_per_second']:7.1f} tokens/s  "
          f"{results[name]['cpu_s_per_1k_tokens']:6.2f} CPU s / 1k tokens  "
          f"(step {wall:.1f} s, first {compile_s:.0f} s)", flush=True)
  print(f"feature cache build: {cache_cpu:.2f} CPU s / 1k tokens ({cache_wall:.2f} s wall), "
        f"{4 * target.cfg.hidden_size * 2 / 1024:.1f} KiB per token on disk")
  base = results.get("legacy")
  if base:
    for name, r in results.items():
      print(f"  {name}: {r['tokens_per_second'] / base['tokens_per_second']:.2f}x legacy")
  if args.out:
    table = common.markdown_table(
        ["variant", "tokens/s", "CPU s / 1k tokens", "step s", "first step s"],
        [[name, f"{r['tokens_per_second']:.1f}", f"{r['cpu_s_per_1k_tokens']:.2f}",
          f"{r['step_seconds']:.1f}", f"{r['first_step_seconds']:.0f}"]
         for name, r in results.items()])
    common.write_results(
        args.out, {"args": vars(args), "results": results,
                   "feature_cache": {"cpu_s_per_1k_tokens": cache_cpu,
                                     "wall_s_per_1k_tokens": cache_wall}},
        f"{table}\n\nfeature cache build: {cache_cpu:.2f} CPU s / 1k tokens",
        title="Token-level training throughput")


if __name__ == "__main__":
  main()
