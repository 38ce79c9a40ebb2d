"""Decoding a list of prompts in batches with wall-clock timing that leaves compilation out.

Prompts are right-padded to power-of-two length buckets, so a run compiles `generate` once per
bucket; the first batch of each bucket is decoded once untimed (warm-up) before being timed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ppow_jax.decoding import engine, sampling
from ppow_jax.decoding.tree import TreeSpec
from ppow_jax.decoding.drafter import LMDrafter
from ppow_jax.models import transformer
from ppow_jax.progress import Progress


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  window: int = 6
  max_new_tokens: int = 128
  batch_size: int = 1
  sp: sampling.SamplingParams = sampling.SamplingParams()
  seed: int = 0
  min_bucket: int = 16
  tree: TreeSpec | None = None  # a dynamic draft tree instead of a chain of `window` (needs a drafter)


@dataclasses.dataclass
class DecodeResult:
  output_token_ids: list[int]
  accept_lengths: list[int]  # tokens produced per verification step (accepted + 1)
  seconds: float  # wall time of the batch this prompt was decoded in
  batch_rows: int = 1  # prompts sharing that batch


def bucket_length(n: int, min_bucket: int) -> int:
  b = min_bucket
  while b < n:
    b *= 2
  return b


_WARMED: set = set()  # (config, shapes, static settings) already compiled in this process


def batches_of(num_prompts: int, batch_size: int) -> list[list[int]]:
  """The prompt indices of each batch `decode` makes, in order."""
  return [list(range(i, min(i + batch_size, num_prompts)))
          for i in range(0, num_prompts, batch_size)]


def decode(target_cfg, target_params, prompt_ids: Sequence[Sequence[int]], settings: DecodeSettings,
           *, drafter=None, drafter_params: Any = None, desc: str = "decode",
           progress: bool = True, done: dict[int, list[DecodeResult]] | None = None,
           on_batch: Callable[[int, list[DecodeResult]], None] | None = None
           ) -> list[DecodeResult]:
  """Decodes every prompt (lists of token ids); returns one result per prompt, in order.

  `done` maps batch indices (see `batches_of`) to their results from an interrupted run: those
  batches are not decoded again, and the others keep their random keys, so a resumed run gives
  what an uninterrupted one would. `on_batch(index, results)` is called as each batch finishes.
  """
  results: list[DecodeResult | None] = [None] * len(prompt_ids)
  bs = settings.batch_size
  batches = batches_of(len(prompt_ids), bs)
  done = done or {}
  rng = jax.random.key(settings.seed)
  # Decode-layout weights (unrolled layers): done once here, a no-op if the caller already did.
  target_params = transformer.unstack(target_params)
  if isinstance(drafter, LMDrafter):
    drafter_params = transformer.unstack(drafter_params)
  kw = dict(drafter=drafter, drafter_params=drafter_params,
            window=settings.window if drafter is not None else 0,
            tree=settings.tree if drafter is not None else None,
            max_new_tokens=settings.max_new_tokens, sp=settings.sp, eos_ids=target_cfg.eos_ids)
  bar = Progress(len(batches), desc, unit="batch", leave=False, enabled=progress)
  for bi, rows in enumerate(batches):
    if bi in done:
      for i, r in zip(rows, done[bi]):
        results[i] = r
      bar.update()
      continue
    lens = [len(prompt_ids[i]) for i in rows]
    p = bucket_length(max(lens), settings.min_bucket)
    toks = np.zeros((bs, p), np.int32)
    lens_arr = np.ones((bs,), np.int32)
    for j, i in enumerate(rows):
      toks[j, :lens[j]] = prompt_ids[i]
      lens_arr[j] = lens[j]
    for j in range(len(rows), bs):  # Pad a short last batch with copies of its first row.
      toks[j], lens_arr[j] = toks[0], lens_arr[0]
    toks, lens_j = jnp.asarray(toks), jnp.asarray(lens_arr)
    key = jax.random.fold_in(rng, bi)
    # Compiled shapes are warmed once per process, not once per call: an evaluation decodes
    # each category with its own call, and a per-call warm-up would decode many prompts twice.
    shape_key = (target_cfg, p, bs, drafter, kw["window"], kw["tree"], kw["max_new_tokens"],
                 kw["sp"], kw["eos_ids"])
    if shape_key not in _WARMED:
      jax.block_until_ready(engine.generate(target_cfg, target_params, toks, lens_j, key, **kw))
      _WARMED.add(shape_key)
    t0 = time.perf_counter()
    out = jax.block_until_ready(engine.generate(target_cfg, target_params, toks, lens_j, key, **kw))
    dt = time.perf_counter() - t0
    out = jax.device_get(out)
    for j, i in enumerate(rows):
      n, steps = int(out.num_tokens[j]), int(out.num_steps[j])
      results[i] = DecodeResult(output_token_ids=out.tokens[j, :n].tolist(),
                                accept_lengths=out.accept_lengths[j, :steps].tolist(), seconds=dt,
                                batch_rows=len(rows))
    if on_batch is not None:
      on_batch(bi, [results[i] for i in rows])
    bar.update()
  bar.close()
  return results


def summarize(results: Sequence[DecodeResult], categories: Sequence[str]) -> dict:
  """tau (mean tokens per verification step, bonus included, as EAGLE reports it), tokens/s."""

  def stats(idx):
    steps = sum(len(results[i].accept_lengths) for i in idx)
    toks = sum(len(results[i].output_token_ids) for i in idx)
    # A batch's wall time is shared equally by its rows, so whole batches add up to their time.
    secs = sum(results[i].seconds / results[i].batch_rows for i in idx)
    return {
        "mean_accept_length": sum(sum(results[i].accept_lengths) for i in idx) / max(steps, 1),
        "tokens_per_second": toks / secs if secs else 0.0,
        "num_prompts": len(idx),
        "num_tokens": toks,
        "num_steps": steps,
    }

  summary = stats(range(len(results)))
  summary["per_category"] = {
      c: stats([i for i, ci in enumerate(categories) if ci == c]) for c in dict.fromkeys(categories)}
  return summary
