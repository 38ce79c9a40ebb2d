"""How often greedy speculative output departs from autoregressive output in bfloat16.

  python benchmarks/bf16_divergence.py \
    --target ~/.cache/ppow_jax/models/SmolLM2-135M-Instruct --drafter runs/smollm2/sft/export \
    --benchmarks ppow_jax/assets/spec_bench/question.jsonl --per_category 1 \
    --max_new_tokens 96 --window 4 --out runs/bf16_divergence

In float32 greedy speculative decoding equals autoregressive decoding token for token (tests
check it). In bfloat16 a verification forward over K+1 tokens and a one-token forward round
differently, so where two candidates' logits are within bfloat16's resolution the argmax can
flip and the continuation departs. This measures, per dtype, the share of prompts whose output
differs and where the first difference falls. Writes OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import common
from ppow_jax.data import prompts as prompt_files
from ppow_jax.decoding import runner
from ppow_jax.decoding.drafter_io import load_drafter
from ppow_jax.models import hf_checkpoint, transformer


def first_difference(a, b) -> int | None:
  for i, (x, y) in enumerate(zip(a, b)):
    if x != y:
      return i
  return None if len(a) == len(b) else min(len(a), len(b))


def main():
  ap = common.parser(__doc__)
  ap.add_argument("--drafter", required=True, help="an EAGLE-3 export")
  ap.add_argument("--benchmarks", required=True)
  ap.add_argument("--per_category", type=int, default=1)
  ap.add_argument("--max_new_tokens", type=int, default=96)
  ap.add_argument("--max_prompt_len", type=int, default=512)
  ap.add_argument("--window", type=int, default=4)
  ap.add_argument("--dtypes", default="float32,bfloat16")
  args = ap.parse_args()

  prompts = []
  for path in args.benchmarks.split(","):
    prompts += prompt_files.load_prompts(path, limit_per_category=args.per_category)
  ids = prompt_files.encode_prompts(hf_checkpoint.load_tokenizer(args.target), prompts,
                                    args.max_prompt_len)
  s_ar = runner.DecodeSettings(window=0, max_new_tokens=args.max_new_tokens, batch_size=1)
  s_sd = runner.DecodeSettings(window=args.window, max_new_tokens=args.max_new_tokens,
                               batch_size=1)
  results = {}
  for dtype in args.dtypes.split(","):
    model = hf_checkpoint.load_model(args.target, dtype=dtype)
    params = transformer.unstack(model.params())
    drafter, dparams = load_drafter(args.drafter, model.cfg, model.params())
    ar = runner.decode(model.cfg, params, ids, s_ar, desc=f"{dtype} autoregressive")
    sd = runner.decode(model.cfg, params, ids, s_sd, drafter=drafter, drafter_params=dparams,
                       desc=f"{dtype} K={args.window}")
    firsts = [first_difference(a.output_token_ids, b.output_token_ids) for a, b in zip(ar, sd)]
    diverged = [f for f in firsts if f is not None]
    results[dtype] = {
        "prompts": len(ids), "diverged": len(diverged),
        "divergence_rate": len(diverged) / len(ids),
        "first_difference_positions": diverged,
        "tau": sum(len(r.output_token_ids) for r in sd) / sum(len(r.accept_lengths) for r in sd)}
    print(f"{dtype}: {len(diverged)}/{len(ids)} outputs differ from autoregressive"
          + (f" (first differences at tokens {sorted(diverged)})" if diverged else ""), flush=True)
  table = common.markdown_table(
      ["dtype", "prompts", "outputs differing from autoregressive", "first difference at token",
       "tau"],
      [[dtype, r["prompts"], f"{r['diverged']} ({r['divergence_rate']:.0%})",
        ", ".join(str(p) for p in sorted(r["first_difference_positions"])) or "-",
        f"{r['tau']:.2f}"] for dtype, r in results.items()])
  print(table)
  common.write_results(args.out, {"args": vars(args), "results": results},
                       f"{len(ids)} prompts from {args.benchmarks}, {args.max_new_tokens} new "
                       f"tokens, greedy, K={args.window}, drafter {args.drafter}\n\n{table}",
                       title="bfloat16 divergence of greedy speculative decoding")


if __name__ == "__main__":
  main()
