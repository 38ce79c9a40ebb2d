"""Autoregressive decoding throughput against batch size on a real target, and transformers'
`generate()` at batch 1 for reference, in one run.

  python benchmarks/engine_batching.py --target ~/.cache/ppow_jax/models/SmolLM2-135M-Instruct \
    --prompts ppow_jax/assets/gsm8k/test.jsonl --num_prompts 32 --max_new_tokens 128 \
    --temperature 0.7 --batch_sizes 1,16,32 --out runs/engine_batching

The decode mode's path (`runner.decode`: static batches, warm-up excluded) at each batch size;
with `--continuous`, also `decoding.continuous.generate` (rows refilled as they finish: what
self-distillation uses). tokens/s counts generated tokens over wall time. The script only uses
APIs that older checkouts have too, so it can be copied into one (with common.py) to measure
"before". Writes OUT/results.json and OUT/results.md when --out is given.
"""

from __future__ import annotations

import os
import time

import common
from ppow_jax.data import prompts as prompt_files
from ppow_jax.decoding import runner, sampling


def main():
  ap = common.parser(__doc__, out="optional")
  ap.add_argument("--prompts", required=True)
  ap.add_argument("--num_prompts", type=int, default=32)
  ap.add_argument("--max_new_tokens", type=int, default=128)
  ap.add_argument("--max_prompt_len", type=int, default=256)
  ap.add_argument("--temperature", type=float, default=0.7)
  ap.add_argument("--batch_sizes", default="1,16,32")
  ap.add_argument("--continuous", action="store_true")
  ap.add_argument("--hf", action="store_true", help="also transformers generate() at batch 1")
  args = ap.parse_args()

  model, tok = common.load_target(args.target)
  prompts = prompt_files.load_prompts(args.prompts, limit=args.num_prompts)
  ids = prompt_files.encode_prompts(tok, prompts, args.max_prompt_len)
  sp = sampling.SamplingParams(temperature=args.temperature)
  results = {}
  for bs in [int(x) for x in args.batch_sizes.split(",")]:
    s = runner.DecodeSettings(window=0, max_new_tokens=args.max_new_tokens, batch_size=bs, sp=sp)
    res = runner.decode(model.cfg, model.params(), ids, s, progress=False)
    summary = runner.summarize(res, ["all"] * len(res))
    results[f"batch {bs}"] = {"tokens_per_second": summary["tokens_per_second"],
                              "num_tokens": summary["num_tokens"]}
    print(f"decode mode, batch {bs:3d}: {summary['tokens_per_second']:7.1f} tokens/s", flush=True)
  if args.continuous:
    from ppow_jax.decoding import continuous
    for bs in [int(x) for x in args.batch_sizes.split(",") if int(x) > 1]:
      st = continuous.StreamSettings(max_new_tokens=args.max_new_tokens, batch_size=bs, sp=sp)
      continuous.generate(model.cfg, model.params(), ids[:bs], st, progress=False)  # compile
      t0 = time.perf_counter()
      outs = continuous.generate(model.cfg, model.params(), ids, st, progress=False)
      dt = time.perf_counter() - t0
      n = sum(len(o) for o in outs)
      results[f"continuous batch {bs}"] = {"tokens_per_second": n / dt, "num_tokens": n}
      print(f"continuous,  batch {bs:3d}: {n / dt:7.1f} tokens/s", flush=True)
  if args.hf:
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(os.cpu_count())
    ref = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32)
    kw = dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
              temperature=args.temperature or None, top_k=0 if args.temperature else None,
              eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    with torch.no_grad():
      ref.generate(torch.tensor([ids[0]]), **kw)
      n, t0 = 0, time.perf_counter()
      for x in ids:
        n += ref.generate(torch.tensor([x]), **kw).shape[1] - len(x)
      dt = time.perf_counter() - t0
    results["transformers generate(), batch 1"] = {"tokens_per_second": n / dt, "num_tokens": n}
    print(f"transformers generate(), batch 1: {n / dt:7.1f} tokens/s")
  base = results.get("batch 1", {}).get("tokens_per_second")
  if base:
    for k, r in results.items():
      r["vs_batch_1"] = r["tokens_per_second"] / base
  if args.out:
    table = common.markdown_table(
        ["decoding", "tokens/s", "tokens", "vs batch 1"],
        [[k, f"{r['tokens_per_second']:.1f}", r["num_tokens"],
          f"{r['vs_batch_1']:.2f}" if "vs_batch_1" in r else "-"] for k, r in results.items()])
    common.write_results(args.out, {"args": vars(args), "results": results}, table,
                         title="Autoregressive decoding throughput against batch size")


if __name__ == "__main__":
  main()
