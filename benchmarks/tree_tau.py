"""Dynamic draft trees against chain drafting: tau and tokens/s, with a num_nodes sweep.

  python benchmarks/tree_tau.py --target ppow_jax/assets/stories260k --drafter runs/sft \
    --data_dir runs/sft/data --chain 6 --trees "6,4;8,4" --num_nodes 8,16,24,32,48,60 \
    --out runs/tree_tau

One target and drafter (an EAGLE-3 export or run directory, or an HF LM), the same prompts for
every row: 16-token prefixes of the held-out self-distillation sequences in --data_dir (as the
SFT run's eval.json), or --prompts FILE. Rows: autoregressive decoding, a chain of --chain draft
tokens, and each tree "depth,topk" of --trees with each --num_nodes that it allows (num_nodes <=
1 + topk + (depth-1)*topk^2). tau = tokens per target verification step (bonus included);
tokens/s is wall-clock through runner.decode (compilation excluded); speedup is against the
autoregressive row. Writes OUT/results.json and OUT/results.md and prints the table.
"""

import collections
import os

import common
from ppow_jax.data import prompts as prompt_files
from ppow_jax.data import selfdistill
from ppow_jax.decoding import runner, sampling, tree
from ppow_jax.decoding.drafter_io import load_drafter


def load_prompt_ids(args, tokenizer):
  if args.prompts:
    ps = prompt_files.load_prompts(args.prompts, limit=args.num_prompts or None)
    return prompt_files.encode_prompts(tokenizer, ps, args.max_prompt_len)
  recs = selfdistill.read_records(os.path.join(args.data_dir, "selfdistill-heldout.array_record"))
  # As training.final_eval.eval_prompts: the first prompt_len tokens after the record's length
  # field.
  return [r[1:1 + max(int(r[0]), args.prompt_len)].tolist() for r in recs[:args.num_prompts]]


def main():
  ap = common.parser(__doc__)
  ap.add_argument("--drafter", required=True)
  ap.add_argument("--data_dir", default="", help="held-out self-distillation records")
  ap.add_argument("--prompts", default="", help="a prompt file instead of --data_dir")
  ap.add_argument("--num_prompts", type=int, default=32)
  ap.add_argument("--prompt_len", type=int, default=16)
  ap.add_argument("--max_prompt_len", type=int, default=128)
  ap.add_argument("--max_new_tokens", type=int, default=112)
  ap.add_argument("--batch_size", type=int, default=8)
  ap.add_argument("--temperature", type=float, default=0.0)
  ap.add_argument("--chain", type=int, default=6, help="chain window K")
  ap.add_argument("--trees", default="6,4", help='"depth,topk;depth,topk"')
  ap.add_argument("--num_nodes", default="8,16,24,32,48,60")
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  if not (args.data_dir or args.prompts):
    ap.error("give --data_dir or --prompts")

  target, tokenizer = common.load_target(args.target)
  tparams = target.params()
  drafter, dparams = load_drafter(args.drafter, target.cfg, tparams)
  ids = load_prompt_ids(args, tokenizer)
  sp = sampling.SamplingParams(temperature=args.temperature)
  specs = []
  for pair in args.trees.split(";"):
    depth, topk = (int(x) for x in pair.split(","))
    for n in (int(x) for x in args.num_nodes.split(",")):
      if n <= 1 + topk + (depth - 1) * topk ** 2:
        specs.append(tree.TreeSpec(depth, topk, n))

  def measure(label, drafter=None, window=0, spec=None):
    s = runner.DecodeSettings(window=window, max_new_tokens=args.max_new_tokens,
                              batch_size=args.batch_size, sp=sp, seed=args.seed, tree=spec)
    res = runner.decode(target.cfg, tparams, ids, s, drafter=drafter, drafter_params=dparams,
                        desc=label)
    summ = runner.summarize(res, ["all"] * len(res))
    hist = collections.Counter(a for r in res for a in r.accept_lengths)
    row = {"label": label, "tree": str(spec) if spec else None, "window": window,
           "tau": summ["mean_accept_length"], "tokens_per_second": summ["tokens_per_second"],
           "num_steps": summ["num_steps"], "num_tokens": summ["num_tokens"],
           "accept_length_histogram": {str(k): hist[k] for k in sorted(hist)},
           "outputs": [r.output_token_ids for r in res]}
    print(f"{label}: tau {row['tau']:.3f}, {row['tokens_per_second']:.0f} tok/s", flush=True)
    return row

  rows = [measure("autoregressive"), measure(f"chain K={args.chain}", drafter, args.chain)]
  rows += [measure(f"tree {s}", drafter, spec=s) for s in specs]
  ar, chain = rows[0], rows[1]
  reference = ar["outputs"]
  for r in rows:
    r["speedup"] = r["tokens_per_second"] / ar["tokens_per_second"]
    r["tau_vs_chain"] = r["tau"] / chain["tau"]
    # Greedy speculative decoding is lossless: every output must equal the autoregressive one.
    outputs = r.pop("outputs")
    r["equals_autoregressive"] = outputs == reference if sp.greedy else None

  table = common.markdown_table(
      ["decoding", "depth, topk, num_nodes", "tau", "tau / chain", "tokens/s", "speedup"],
      [[r["label"].split(" ")[0], r["tree"] or (f"K={r['window']}" if r["window"] else "-"),
        f"{r['tau']:.2f}", f"{r['tau_vs_chain']:.2f}×", f"{r['tokens_per_second']:.0f}",
        f"{r['speedup']:.2f}×"] for r in rows])
  print(table)
  common.write_results(args.out, {"args": vars(args), "num_prompts": len(ids), "rows": rows},
                       table, title="Dynamic draft trees against chain drafting")
  if sp.greedy and not all(r["equals_autoregressive"] for r in rows):
    raise SystemExit("a greedy speculative output differs from the autoregressive one")


if __name__ == "__main__":
  main()
