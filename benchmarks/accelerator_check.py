"""One prepared check of ppow_jax on an accelerator: correctness, inference speed, training steps.

  bash benchmarks/accelerator_check.sh --out OUT     # on the device (carried wheels installed)
  python benchmarks/accelerator_check.py --smoke --out /tmp/acc   # CPU, tiny shapes, ~1 minute

Stages (each guarded: a failure is recorded with its error and the others still run):
  correctness  greedy chain and tree decoding of stories260k equal autoregressive decoding
               (engine.generate, batch 1 and 8; a truncated-target LM drafter and a random
               EAGLE-3 drafter), float32 matmuls at `--precision` (default highest: no TF32).
  prefill      a target of real shape (configs/targets/NAME.py, random bfloat16 weights) reads
               a prompt batch: tokens/s and MFU.
  decode       one cached 1-token step at each `--decode_batches` (decode layout, as the engine).
  verify_cost  forward(K+1) / forward(1) at batch 1 for K+1 = 2..8 (the speculative premise:
               on an accelerator verification is memory-bound, so the ratio stays near 1).
  sft_step     the token-level EAGLE-3 step (`eagle3.train_step.make_train_step`: 7
               training-time-test steps, the config's draft vocabulary, the target's forward
               included).
  ppow_step    the PPOW step (`ppow.step.make_ppow_step` with configs/ppow.py's settings).
Both training steps are compiled from the dry run's `Plan` (modes/dryrun.py) on one device, so
the plan (XLA's memory_analysis() of that executable, and the held bytes from the shardings) is
for exactly the shapes that run; measured peak memory is the device's peak_bytes_in_use.

Stage groups run in their own subprocess (correctness; prefill+decode+verify_cost; sft_step;
ppow_step; --smoke: all in one): a crash or an out-of-memory in one cannot take down the
others, and each group's peak memory is its own. The whole check keeps to `--budget_s` (default 450 s): time left by a
group goes to the next, and the verification sweep stops adding widths before its group's
deadline. MFU = the step's matmul FLOPs (every dot_general of its jaxpr, scan bodies times
their length) / (seconds x the device's peak dense bfloat16 FLOP/s, from PEAK_BF16_FLOPS;
null for a device not in that table). Writes OUT/accelerator_check.json and
OUT/accelerator_check.md (device, jax version, commit), after every group.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
import traceback

import common
from common import REPO, commit
from ppow_jax import run_files

STAGES = ("correctness", "prefill", "decode", "verify_cost", "sft_step", "ppow_step")
GROUPS = {"correctness": ("correctness",), "inference": ("prefill", "decode", "verify_cost"),
          "sft": ("sft_step",), "ppow": ("ppow_step",)}
# --smoke runs every stage in one process: on a CPU the imports would cost more than isolation
# buys.
SMOKE_GROUPS = {"all": STAGES}
# Share of the remaining budget each group may use when it starts (time a group leaves unused
# goes to the later ones).
GROUP_SHARE = {"correctness": 0.2, "inference": 0.3, "sft": 0.2, "ppow": 0.3}
# Peak dense bfloat16 FLOP/s by device kind (NVIDIA data sheets; SXM parts). Checked in order:
# (substring of jax's device_kind, substrings that exclude it, FLOP/s).
PEAK_BF16_FLOPS = (("H200", (), 989e12), ("H100", ("PCIe", "NVL"), 989e12),
                   ("A100", (), 312e12))
SMOKE_XLA_FLAGS = ("--xla_backend_optimization_level=0",
                   "--xla_llvm_disable_expensive_passes=true")
RESULT_JSON, RESULT_MD = "accelerator_check.json", "accelerator_check.md"
# stories260k: the package's copy, else ../shared beside the checkout, else shared/ in it.
STORIES_CANDIDATES = (os.path.join(REPO, "ppow_jax", "assets", "stories260k"),
                      os.path.join(os.path.dirname(REPO), "shared", "models", "stories260k"),
                      os.path.join(REPO, "shared", "models", "stories260k"))
STORY_OPENINGS = ("Once upon a time", "One day, a little girl named Lily", "The sun was shining",
                  "Tom had a big red ball", "There was a small dog who", "Mom said it was time",
                  "In the forest, a bird", "Ben and Sue went to the park")


def default_stories() -> str:
  for path in STORIES_CANDIDATES:
    if os.path.exists(os.path.join(path, "config.json")):
      return path
  return STORIES_CANDIDATES[0]


def peak_bf16_flops(device_kind: str) -> float | None:
  """The device's peak dense bfloat16 FLOP/s, or None for a kind not in PEAK_BF16_FLOPS."""
  for name, excluded, flops in PEAK_BF16_FLOPS:
    if name in device_kind and not any(e in device_kind for e in excluded):
      return flops
  return None


def _int_list(s: str) -> list[int]:
  return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv=None):
  ap = common.parser(__doc__, target=None, out=None)  # its --target names a configs/targets file
  ap.add_argument("--out", required=True, help="folder for accelerator_check.json and .md")
  ap.add_argument("--smoke", action="store_true",
                  help="tiny shapes on any backend (CPU: ~100 CPU seconds): the suite's check")
  ap.add_argument("--stories", default=default_stories(), help="stories260k directory")
  ap.add_argument("--target", default="llama31_8b", help="configs/targets/NAME.py")
  ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
  ap.add_argument("--budget_s", type=float, default=450.0,
                  help="wall-clock budget, all stages (--smoke: 1200, for a busy CPU)")
  ap.add_argument("--precision", default="highest", choices=("highest", "default"),
                  help="float32 matmul precision of the correctness stage")
  ap.add_argument("--max_new_tokens", type=int, default=64, help="correctness decodes")
  ap.add_argument("--prefill", default="4,1024", help="prefill batch,length")
  ap.add_argument("--decode_batches", default="1,32")
  ap.add_argument("--context", type=int, default=1024, help="committed slots when decoding")
  ap.add_argument("--widths", default="2,4,8,3,6,5,7", help="K+1 values, most wanted first")
  ap.add_argument("--inner", type=int, default=16, help="chained steps per timed call")
  ap.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
  ap.add_argument("--seq_len", type=int, default=1024, help="training sequence length")
  ap.add_argument("--sft_batch", type=int, default=4)
  ap.add_argument("--ppow_batch", type=int, default=2)
  ap.add_argument("--train_layers", type=int, default=0,
                  help="target layers in the training steps (0 = all of the target's)")
  ap.add_argument("--train_steps", type=int, default=3, help="timed training steps")
  ap.add_argument("--plan_only", action="store_true",
                  help="training stages: compile and record the plan, allocate nothing, run no "
                       "step (sizes the shapes on a CPU)")
  ap.add_argument("--fail_stage", default="", help="force this stage to fail (tests the guard)")
  ap.add_argument("--group", default="", help=argparse.SUPPRESS)  # internal: run one group
  ap.add_argument("--result", default="", help=argparse.SUPPRESS)  # internal: its result file
  ap.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.smoke:  # tiny shapes; every stage's code path is the same
    for k, v in dict(max_new_tokens=12, prefill="2,32", decode_batches="1,4", context=32,
                     widths="2", inner=2, repeats=2, seq_len=32, sft_batch=2, ppow_batch=2,
                     train_layers=2, train_steps=2, budget_s=1200.0).items():
      if getattr(args, k) == ap.get_default(k):
        setattr(args, k, v)
  unknown = set(filter(None, args.stages.split(","))) - set(STAGES)
  if unknown:
    ap.error(f"--stages: unknown {sorted(unknown)}; known: {', '.join(STAGES)}")
  if args.fail_stage and args.fail_stage not in STAGES:
    ap.error(f"--fail_stage: {args.fail_stage!r} is not one of {', '.join(STAGES)}")
  return args


# --- FLOPs ----------------------------------------------------------------------------------------


def _sub_jaxprs(value):
  """Jaxprs held in an equation parameter (a jaxpr, a closed jaxpr, or a tuple of them)."""
  if hasattr(value, "eqns"):
    return [value]
  if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    return [value.jaxpr]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def jaxpr_matmul_flops(jaxpr) -> tuple[int, bool]:
  """(FLOPs of every dot_general, True if a while loop was counted once).

  A scan's body counts `length` times, a cond its costliest branch; a while loop's trip count
  is unknown at trace time (fori_loops with static bounds are scans), so it counts once.
  """
  if not hasattr(jaxpr, "eqns"):
    jaxpr = jaxpr.jaxpr
  total, approx = 0, False
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
      continue
    if name == "cond":
      counts = [jaxpr_matmul_flops(b) for b in eqn.params["branches"]]
      total += max(c for c, _ in counts)
      approx |= any(a for _, a in counts)
      continue
    times = eqn.params["length"] if name == "scan" else 1
    approx |= name == "while"
    for key, value in eqn.params.items():
      if name == "while" and key == "cond_jaxpr":
        continue
      for sub in _sub_jaxprs(value):
        f, a = jaxpr_matmul_flops(sub)
        total += times * f
        approx |= a
  return total, approx


def step_flops(fn, *args) -> tuple[int, bool]:
  """Matmul FLOPs of one call of `fn` on (abstract or concrete) args."""
  import jax
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args))


# --- shared helpers in a stage process ------------------------------------------------------------


def device_info() -> dict:
  import jax
  import jaxlib
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", "") or ""
  return {"platform": d.platform, "device_kind": kind, "device_count": jax.device_count(),
          "jax": jax.__version__, "jaxlib": getattr(jaxlib, "__version__", ""),
          "peak_bf16_flops": peak_bf16_flops(kind)}


def memory_stats() -> dict | None:
  """The first device's allocator statistics (None where the backend keeps none, e.g. CPU)."""
  import jax
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # noqa: BLE001 - a backend without the call
    return None
  if not stats:
    return None
  return {k: int(stats[k]) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")
          if k in stats}


def random_params(abstract, seed: int, shardings=None, std: float = 0.02):
  """Arrays for an abstract params pytree: norm scales 1, biases 0, other weights N(0, std^2),
  made on the device in their own dtype (no float32 copy of a bfloat16 model), placed by
  `shardings` (a matching pytree) if given."""
  import jax
  import jax.numpy as jnp

  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  placed = jax.tree.leaves(shardings) if shardings is not None else [None] * len(flat)
  keys = jax.random.split(jax.random.key(seed), len(flat))
  out = []
  for (path, x), key, sharding in zip(flat, keys, placed):
    name = jax.tree_util.keystr(path)
    if "norm" in name.rsplit("[", 1)[-1]:
      fill = functools.partial(jnp.ones, x.shape, x.dtype)
    elif "bias" in name.rsplit("[", 1)[-1]:
      fill = functools.partial(jnp.zeros, x.shape, x.dtype)
    else:
      fill = functools.partial(lambda k: jax.random.normal(k, x.shape, x.dtype) * std, key)
    out.append(jax.jit(fill, out_shardings=sharding)())
  return jax.tree_util.tree_unflatten(treedef, out)


def tree_bytes(tree) -> int:
  import jax
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def load_target_config(name: str, smoke: bool, batch: int = 0, seq_len: int = 0, layers: int = 0):
  """configs/targets/NAME.py on one device (no topology), with the training shapes; in smoke
  mode the dry run's `tiny` copy of it (same structure, toy size)."""
  import configs
  from ppow_jax.modes import dryrun

  c = configs.load(f"targets/{name}")
  with c.unlocked():
    c.topology = ""
    c.mesh.update(data=1, fsdp=1, tensor=1)
  if smoke:
    c = dryrun.tiny(c)
    with c.unlocked():
      c.ppow.ttt_steps = 2  # unrolled in the graph: compile time grows with it
  with c.unlocked():
    if batch:
      c.train.batch_size = batch
    if seq_len:
      c.data.seq_len = seq_len
    if layers:
      c.target.arch.num_hidden_layers = layers
  return c


class Deadline:
  def __init__(self, at: float):
    self.at = at or float("inf")

  def left(self) -> float:
    return self.at - time.time()


# --- stages ---------------------------------------------------------------------------------------


def stage_correctness(args, deadline, record):
  """Greedy chain and tree decoding equal autoregressive decoding, token for token."""
  import flax.nnx as nnx
  import jax
  import jax.numpy as jnp
  import numpy as np

  from ppow_jax.decoding import engine
  from ppow_jax.decoding.drafter import LMDrafter
  from ppow_jax.decoding.runner import bucket_length
  from ppow_jax.decoding.tree import TreeSpec
  from ppow_jax.eagle3 import Eagle3Config, Eagle3Drafter
  from ppow_jax.eagle3.engine_adapter import Eagle3EngineDrafter
  from ppow_jax.models import transformer
  from ppow_jax.models.hf_checkpoint import load_model

  if not os.path.exists(os.path.join(args.stories, "config.json")):
    raise FileNotFoundError(f"stories260k not found at {args.stories} (--stories PATH)")
  model = load_model(args.stories)
  cfg = model.cfg
  stacked = model.params()
  params = transformer.unstack(stacked)  # the engine's decode layout, as runner.decode uses
  from tokenizers import Tokenizer
  tok = Tokenizer.from_file(os.path.join(args.stories, "tokenizer.json"))
  prompts = []
  for text in STORY_OPENINGS:
    ids = tok.encode(text).ids
    prompts.append(ids if ids[:1] == [cfg.bos_token_id] else [cfg.bos_token_id] + ids)
  # Drafters: the target's first 3 layers (partial acceptance: rollbacks happen) and a random
  # EAGLE-3 drafter (the trained drafter's code path: fused features, draft vocabulary).
  n_trunc = max(1, cfg.num_layers - 2)
  trunc = transformer.unstack(dict(stacked, layers=jax.tree.map(lambda w: w[:n_trunc],
                                                               stacked["layers"])))
  e3cfg = Eagle3Config.from_target(cfg, draft_vocab_size=min(128, cfg.vocab_size))
  e3 = Eagle3Drafter(e3cfg, rngs=nnx.Rngs(0))
  drafters = {"trunc": (LMDrafter(cfg.replace(num_layers=n_trunc)), trunc),
              "eagle3": (Eagle3EngineDrafter(e3cfg), Eagle3EngineDrafter.bind(e3, stacked))}
  spec = TreeSpec(depth=4, topk=3, num_nodes=12)
  cases = [("chain K=4", "trunc", 1), ("chain K=4", "trunc", 8), ("tree 4,3,12", "trunc", 1),
           ("tree 4,3,12", "trunc", 8), ("chain K=4", "eagle3", 8), ("tree 4,3,12", "eagle3", 8)]
  if args.smoke:  # each case is a compile: chain and tree, both drafters, batch 1 and 8
    cases = [cases[0], cases[3], cases[5]]
  n_new = args.max_new_tokens
  rows, failures = [], []
  precision = None if args.precision == "default" else args.precision
  with jax.default_matmul_precision(precision):
    reference = {}
    for b in (1, 8):
      batch = prompts[:b]
      p = bucket_length(max(len(x) for x in batch), 16)
      toks = np.zeros((b, p), np.int32)
      for i, x in enumerate(batch):
        toks[i, :len(x)] = x
      lens = jnp.asarray([len(x) for x in batch], jnp.int32)
      t0 = time.perf_counter()
      out = engine.generate(cfg, params, jnp.asarray(toks), lens, jax.random.key(0),
                            max_new_tokens=n_new, eos_ids=())
      reference[b] = (jnp.asarray(toks), lens, jax.device_get(out))
      rows.append(dict(case="autoregressive", drafter="", batch=b, identical=True, tau=1.0,
                       tokens=int(np.sum(out.num_tokens)), seconds=time.perf_counter() - t0))
    for name, which, b in cases:
      if deadline.left() < 5:
        failures.append(f"{name} {which} batch {b}: not run (group deadline)")
        continue
      drafter, dparams = drafters[which]
      toks, lens, ref = reference[b]
      kw = dict(tree=spec) if name.startswith("tree") else dict(window=4)
      t0 = time.perf_counter()
      out = jax.device_get(engine.generate(cfg, params, toks, lens, jax.random.key(0),
                                           drafter=drafter, drafter_params=dparams,
                                           max_new_tokens=n_new, eos_ids=(), **kw))
      same = bool(np.array_equal(out.tokens, ref.tokens)
                  and np.array_equal(out.num_tokens, ref.num_tokens))
      acc = np.asarray(out.accept_lengths)
      rows.append(dict(case=name, drafter=which, batch=b, identical=same,
                       tau=float(acc[acc > 0].mean()), tokens=int(np.sum(out.num_tokens)),
                       seconds=time.perf_counter() - t0))
      if not same:
        failures.append(f"{name} {which} batch {b}: output differs from autoregressive")
      record(rows=rows)
  record(rows=rows, max_new_tokens=n_new, precision=args.precision, model=args.stories,
         passed=not failures)
  if failures:
    raise AssertionError("; ".join(failures))


def _inference_setup(args, cache):
  """The target of real shape with random weights in the decode layout (built once a group)."""
  if "target" not in cache:
    from ppow_jax.eagle3 import model as e3
    from ppow_jax.modes import dryrun
    from ppow_jax.models import transformer

    c = load_target_config(args.target, args.smoke)
    tcfg = dryrun.target_config(c)
    abstract, _ = dryrun.abstract_params(tcfg, e3.Eagle3Config.from_target(tcfg))
    params = transformer.unstack(random_params(abstract, seed=0))
    cache["target"] = (tcfg, params)
  return cache["target"]


def _timed(thunks, args) -> dict:
  """name -> median seconds of one call (after a compiling call), via engine_speed.measure."""
  import statistics

  from benchmarks.engine_speed import measure
  times = measure(thunks, args.repeats, "wall", log=lambda s: print(s, flush=True))
  return {k: statistics.median(v) for k, v in times.items()}


def stage_prefill(args, deadline, record, cache):
  """The target reads a [batch, length] prompt into an empty cache (as generate's prefill)."""
  import jax
  import jax.numpy as jnp

  from ppow_jax.decoding import engine
  from ppow_jax.models import transformer
  from ppow_jax.models.kv_cache import KVCache

  tcfg, params = _inference_setup(args, cache)
  b, p = _int_list(args.prefill)
  cap = engine.capacity(p, 0, 0)

  def prefill(params, prompts):
    out = transformer.forward(tcfg, params, prompts,
                              cache=KVCache.init(tcfg, b, cap, per_layer=True),
                              return_logits=False)
    return transformer.lm_head(params, out.last_hidden[:, -1]), out.cache

  prompts = jax.random.randint(jax.random.key(3), (b, p), 0, tcfg.vocab_size, jnp.int32)
  fn = jax.jit(prefill)
  flops, _ = step_flops(prefill, params, prompts)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(params, prompts))
  compile_s = time.perf_counter() - t0
  sec = _timed({"prefill": lambda: fn(params, prompts)}, args)["prefill"]
  peak = device_info()["peak_bf16_flops"]
  record(batch=b, length=p, tokens_per_second=b * p / sec, call_s=sec, flops=flops,
         mfu=flops / sec / peak if peak else None, first_call_s=compile_s,
         target_params=tcfg.num_params(), target=args.target, dtype=tcfg.dtype)


def stage_decode(args, deadline, record, cache):
  """One cached 1-token step at each batch size (`engine_speed.step_loop`, decode layout)."""
  from benchmarks.engine_speed import step_loop
  from ppow_jax.decoding import engine

  tcfg, params = _inference_setup(args, cache)
  cap = engine.capacity(args.context, 128, 8)
  weight_bytes = tree_bytes(params)
  rows = []
  for b in _int_list(args.decode_batches):
    if rows and deadline.left() < 30:
      rows.append(dict(batch=b, skipped="group deadline"))
      continue
    sec = _timed({f"b{b}": step_loop(tcfg, params, cap, args.context, 1, args.inner, batch=b)},
                 args)[f"b{b}"] / args.inner
    rows.append(dict(batch=b, step_ms=1e3 * sec, tokens_per_second=b / sec,
                     weight_bytes_per_second=weight_bytes / sec))
    record(rows=rows)
  cache["t1_b1"] = next((r["step_ms"] for r in rows if r["batch"] == 1 and "step_ms" in r), None)
  record(rows=rows, context=args.context, cache_len=cap, weight_bytes=weight_bytes,
         inner=args.inner, layout="unstacked (decode layout, per-layer caches)",
         memory=memory_stats())


def stage_verify_cost(args, deadline, record, cache):
  """forward(K+1) / forward(1) at batch 1: the cost of verifying K draft tokens in one call."""
  from benchmarks.engine_speed import step_loop
  from ppow_jax.decoding import engine

  tcfg, params = _inference_setup(args, cache)
  cap = engine.capacity(args.context, 128, 8)
  ms = {}
  if cache.get("t1_b1") is None:
    ms[1] = 1e3 * _timed({"w1": step_loop(tcfg, params, cap, args.context, 1, args.inner)},
                         args)["w1"] / args.inner
  else:
    ms[1] = cache["t1_b1"]
  skipped = []
  for w in _int_list(args.widths):
    if deadline.left() < 30:
      skipped.append(w)
      continue
    ms[w] = 1e3 * _timed({f"w{w}": step_loop(tcfg, params, cap, args.context, w, args.inner)},
                         args)[f"w{w}"] / args.inner
    record(rows=_verify_rows(ms), skipped_widths=skipped)
  record(rows=_verify_rows(ms), skipped_widths=skipped, context=args.context, batch=1)


def _verify_rows(ms: dict) -> list[dict]:
  return [dict(width=w, step_ms=ms[w], over_forward_1=ms[w] / ms[1]) for w in sorted(ms)]


def _train_stage(args, record, kind: str):
  """Compiles a training step from the dry run's Plan on one device, runs it on random weights
  and reports tokens/s, MFU and peak memory against the plan."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from ppow_jax.eagle3 import train_step
  from ppow_jax.modes import dryrun
  from ppow_jax.parallel import sharding

  batch = args.sft_batch if kind == "sft" else args.ppow_batch
  c = load_target_config(args.target, args.smoke, batch=batch, seq_len=args.seq_len,
                         layers=args.train_layers)
  mesh = sharding.make_mesh(sharding.mesh_shape(c), jax.devices()[:1])
  plan = dryrun.Plan(c, mesh)
  if kind == "sft":
    step = train_step.make_train_step(
        plan.tcfg, plan.dcfg, plan.optimizer, steps=plan.settings.ttt_steps,
        decay=plan.settings.ttt_decay, compute_dtype=plan.dcfg.dtype)
  else:
    from ppow_jax.ppow.step import make_ppow_step
    step = make_ppow_step(plan.tcfg, plan.dcfg, plan.optimizer, plan.settings, plan.capacity)
  b, t = int(c.train.batch_size), int(c.data.seq_len)
  s = plan.settings
  info = dict(target=args.target, target_layers=plan.tcfg.num_layers,
              target_layers_full=dryrun.target_config(
                  load_target_config(args.target, args.smoke)).num_layers,
              target_params=plan.tcfg.num_params(), dtype=plan.tcfg.dtype, batch=b, seq_len=t,
              draft_vocab=plan.dcfg.draft_vocab_size, drafter_dtype=plan.dcfg.dtype)
  if kind == "sft":
    info.update(ttt_steps=s.ttt_steps)
  else:
    info.update(window=s.window, group_size=s.group_size, prefixes_per_seq=s.prefixes_per_seq,
                ppo_epochs=s.ppo_epochs, aux_loss=s.aux_loss,
                windows_per_step=b * s.prefixes_per_seq * s.group_size)
  record(**info)
  t0 = time.perf_counter()
  compiled = plan.lower(step).compile()
  compile_s = time.perf_counter() - t0
  planned = dryrun.compiled_memory(compiled)
  held = plan.memory()
  record(compile_s=compile_s, plan=dict(compiled=planned, held=held))
  if args.plan_only:
    return

  repl = sharding.replicated(mesh)
  target = random_params(plan.target, 0, plan.target_sh)
  params = random_params(plan.drafter, 1, plan.drafter_sh)
  opt_state = jax.jit(plan.optimizer.init, out_shardings=plan.state_sh["opt_state"])(params)
  state = jax.device_put({"params": params, "opt_state": opt_state,
                         "step": jnp.zeros((), jnp.int32)}, plan.state_sh)
  d2t = jax.device_put(jnp.zeros((plan.dcfg.draft_vocab_size,), jnp.int32), repl)
  tokens = jax.random.randint(jax.random.key(2), (b, t), 0, plan.tcfg.vocab_size, jnp.int32)
  data = jax.device_put({"tokens": tokens, "valid": jnp.ones((b, t), bool),
                         "loss_mask": jnp.ones((b, t), bool)}, plan.batch_sh)
  resident = memory_stats()
  flops, approx = step_flops(step, state, target, d2t, data, jax.random.key(0))
  times, losses = [], []
  for i in range(1 + args.train_steps):  # the first call is not timed
    t0 = time.perf_counter()
    state, (metrics, _) = compiled(state, target, d2t, data, jax.random.key(i))  # loop's step
    losses.append(float(jax.block_until_ready(metrics["loss"])))
    times.append(time.perf_counter() - t0)
  sec = float(np.median(times[1:]))
  peak = device_info()["peak_bf16_flops"]
  mem = memory_stats()
  measured_peak = mem.get("peak_bytes_in_use") if mem else None
  record(step_s=sec, step_times_s=times, tokens_per_second=b * t / sec, flops=flops,
         flops_while_counted_once=approx, mfu=flops / sec / peak if peak else None,
         loss=losses, loss_finite=bool(np.all(np.isfinite(losses))),
         memory=dict(resident_before_steps=resident, after_steps=mem,
                     peak_over_plan=(measured_peak / planned["peak_estimate"]
                                     if measured_peak else None)))
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError(f"{kind} step loss is not finite: {losses}")


def stage_sft_step(args, deadline, record, cache):
  _train_stage(args, record, "sft")


def stage_ppow_step(args, deadline, record, cache):
  _train_stage(args, record, "ppow")


STAGE_FNS = {"correctness": lambda a, d, r, c: stage_correctness(a, d, r),
             "prefill": stage_prefill, "decode": stage_decode, "verify_cost": stage_verify_cost,
             "sft_step": stage_sft_step, "ppow_step": stage_ppow_step}


def group_table(args) -> dict:
  return SMOKE_GROUPS if args.smoke else GROUPS


def run_group(args):
  """Runs one group's stages in this process, each guarded; rewrites args.result after each."""
  result = {"device": None, "stages": {}}

  def save():
    with run_files.atomic_open(args.result) as f:
      json.dump(result, f, indent=1, default=str)

  try:
    result["device"] = device_info()
  except Exception as e:  # noqa: BLE001 - recorded; the stages report their own failures
    result["device_error"] = f"{type(e).__name__}: {e}"
  save()
  deadline = Deadline(args.deadline)
  wanted = set(filter(None, args.stages.split(",")))
  shared: dict = {}
  for name in group_table(args)[args.group]:
    if name not in wanted:
      continue
    entry = result["stages"][name] = {"status": "running"}
    save()

    def record(**kw):
      entry.update(kw)
      save()

    t0 = time.perf_counter()
    print(f"[accelerator_check] {name}: start", flush=True)
    try:
      if args.fail_stage == name:
        raise RuntimeError(f"forced failure (--fail_stage {name})")
      STAGE_FNS[name](args, deadline, record, shared)
      entry["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - a stage's failure is its result
      entry.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000],
                   traceback=traceback.format_exc()[-4000:])
    entry["seconds"] = time.perf_counter() - t0
    print(f"[accelerator_check] {name}: {entry['status']} ({entry['seconds']:.1f} s)"
          + (f": {entry['error'][:300]}" if entry["status"] == "failed" else ""), flush=True)
    save()


# --- the orchestrating process --------------------------------------------------------------------


def _run_child(cmd, env, timeout) -> tuple[int | None, str]:
  """Runs a group, echoing its output; -> (exit code or None on timeout, last lines)."""
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, cwd=REPO)
  tail = collections.deque(maxlen=30)

  def pump():
    for line in proc.stdout:
      tail.append(line)
      sys.stdout.write(line)
      sys.stdout.flush()

  reader = threading.Thread(target=pump, daemon=True)
  reader.start()
  try:
    code = proc.wait(timeout=max(timeout, 1))
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
    code = None
  reader.join(timeout=5)
  return code, "".join(tail)[-3000:]


def orchestrate(args) -> dict:
  os.makedirs(args.out, exist_ok=True)
  start = time.time()
  end = start + args.budget_s
  report = {
      "mode": "smoke" if args.smoke else "full",
      "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
      "commit": commit(), "python": platform.python_version(),
      "host": platform.node(), "args": {k: v for k, v in vars(args).items()
                                        if k not in ("group", "result", "deadline", "argv")},
      "device": None, "stages": {}}
  wanted = set(filter(None, args.stages.split(",")))
  table = group_table(args)
  groups = [g for g, names in table.items() if wanted & set(names)]
  share_of = GROUP_SHARE if table is GROUPS else {g: 1.0 for g in table}
  env = dict(os.environ)
  # One process uses the device at a time: let it take most of the memory.
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  env["PYTHONUNBUFFERED"] = "1"
  if args.smoke:  # tiny shapes: compile time dominates, so compile for speed of compiling
    env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""), *SMOKE_XLA_FLAGS]).strip()
  for gi, group in enumerate(groups):
    share = share_of[group] / sum(share_of[g] for g in groups[gi:])
    timeout = (end - time.time()) * share
    result_file = os.path.join(args.out, f".group_{group}.json")
    if os.path.exists(result_file):
      os.remove(result_file)
    names = [n for n in table[group] if n in wanted]
    if timeout < 10:
      for n in names:
        report["stages"][n] = {"status": "skipped", "error": "budget spent"}
      continue
    cmd = [sys.executable, os.path.abspath(__file__), *args.argv, "--group", group, "--result",
           result_file, "--deadline", str(time.time() + timeout)]
    t0 = time.time()
    code, tail = _run_child(cmd, env, timeout)
    got = {}
    if os.path.exists(result_file):
      with open(result_file) as f:
        got = json.load(f)
      os.remove(result_file)
    if got.get("device") and not report["device"]:
      report["device"] = got["device"]
    for n in names:
      entry = got.get("stages", {}).get(n)
      if entry is None or entry.get("status") == "running":
        why = (f"group timed out after {time.time() - t0:.0f} s" if code is None else
               f"group process exited with {code}")
        entry = dict(entry or {}, status="failed" if entry else "not run", error=why,
                     output_tail=tail)
      report["stages"][n] = entry
    report["seconds"] = time.time() - start
    write_outputs(args.out, report)
  report["seconds"] = time.time() - start
  corr = report["stages"].get("correctness")
  report["correctness_passed"] = bool(corr and corr.get("passed"))
  write_outputs(args.out, report)
  return report


# --- outputs --------------------------------------------------------------------------------------


def _f(x, fmt="{:.3g}"):
  return "" if x is None else fmt.format(x)


def _gib(n):
  return "" if n is None else f"{n / 2 ** 30:.2f} GiB"


def markdown(r: dict) -> str:
  dev = r.get("device") or {}
  peak = dev.get("peak_bf16_flops")
  lines = [f"# ppow_jax accelerator check ({r['mode']})", "",
           f"- device: {dev.get('device_kind') or '?'} ({dev.get('platform', '?')}, "
           f"{dev.get('device_count', '?')} device(s)); peak bf16 "
           f"{_f(peak and peak / 1e12, '{:.0f}') or 'unknown'} TFLOP/s",
           f"- jax {dev.get('jax', '?')}, jaxlib {dev.get('jaxlib', '?')}; commit {r['commit']}",
           f"- {r['date_utc']} UTC; {_f(r.get('seconds'), '{:.0f}')} s in all", "",
           "| stage | status | seconds | result |", "| --- | --- | --- | --- |"]
  st = r["stages"]
  for name in STAGES:
    e = st.get(name)
    if e is None:
      continue
    lines.append(f"| {name} | {e.get('status')} | {_f(e.get('seconds'), '{:.1f}')} | "
                 f"{_summary(name, e)} |")
  c = st.get("correctness") or {}
  if c.get("rows"):
    lines += ["", f"Correctness (stories260k, greedy, {c.get('max_new_tokens')} new tokens, "
              f"float32 matmul precision {c.get('precision')}):", "",
              "| decoding | drafter | batch | identical to autoregressive | tau |",
              "| --- | --- | --- | --- | --- |"]
    for row in c["rows"]:
      lines.append(f"| {row['case']} | {row['drafter']} | {row['batch']} | "
                   f"{'yes' if row['identical'] else 'NO'} | {row['tau']:.2f} |")
  d = st.get("decode") or {}
  if d.get("rows"):
    lines += ["", f"Decode step ({d.get('layout', '')}, context {d.get('context')}):", "",
              "| batch | step ms | tokens/s | weight bytes read / s |", "| --- | --- | --- | --- |"]
    for row in d["rows"]:
      if "step_ms" in row:
        lines.append(f"| {row['batch']} | {row['step_ms']:.2f} | {row['tokens_per_second']:.0f}"
                     f" | {row['weight_bytes_per_second'] / 1e9:.0f} GB/s |")
  v = st.get("verify_cost") or {}
  if v.get("rows"):
    lines += ["", "Verification cost, batch 1: forward(K+1) / forward(1):", "",
              "| K+1 | " + " | ".join(str(x["width"]) for x in v["rows"]) + " |",
              "| --- |" + " --- |" * len(v["rows"]),
              "| ms | " + " | ".join(f"{x['step_ms']:.2f}" for x in v["rows"]) + " |",
              "| ratio | " + " | ".join(f"{x['over_forward_1']:.2f}" for x in v["rows"]) + " |"]
  train = [(n, st[n]) for n in ("sft_step", "ppow_step") if st.get(n, {}).get("batch")]
  if train:
    lines += ["", "Training steps (random weights; memory: measured peak vs the dry run's plan "
              "of the same executable):", "",
              "| step | target layers | batch x seq | step s | tokens/s | MFU | peak memory | "
              "plan peak | held (plan) | compile s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n, e in train:
      plan = e.get("plan") or {}
      held = sum((plan.get("held") or {}).values()) or None
      mem = (e.get("memory") or {}).get("after_steps") or {}
      layers = str(e["target_layers"])
      if e["target_layers"] != e["target_layers_full"]:
        layers += f" of {e['target_layers_full']}"
      lines.append(f"| {n} | {layers} | {e['batch']} x {e['seq_len']} | "
                   f"{_f(e.get('step_s'), '{:.3f}')} | "
                   f"{_f(e.get('tokens_per_second'), '{:.0f}')} | "
                   f"{_f(e.get('mfu'), '{:.1%}')} | {_gib(mem.get('peak_bytes_in_use'))} | "
                   f"{_gib((plan.get('compiled') or {}).get('peak_estimate'))} | {_gib(held)} | "
                   f"{_f(e.get('compile_s'), '{:.1f}')} |")
  failed = [(n, e) for n, e in st.items() if e.get("status") not in ("ok",)]
  if failed:
    lines += ["", "Failures:", ""]
    lines += [f"- {n}: {e.get('status')}: {e.get('error', '')[:500]}" for n, e in failed]
  return "\n".join(lines) + "\n"


def _summary(name: str, e: dict) -> str:
  if e.get("status") != "ok":
    return (e.get("error") or "")[:120].replace("|", "/").replace("\n", " ")
  if name == "correctness":
    spec = [r for r in e["rows"] if r["case"] != "autoregressive"]
    return f"{sum(r['identical'] for r in spec)}/{len(spec)} speculative runs identical"
  if name == "prefill":
    return (f"{e['batch']} x {e['length']}: {e['tokens_per_second']:.0f} tokens/s, MFU "
            f"{_f(e.get('mfu'), '{:.1%}') or 'n/a'}")
  if name == "decode":
    return ", ".join(f"batch {r['batch']}: {r['step_ms']:.2f} ms" for r in e["rows"]
                     if "step_ms" in r)
  if name == "verify_cost":
    return ", ".join(f"{r['width']}: {r['over_forward_1']:.2f}" for r in e["rows"])
  if "tokens_per_second" not in e:  # --plan_only
    return f"plan peak {_gib(e['plan']['compiled']['peak_estimate'])}"
  return (f"{e['tokens_per_second']:.0f} tokens/s, MFU {_f(e.get('mfu'), '{:.1%}') or 'n/a'}")


def write_outputs(out: str, report: dict):
  with run_files.atomic_open(os.path.join(out, RESULT_JSON)) as f:
    json.dump(report, f, indent=2, default=str)
  with open(os.path.join(out, RESULT_MD), "w") as f:
    f.write(markdown(report))


def main(argv=None):
  args = parse_args(argv)
  if args.group:
    run_group(args)
    return 0
  args.argv = list(sys.argv[1:] if argv is None else argv)  # the groups get the same options
  report = orchestrate(args)
  print(markdown(report))
  print(f"-> {os.path.join(args.out, RESULT_JSON)}, {os.path.join(args.out, RESULT_MD)}")
  return 0 if all(e.get("status") == "ok" for e in report["stages"].values()) else 1


if __name__ == "__main__":
  sys.exit(main())
