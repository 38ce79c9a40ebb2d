"""Evaluation statistics: one category's figures from its decode results, and the speedups over
the autoregressive baseline with the category mean, the pooled overall figures and their 95%
bootstrap intervals over prompts.
"""

from __future__ import annotations

import collections

import numpy as np

from ppow_jax.decoding import runner

RESAMPLES = 2000  # bootstrap resamples of the overall figures' intervals
BOOTSTRAP_SEED = 0  # numpy default_rng seed: the same report from the same decodes
INTERVALS = "overall_interval_95"  # report.json's key of the intervals, beside "overall"


def prompt_figures(results: list[runner.DecodeResult]) -> dict:
  """Per prompt, in order, what the pooled figures add up (counted as runner.summarize does):
  tokens written, the sum of its accept lengths (tau's numerator: accepted + 1 per step),
  verification steps, and seconds (its share of its batch's wall time)."""
  return {"tokens": [len(r.output_token_ids) for r in results],
          "accept_length_sum": [sum(r.accept_lengths) for r in results],
          "steps": [len(r.accept_lengths) for r in results],
          "seconds": [r.seconds / r.batch_rows for r in results]}


def category_stats(results: list[runner.DecodeResult], window: int) -> dict:
  """One category's figures: tau, tokens/s, counts, the accept-length histogram (1..K+1) and
  the per-prompt figures (`prompt_figures`) the intervals resample."""
  s = runner.summarize(results, ["all"] * len(results))
  counts = collections.Counter(a for r in results for a in r.accept_lengths)
  top = max([window + 1, *counts])
  return {
      "tau": s["mean_accept_length"], "tokens_per_second": s["tokens_per_second"],
      "num_prompts": s["num_prompts"], "num_tokens": s["num_tokens"], "num_steps": s["num_steps"],
      "seconds": sum(r.seconds / r.batch_rows for r in results),
      "accept_length_histogram": {str(k): counts.get(k, 0) for k in range(1, top + 1)},
      "per_prompt": prompt_figures(results),
  }


def _ratio(num, den):
  """num / den elementwise, 0 where den is 0 (as the pooled figures read then)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def resampled_prompts(n: int, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
                      ) -> np.ndarray:
  """[resamples, n] prompt indices drawn with replacement: the draws of every percentile
  bootstrap over prompts here and in benchmarks/ (pairing = the same draws for both sides)."""
  return np.random.default_rng(seed).integers(0, n, (resamples, n))


def interval_95(draws) -> list[float]:
  """The 95% percentile interval [low, high] of bootstrap draws."""
  return [float(v) for v in np.percentile(draws, [2.5, 97.5])]


def paired_bootstrap(drafter: dict, baseline: dict, resamples: int = RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> dict:
  """The pooled tau and speedup over prompts with 95% percentile bootstrap intervals.

  `drafter` and `baseline` hold per-prompt lists (`prompt_figures`) of the same prompts in the
  same order. Each resample draws prompt indices with replacement, the same ones for both
  (paired), and pools them: tau = sum accept_length_sum / sum steps, speedup = (tokens /
  seconds) / (baseline tokens / baseline seconds). Returns {"tau": point, "tau_interval":
  [low, high], "speedup": ..., "speedup_interval": ..., "num_prompts", "resamples", "seed"};
  the points pool every prompt once (the "overall" figures)."""
  n = len(drafter["steps"])
  assert n and all(len(v) == n for v in (*drafter.values(), *baseline.values())), \
      "paired bootstrap: the drafter and the baseline need the same prompts"
  d = {k: np.asarray(v, np.float64) for k, v in drafter.items()}
  b = {k: np.asarray(v, np.float64) for k, v in baseline.items()}

  def pooled(idx):
    tau = _ratio(d["accept_length_sum"][idx].sum(-1), d["steps"][idx].sum(-1))
    tps = _ratio(d["tokens"][idx].sum(-1), d["seconds"][idx].sum(-1))
    base_tps = _ratio(b["tokens"][idx].sum(-1), b["seconds"][idx].sum(-1))
    return tau, _ratio(tps, base_tps)

  tau, speedup = pooled(np.arange(n))
  taus, speedups = pooled(resampled_prompts(n, resamples, seed))
  return {"tau": float(tau), "tau_interval": interval_95(taus), "speedup": float(speedup),
          "speedup_interval": interval_95(speedups), "num_prompts": n, "resamples": resamples,
          "seed": seed}


def pooled_prompts(per_cat: dict) -> dict:
  """The per-prompt figures of every category, concatenated in category order."""
  return {k: [x for st in per_cat.values() for x in st["per_prompt"][k]]
          for k in ("tokens", "accept_length_sum", "steps", "seconds")}


def overall_intervals(per_cat: dict, baseline: dict) -> dict:
  """report.json's INTERVALS entry of a row (per-category stats, as in report.json too) against
  the autoregressive row: `paired_bootstrap` over all prompts of all categories pooled."""
  assert list(per_cat) == list(baseline) and all(
      per_cat[c]["num_prompts"] == baseline[c]["num_prompts"] for c in per_cat), \
      "a drafter and the autoregressive baseline must decode the same prompts in the same order"
  boot = paired_bootstrap(pooled_prompts(per_cat), pooled_prompts(baseline))
  return {"tau": boot["tau_interval"], "speedup": boot["speedup_interval"],
          **{k: boot[k] for k in ("num_prompts", "resamples", "seed")}}


def with_speedups(per_cat: dict, baseline: dict) -> dict:
  """Adds speedups over `baseline` (the autoregressive per-category stats), the category mean,
  the pooled overall figures and their 95% intervals (`overall_intervals`)."""
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
  return {"categories": per_cat, "mean": mean, "overall": overall,
          INTERVALS: overall_intervals(per_cat, baseline)}
