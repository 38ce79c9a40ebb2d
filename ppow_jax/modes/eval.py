"""Evaluation mode: one target, several drafters, benchmark prompts, temperatures, a window sweep.

Everything is loaded and checked before any decoding: every benchmark file, the target, every
drafter against the target (vocabulary; EAGLE-3 aux layers and hidden size), the context length.
Speedup = a drafter's wall-clock tokens/s divided by the autoregressive tokens/s of the same
engine on the same prompts in the same run (runner.decode keeps compilation out of the timings).
Each batch of a category is decoded by its own runner.decode call, so batches never mix
categories and the per-category times are exact; the baseline and every drafter decode a batch
back to back before the next one (interleaved), so a drift in machine speed hits them alike.
"mean" columns average over categories; report.json also holds the pooled "overall" figures,
with 95% percentile bootstrap intervals of its tau and speedup (`statistics.overall_intervals`:
prompts resampled, paired with the autoregressive run) under "overall_interval_95", and each
category's per-prompt figures (tokens, accept lengths, steps, seconds) they come from.
With `eval.tree` every drafter is decoded twice, as a chain of `eval.window` and as that dynamic
draft tree (row "NAME tree d,k,n"), or, with `eval.window` = 0, as the tree only (rows named as
the drafters); `eval.tree_num_nodes` sweeps the tree's num_nodes. Writes WORKDIR/report.md,
report.json and PNG plots (see `report`). Each decoded batch is kept in WORKDIR/eval.partial.jsonl
until the report is written, so rerunning the same command after an interruption resumes (the
resumed batches' per-prompt figures, timings included, are the logged ones).
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging

from ppow_jax import run_files
from ppow_jax.data import prompts as prompt_files
from ppow_jax.decoding import runner, sampling
from ppow_jax.decoding import tree as draft_tree
from ppow_jax.decoding.drafter_io import DrafterMismatchError, load_drafter
from ppow_jax.evaluation import parsing, report, statistics
from ppow_jax.evaluation.parsing import EvalSetupError
from ppow_jax.models import hf_checkpoint, transformer
from ppow_jax.progress import Progress

AUTOREGRESSIVE = report.AUTOREGRESSIVE
PARTIAL = "eval.partial.jsonl"  # the batches decoded so far, while a run is unfinished


def load_drafters(specs: dict[str, str], target_cfg, target_params) -> dict:
  """{name: (drafter, params)}; any failure is raised naming the drafter and its path."""
  out = {}
  for name, path in specs.items():
    try:
      out[name] = load_drafter(path, target_cfg, target_params)
    except DrafterMismatchError as e:
      raise DrafterMismatchError(f"drafter {name!r}: {e}") from None
    except (OSError, ValueError) as e:
      raise EvalSetupError(f"drafter {name!r} ({path}) cannot be used: {e}") from e
  return out


def run(config, workdir: str):
  # --- Everything that can be wrong is found here, before any decoding. ---
  if not config.target.path:
    raise EvalSetupError("config.target.path is empty: give a Hugging Face checkpoint directory")
  temperatures = parsing.parse_numbers("config.eval.temperatures", config.eval.temperatures,
                                       float, 0.0)
  if not temperatures:
    raise EvalSetupError("config.eval.temperatures is empty")
  window = parsing.parse_numbers("config.eval.window", config.eval.window, int, 0)[0]
  windows = sorted(parsing.parse_numbers("config.eval.windows", config.eval.windows, int, 1))
  tree, tree_nodes = parsing.parse_trees("config.eval.tree", config.eval.get("tree", ""),
                                         "config.eval.tree_num_nodes",
                                         config.eval.get("tree_num_nodes", ""))
  tree_only = window == 0  # the drafters decode as eval.tree only, in rows named as they are
  if tree_only and tree is None:
    raise EvalSetupError("config.eval.window=0 (drafters decode as a tree only) needs "
                         "config.eval.tree ('depth,topk,num_nodes')")
  specs = parsing.parse_drafters(config.drafters)
  categories = parsing.split(config.data.categories)
  limit = config.data.limit_per_category or None
  benchmarks = parsing.split(config.data.benchmarks)
  prompts = parsing.load_benchmarks(benchmarks, categories, limit)
  target = hf_checkpoint.load_model(config.target.path, dtype=config.target.dtype or None)
  tparams = transformer.unstack(target.params())  # decode layout, made once
  drafters = load_drafters(specs, target.cfg, tparams)
  tokenizer = hf_checkpoint.load_tokenizer(config.target.path)
  ids = prompt_files.encode_prompts(tokenizer, prompts, config.data.max_prompt_len,
                                    config.data.truncation)
  e = config.eval
  longest = max(map(len, ids))
  k_max = max([window, *windows, tree.depth if tree else 0]) if drafters else 0
  need = longest + e.max_new_tokens + k_max + 1
  if need > target.cfg.max_position_embeddings:
    raise EvalSetupError(
        f"longest prompt ({longest} tokens; config.data.max_prompt_len="
        f"{config.data.max_prompt_len}) + config.eval.max_new_tokens ({e.max_new_tokens}) + "
        f"window ({k_max}) + 1 = {need} exceeds the target's "
        f"max_position_embeddings ({target.cfg.max_position_embeddings}); lower one of them")
  run_files.record_config(workdir, config)
  cats = list(dict.fromkeys(p.category for p in prompts))
  cat_ids = {c: [x for x, p in zip(ids, prompts) if p.category == c] for c in cats}
  sweep = [k for k in windows if k != window] if drafters else []
  tree_sweep = [n for n in tree_nodes if n != tree.num_nodes] if drafters and tree else []
  logging.info("eval: %d prompts in %d categories, drafters %s, temperatures %s, K=%d, sweep %s, "
               "tree %s, num_nodes sweep %s", len(prompts), len(cats), list(specs), temperatures,
               window, windows, tree, tree_nodes)

  # --- Decoding. ---
  per_t = 1 + len(drafters) * (2 if tree and not tree_only else 1)
  calls = len(temperatures) * per_t + (len(sweep) + len(tree_sweep)) * len(drafters)
  num_batches = sum(-(-len(cat_ids[c]) // e.batch_size) for c in cats)
  bar = Progress(calls * num_batches, "eval", unit="decode", enabled=e.progress)

  def key(name: str, temperature: float, k: int, tree=None) -> tuple:
    """A decode's key in `outputs` and in `decode`'s result: a chain's K or a tree's spec."""
    return (name, temperature, str(tree) if tree else k)

  def decode(jobs: list[tuple]) -> dict:
    """{key: per-category stats} of each job (name, temperature, k, tree), decoded batch by
    batch with every job's decode of a batch back to back: a drift in the machine's speed
    (other tenants, clocks) then hits the baseline and the drafters alike, instead of whichever
    ran last (per category was not enough: one category of 8 prompts read 0.93x where the
    same drafter read 1.16x on 13 categories). Batches never mix categories."""
    per_job = {key(*j): {} for j in jobs}
    names = [str(list(key(*j))) for j in jobs]  # the log's keys (JSON keys are strings)
    for c in cats:
      found = {key(*j): [] for j in jobs}
      for b0 in range(0, len(cat_ids[c]), e.batch_size):
        kept = finished.get((c, b0, tuple(names)))
        if kept is not None:  # decoded by an interrupted run with the same settings
          for j, n in zip(jobs, names):
            found[key(*j)] += [runner.DecodeResult(**r) for r in kept[n]]
          bar.update(len(jobs))
          continue
        batch = {}
        for j, (name, temperature, k, tree) in zip(names, jobs):
          drafter, dparams = drafters.get(name, (None, None))
          settings = runner.DecodeSettings(
              window=k, max_new_tokens=e.max_new_tokens, batch_size=e.batch_size,
              seed=config.seed + b0, tree=tree,
              sp=sampling.SamplingParams(temperature=temperature, top_k=e.top_k, top_p=e.top_p))
          bar.set_postfix(f"{name} T={temperature:g} {f'tree {tree}' if tree else f'K={k}'} {c}")
          batch[j] = runner.decode(
              target.cfg, tparams, cat_ids[c][b0:b0 + e.batch_size], settings, drafter=drafter,
              drafter_params=dparams, desc=c, progress=False)
          found[key(name, temperature, k, tree)] += batch[j]
          bar.update()
        log.append({"category": c, "start": b0, "jobs": names, "results": {
            j: [dataclasses.asdict(r) for r in rs] for j, rs in batch.items()}})
      for name, temperature, k, tree in jobs:
        kk, drafter = key(name, temperature, k, tree), drafters.get(name)
        longest = (tree.depth if tree else k) if drafter is not None else 0
        per_job[kk][c] = statistics.category_stats(found[kk], longest)
        outputs[kk] = outputs.get(kk, []) + [r.output_token_ids for r in found[kk]]
    return per_job

  def identical(name: str, temperature: float, k) -> float:
    """Share of prompts whose output equals the autoregressive one (greedy: must be 1)."""
    ours, base = outputs[(name, temperature, k)], outputs[key(AUTOREGRESSIVE, temperature, 0)]
    return sum(a == b for a, b in zip(ours, base)) / len(base)

  # Each batch's results (of every job decoding it) go to eval.partial.jsonl as they finish; a
  # rerun with the same settings and prompts decodes only the batches missing there. A batch is
  # logged once all its jobs are done, so the resumed ones stay interleaved (see `decode`).
  log = run_files.BatchLog(os.path.join(workdir, PARTIAL), {
      "target": os.path.abspath(config.target.path), "dtype": config.target.dtype,
      "drafters": {n: os.path.abspath(p) for n, p in specs.items()}, "seed": config.seed,
      "decode": [e.max_new_tokens, e.batch_size, e.top_k, e.top_p],
      "prompts": run_files.fingerprint([cats, [cat_ids[c] for c in cats]])})
  finished = {(x["category"], x["start"], tuple(x["jobs"])): x["results"] for x in log.entries}
  if finished:
    print(f"resuming: {len(finished)} batches decoded before, from {log.path}", flush=True)
  outputs: dict = {}
  results, sweep_results, tree_results = {}, {}, {}
  figures = ("categories", "mean", "overall", statistics.INTERVALS)
  for t in temperatures:
    # One interleaved pass per temperature: the baseline, every drafter at K (and as a tree),
    # and at the first temperature the K and num_nodes sweeps.
    first = t == temperatures[0]
    jobs = [(AUTOREGRESSIVE, t, 0, None)]
    if not tree_only:
      jobs += [(name, t, window, None) for name in drafters]
    if tree:
      jobs += [(name, t, 0, tree) for name in drafters]
    if first:
      jobs += [(name, t, k, None) for name in drafters for k in sweep]
      jobs += [(name, t, 0, draft_tree.TreeSpec(tree.depth, tree.topk, n))
               for name in drafters for n in tree_sweep]
    stats = decode(jobs)
    base = stats[key(AUTOREGRESSIVE, t, 0)]
    row = {AUTOREGRESSIVE: {"window": 0, "tree": None, **statistics.with_speedups(base, base)}}
    for name in drafters:
      if tree_only:
        row[name] = {"window": 0, "tree": str(tree),
                     **statistics.with_speedups(stats[key(name, t, 0, tree)], base)}
      else:
        row[name] = {"window": window, "tree": None,
                     **statistics.with_speedups(stats[key(name, t, window)], base)}
      if t == 0:  # Greedy speculative decoding is lossless: every output must be the same.
        row[name]["identical_to_autoregressive"] = identical(
            name, t, str(tree) if tree_only else window)
      logging.info("T=%g %s: tau %.3f speedup %.2fx", t, name, row[name]["mean"]["tau"],
                   row[name]["mean"]["speedup"])
      if tree and not tree_only:
        r = row[parsing.tree_row(name, tree)] = {
            "window": 0, "tree": str(tree),
            **statistics.with_speedups(stats[key(name, t, 0, tree)], base)}
        logging.info("T=%g %s tree %s: tau %.3f speedup %.2fx", t, name, tree, r["mean"]["tau"],
                     r["mean"]["speedup"])
        if t == 0:
          r["identical_to_autoregressive"] = identical(name, t, str(tree))
    results[report.temperature_key(t)] = row
    if first and tree_nodes and drafters:
      for name in drafters:
        main = row[name if tree_only else parsing.tree_row(name, tree)]
        tree_results[name] = {
            str(n): (statistics.with_speedups(stats[key(name, t, 0, draft_tree.TreeSpec(
                tree.depth, tree.topk, n))], base) if n != tree.num_nodes
                     else {key: main[key] for key in figures})
            for n in tree_nodes}
    if first and windows and drafters:
      for name in drafters:
        sweep_results[name] = {
            str(k): (statistics.with_speedups(stats[key(name, t, k)], base) if k != window
                     else {key: row[name][key] for key in figures})
            for k in windows}
  bar.close()

  data = {
      "target": config.target.path, "benchmarks": benchmarks,
      "drafters": {AUTOREGRESSIVE: None, **specs},
      "categories": cats, "num_prompts": {c: len(cat_ids[c]) for c in cats},
      "temperatures": temperatures, "window": window, "windows": windows, "seed": config.seed,
      "max_new_tokens": e.max_new_tokens, "batch_size": e.batch_size,
      "max_prompt_len": config.data.max_prompt_len, "top_k": e.top_k, "top_p": e.top_p,
      "limit_per_category": limit or 0,
      "results": results,
      "window_sweep": ({"temperature": temperatures[0], "results": sweep_results}
                       if sweep_results else None),
      "tree": str(tree) if tree else None, "tree_num_nodes": tree_nodes,
      "tree_sweep": ({"temperature": temperatures[0], "depth": tree.depth, "topk": tree.topk,
                      "results": tree_results} if tree_results else None),
  }
  run_files.write_json(os.path.join(workdir, "report.json"), data)
  files = report.write_report(data, workdir)
  log.remove()
  if e.print_tables:  # the pipeline prints its own short summary instead
    print(report.markdown_tables(data))
    print(f"-> {', '.join(os.path.join(workdir, f) for f in ['report.json', *files])}")
  return data
