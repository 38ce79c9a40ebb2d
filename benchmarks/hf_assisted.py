"""transformers' assisted generation (PyTorch, CPU) side by side with ppow_jax's engine.

  python benchmarks/hf_assisted.py --target ppow_jax/assets/stories260k \
      --prompts ppow_jax/assets/gsm8k/test.jsonl --num_prompts 16 --max_new_tokens 64 \
      --window 4 --out runs/hf_assisted

Both engines get the same target weights, the same LM drafter, the same prompt token ids (batch 1,
greedy, window K) and stop at the target's EOS. The drafter is, unless --drafter names an HF LM
directory, the target's first --drafter_layers decoder layers (embeddings, final norm and head
kept), written by `ppow_jax.evaluation.truncated_lm` to a temp dir: a smaller LM that shares the
vocabulary with no download. HF: `model.generate(..., assistant_model=..., do_sample=False)` with
the assistant's `num_assistant_tokens=K`, `num_assistant_tokens_schedule="constant"` and
`assistant_confidence_threshold=0` (no early stop of a draft), so it drafts K tokens per step
like ppow. Each engine also decodes autoregressively, for its own speedup. The truncated drafter
rarely agrees with stories260k (tau ~1.1), so it compares the engines' overheads at equal
acceptance rather than showing a speedup; --drafter ppow_jax/assets/stories260k (the target
drafting for itself) shows full acceptance, tau = K+1, in both.

Figures per engine and mode: tokens/s (generated tokens over the wall time of the generate calls,
each prompt warmed up once untimed, so compilation is left out) and tokens per target call (a
forward hook counts HF's target calls; ppow's are its verification steps plus one prefill per
prompt). ppow's tau (tokens per verification step, prefill not counted) is given as well. JAX runs
on the CPU too unless JAX_PLATFORMS is set otherwise. Prints a table and writes OUT/results.json
and OUT/results.md.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # The same device as PyTorch, unless asked otherwise.

import common  # noqa: E402
import jax  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from ppow_jax.data import prompts as prompt_files  # noqa: E402
from ppow_jax.decoding import runner, sampling  # noqa: E402
from ppow_jax.decoding.drafter_io import load_drafter  # noqa: E402
from ppow_jax.evaluation import truncated_lm  # noqa: E402


def ppow_decode(target, ids, drafter, dparams, args) -> dict:
  settings = runner.DecodeSettings(window=args.window, max_new_tokens=args.max_new_tokens,
                                   batch_size=1, sp=sampling.SamplingParams(temperature=0.0))
  results = runner.decode(target.cfg, target.params(), ids, settings, drafter=drafter,
                          drafter_params=dparams, desc="ppow")
  s = runner.summarize(results, ["all"] * len(results))
  return {
      "tokens_per_second": s["tokens_per_second"], "num_tokens": s["num_tokens"],
      "target_calls": s["num_steps"] + len(ids),
      "tokens_per_target_call": s["num_tokens"] / (s["num_steps"] + len(ids)),
      "tau": s["mean_accept_length"], "outputs": [r.output_token_ids for r in results]}


def hf_decode(model, ids, assistant, args, eos_id) -> dict:
  calls = [0]
  hook = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
  kw = dict(do_sample=False, max_new_tokens=args.max_new_tokens, pad_token_id=eos_id,
            eos_token_id=eos_id)
  if assistant is not None:
    kw["assistant_model"] = assistant
  outputs, seconds, n_calls = [], 0.0, 0
  try:
    with torch.inference_mode():
      for prompt in ids:
        x = torch.tensor([prompt])
        mask = torch.ones_like(x)
        model.generate(x, attention_mask=mask, **kw)  # warm-up
        calls[0] = 0
        t0 = time.perf_counter()
        out = model.generate(x, attention_mask=mask, **kw)
        seconds += time.perf_counter() - t0
        n_calls += calls[0]
        outputs.append(out[0, len(prompt):].tolist())
  finally:
    hook.remove()
  toks = sum(map(len, outputs))
  return {"tokens_per_second": toks / seconds, "num_tokens": toks, "target_calls": n_calls,
          "tokens_per_target_call": toks / n_calls, "tau": None, "outputs": outputs}


def main():
  ap = common.parser(__doc__)
  ap.add_argument("--drafter", default="", help="HF LM directory; default: a truncated target")
  ap.add_argument("--drafter_layers", type=int, default=2)
  ap.add_argument("--prompts", required=True, help="prompt file (e.g. GSM8K test.jsonl)")
  ap.add_argument("--num_prompts", type=int, default=16)
  ap.add_argument("--max_prompt_len", type=int, default=128)
  ap.add_argument("--max_new_tokens", type=int, default=64)
  ap.add_argument("--window", type=int, default=4)
  args = ap.parse_args()

  prompts = prompt_files.load_prompts(args.prompts, limit=args.num_prompts)
  target, tokenizer = common.load_target(args.target)
  ids = prompt_files.encode_prompts(tokenizer, prompts, args.max_prompt_len)
  with tempfile.TemporaryDirectory() as tmp:
    drafter_dir = args.drafter or truncated_lm(args.target, tmp, args.drafter_layers)
    eos_ids = target.cfg.eos_ids
    drafter, dparams = load_drafter(drafter_dir, target.cfg, target.params())
    print(f"ppow_jax on {jax.devices()[0].platform}: autoregressive, then assisted")
    rows = {("ppow_jax", "autoregressive"): ppow_decode(target, ids, None, None, args),
            ("ppow_jax", "assisted"): ppow_decode(target, ids, drafter, dparams, args)}

    print(f"transformers {torch.__version__} on cpu ({torch.get_num_threads()} threads)")
    model = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
    assistant = AutoModelForCausalLM.from_pretrained(drafter_dir, dtype=torch.float32).eval()
    gc = assistant.generation_config
    gc.num_assistant_tokens = args.window
    gc.num_assistant_tokens_schedule = "constant"
    gc.assistant_confidence_threshold = 0.0
    eos = eos_ids[0] if eos_ids else None
    rows[("transformers", "autoregressive")] = hf_decode(model, ids, None, args, eos)
    rows[("transformers", "assisted")] = hf_decode(model, ids, assistant, args, eos)

  ppow_ar = rows[("ppow_jax", "autoregressive")]["outputs"]
  print(f"\n{len(ids)} prompts, {args.max_new_tokens} new tokens max, greedy, K={args.window}, "
        f"drafter {args.drafter or f'target truncated to {args.drafter_layers} layers'}\n")
  report, table = [], []
  for (engine, mode), r in rows.items():
    base = rows[(engine, "autoregressive")]["tokens_per_second"]
    same = sum(a == b for a, b in zip(r["outputs"], ppow_ar))
    tau = f"{r['tau']:.2f}" if r["tau"] is not None else "-"
    table.append([engine, mode, f"{r['tokens_per_second']:.1f}",
                  f"{r['tokens_per_second'] / base:.2f}x", f"{r['tokens_per_target_call']:.2f}",
                  tau, f"{same}/{len(ids)}"])
    report.append({"engine": engine, "mode": mode, "speedup": r["tokens_per_second"] / base,
                   "same_output_as_ppow_autoregressive": same,
                   **{k: v for k, v in r.items() if k != "outputs"}})
  table = common.markdown_table(["engine", "mode", "tokens/s", "speedup", "tokens/target call",
                                 "tau", "= ppow_jax autoregressive"], table)
  print(table)
  common.write_results(
      args.out, {"target": args.target, "drafter": args.drafter or
                 f"{args.target} truncated to {args.drafter_layers} layers",
                 "prompts": args.prompts, "num_prompts": len(ids),
                 "prompt_lens": list(map(len, ids)), "max_new_tokens": args.max_new_tokens,
                 "window": args.window, "jax_platform": jax.devices()[0].platform,
                 "torch_threads": torch.get_num_threads(), "machine": platform.platform(),
                 "results": report},
      f"{len(ids)} prompts from {args.prompts}, greedy, K={args.window}\n\n{table}",
      title="transformers' assisted generation beside ppow_jax's engine")


if __name__ == "__main__":
  main()
