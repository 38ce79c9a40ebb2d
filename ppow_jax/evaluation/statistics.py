"""Evaluation statistics: one category's figures from its decode results, and the speedups over
the autoregressive baseline with the category mean and the pooled overall figures.
"""

from __future__ import annotations

import collections

from ppow_jax.decoding import runner


def category_stats(results: list[runner.DecodeResult], window: int) -> dict:
  """One category's figures: tau, tokens/s, counts and the accept-length histogram (1..K+1)."""
  s = runner.summarize(results, ["all"] * len(results))
  counts = collections.Counter(a for r in results for a in r.accept_lengths)
  top = max([window + 1, *counts])
  return {
      "tau": s["mean_accept_length"], "tokens_per_second": s["tokens_per_second"],
      "num_prompts": s["num_prompts"], "num_tokens": s["num_tokens"], "num_steps": s["num_steps"],
      "seconds": sum(r.seconds / r.batch_rows for r in results),
      "accept_length_histogram": {str(k): counts.get(k, 0) for k in range(1, top + 1)},
  }


def with_speedups(per_cat: dict, baseline: dict) -> dict:
  """Adds speedups over `baseline` (the autoregressive per-category stats), the category mean
  and the pooled overall figures."""
  for c, st in per_cat.items():
    base = baseline[c]["tokens_per_second"]
    st["speedup"] = st["tokens_per_second"] / base if base else 0.0
  n = len(per_cat)
  mean = {k: sum(st[k] for st in per_cat.values()) / n
          for k in ("tau", "tokens_per_second", "speedup")}
  hist = collections.Counter()
  for st in per_cat.values():
    hist.update({int(k): v for k, v in st["accept_length_histogram"].items()})
  steps = sum(st["num_steps"] for st in per_cat.values())
  toks = sum(st["num_tokens"] for st in per_cat.values())
  secs = sum(st["seconds"] for st in per_cat.values())
  base_toks = sum(b["num_tokens"] for b in baseline.values())
  base_secs = sum(b["seconds"] for b in baseline.values())
  tps = toks / secs if secs else 0.0
  base_tps = base_toks / base_secs if base_secs else 0.0
  overall = {
      "tau": sum(k * v for k, v in hist.items()) / max(steps, 1), "tokens_per_second": tps,
      "speedup": tps / base_tps if base_tps else 0.0, "num_tokens": toks, "num_steps": steps,
      "seconds": secs, "accept_length_histogram": {str(k): hist[k] for k in sorted(hist)}}
  return {"categories": per_cat, "mean": mean, "overall": overall}
