"""Decoding speed on a real target, every competitor in one run: ppow_jax autoregressive,
ppow_jax with EAGLE-3 drafters (token-level, PPOW), transformers `generate()` greedy and with
prompt-lookup decoding, and llama.cpp (llama-cpp-python) on the original GGUF if installed.

  python benchmarks/real_target.py \
    --target ~/.cache/ppow_jax/models/SmolLM2-135M-Instruct \
    --drafters token-level=runs/smollm2/sft/export,ppow=runs/smollm2/ppow/export \
    --benchmarks ppow_jax/assets/spec_bench/question.jsonl --per_category 2 \
    --max_new_tokens 128 --window 4 --out runs/real_target

Same prompts (first turns, chat template), same new-token budget, batch 1, greedy, one after the
other in this process, so the ratios hold on a shared machine. Writes OUT/results.json,
OUT/results.md and OUT/speed.png. ppow_jax's figures exclude compilation (a warm-up decode of
the same shapes first); transformers and llama.cpp get one warm-up prompt. Every speculative
output is compared with ppow_jax's autoregressive output (they must be identical in float32),
and transformers' greedy output with ppow_jax's. Runs unchanged on GPU/TPU (install
jax[cuda12] / jax[tpu]); transformers then uses the GPU only if torch has one.
"""

from __future__ import annotations

import os
import time

import common
from ppow_jax.data import prompts as prompt_files
from ppow_jax.decoding import runner
from ppow_jax.decoding.drafter_io import load_drafter
from ppow_jax.models import transformer


def ppow_decode(cfg, params, ids, args, drafter=None, dparams=None, window=0):
  s = runner.DecodeSettings(window=window, max_new_tokens=args.max_new_tokens, batch_size=1)
  res = runner.decode(cfg, params, ids, s, drafter=drafter, drafter_params=dparams,
                      desc="ppow_jax" if drafter is None else f"ppow_jax K={window}")
  secs = sum(r.seconds for r in res)
  toks = sum(len(r.output_token_ids) for r in res)
  steps = sum(len(r.accept_lengths) for r in res)
  return {"tokens_per_second": toks / secs, "tau": toks / steps if drafter is not None else 1.0,
          "seconds": secs, "num_tokens": toks}, [r.output_token_ids for r in res]


def hf_decode(path, ids, args, eos, lookup: int = 0):
  import torch
  from transformers import AutoModelForCausalLM
  torch.set_num_threads(args.torch_threads or os.cpu_count())
  model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
  kw = dict(max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=eos,
            pad_token_id=eos)
  if lookup:
    kw["prompt_lookup_num_tokens"] = lookup
  with torch.no_grad():
    model.generate(torch.tensor([ids[0]]), **kw)  # warm-up
    outs, secs = [], 0.0
    for x in ids:
      t0 = time.perf_counter()
      g = model.generate(torch.tensor([x]), **kw)
      secs += time.perf_counter() - t0
      outs.append(g[0, len(x):].tolist())
  toks = sum(len(o) for o in outs)
  return {"tokens_per_second": toks / secs, "seconds": secs, "num_tokens": toks}, outs


def llama_cpp_decode(gguf, ids, args, eos):
  try:
    import llama_cpp
  except ImportError:
    return None, None
  llm = llama_cpp.Llama(model_path=gguf, n_ctx=2048, n_threads=args.torch_threads or os.cpu_count(),
                        verbose=False, logits_all=False)

  def run(x):
    out = []
    for tok in llm.generate(x, temp=0.0, top_k=1, reset=True):
      out.append(tok)
      if tok == eos or len(out) >= args.max_new_tokens:
        break
    return out

  run(ids[0])  # warm-up
  outs, secs = [], 0.0
  for x in ids:
    t0 = time.perf_counter()
    outs.append(run(x))
    secs += time.perf_counter() - t0
  toks = sum(len(o) for o in outs)
  return {"tokens_per_second": toks / secs, "seconds": secs, "num_tokens": toks}, outs


def plot(results: dict, path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(results)
  tps = [results[n]["tokens_per_second"] for n in names]
  fig, ax = plt.subplots(figsize=(8, 4))
  bars = ax.barh(names[::-1], tps[::-1], color="tab:blue")
  for b, v in zip(bars, tps[::-1]):
    ax.text(v, b.get_y() + b.get_height() / 2, f" {v:.1f}", va="center")
  ax.set_xlabel("tokens/s (batch 1, greedy)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main():
  ap = common.parser(__doc__)
  ap.add_argument("--gguf", default="", help="the original GGUF, for llama.cpp ('' = skip)")
  ap.add_argument("--drafters", default="", help="name=path,name=path (EAGLE-3 exports)")
  ap.add_argument("--benchmarks", required=True)
  ap.add_argument("--per_category", type=int, default=2)
  ap.add_argument("--max_new_tokens", type=int, default=128)
  ap.add_argument("--max_prompt_len", type=int, default=512)
  ap.add_argument("--window", type=int, default=4)
  ap.add_argument("--lookup", type=int, default=10, help="prompt_lookup_num_tokens")
  ap.add_argument("--torch_threads", type=int, default=0)
  ap.add_argument("--skip", default="", help="comma-separated: hf, lookup, llama_cpp")
  args = ap.parse_args()
  skip = set(filter(None, args.skip.split(",")))
  os.makedirs(args.out, exist_ok=True)

  prompts = []
  for path in args.benchmarks.split(","):
    prompts += prompt_files.load_prompts(path, limit_per_category=args.per_category)
  model, tok = common.load_target(args.target)
  ids = prompt_files.encode_prompts(tok, prompts, args.max_prompt_len)
  params = transformer.unstack(model.params())
  eos = model.cfg.eos_ids[0] if model.cfg.eos_ids else None
  print(f"{len(ids)} prompts ({len({p.category for p in prompts})} categories), "
        f"{args.max_new_tokens} new tokens, batch 1, greedy")

  results, outputs = {}, {}
  results["ppow_jax autoregressive"], outputs["ar"] = ppow_decode(model.cfg, params, ids, args)
  for item in filter(None, args.drafters.split(",")):
    name, _, path = item.partition("=")
    d, dp = load_drafter(path, model.cfg, model.params())
    r, o = ppow_decode(model.cfg, params, ids, args, d, dp, args.window)
    r["identical_to_autoregressive"] = sum(a == b for a, b in zip(o, outputs["ar"])) / len(ids)
    results[f"ppow_jax + {name} (K={args.window})"] = r
  if "hf" not in skip:
    r, o = hf_decode(args.target, ids, args, eos)
    r["identical_to_ppow_jax"] = sum(a == b for a, b in zip(o, outputs["ar"])) / len(ids)
    results["transformers generate()"] = r
  if "lookup" not in skip:
    r, o = hf_decode(args.target, ids, args, eos, lookup=args.lookup)
    r["identical_to_ppow_jax"] = sum(a == b for a, b in zip(o, outputs["ar"])) / len(ids)
    results[f"transformers prompt lookup ({args.lookup})"] = r
  if "llama_cpp" not in skip and args.gguf:
    r, o = llama_cpp_decode(args.gguf, ids, args, eos)
    if r is None:
      print("llama-cpp-python is not installed: llama.cpp skipped")
    else:
      results["llama.cpp (Q4_1 GGUF)"] = r

  base = results["ppow_jax autoregressive"]["tokens_per_second"]
  rows = []
  for name, r in results.items():
    r["speedup"] = r["tokens_per_second"] / base
    same = r.get("identical_to_autoregressive", r.get("identical_to_ppow_jax"))
    rows.append([name, f"{r['tokens_per_second']:.1f}", f"{r['speedup']:.2f}x",
                 f"{r['tau']:.2f}" if "tau" in r else "", "" if same is None else f"{same:.0%}"])
  table = common.markdown_table(
      ["method", "tokens/s", "vs ppow_jax autoregressive", "tau", "identical"], rows)
  print(table)
  common.write_results(
      args.out, {"args": vars(args), "num_prompts": len(ids), "results": results},
      f"{len(ids)} prompts from {args.benchmarks} ({args.per_category} per category), "
      f"{args.max_new_tokens} new tokens, batch 1, greedy\n\n{table}\n\n![speed](speed.png)",
      title="Decoding speed on a real target")
  plot(results, os.path.join(args.out, "speed.png"))
  print(f"-> {os.path.join(args.out, 'speed.png')}")


if __name__ == "__main__":
  main()
