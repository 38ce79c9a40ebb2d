"""Which training data makes the best drafter per CPU minute: Magpie self-distillation against
ShareGPT conversations with their given answers, regenerated answers, or a mix (issue 25).

  python benchmarks/data_study.py --workdir runs/data_study --steps 120,480
  python benchmarks/data_study.py --workdir runs/data_study_smoke --smoke   # minutes, tiny

Every source trains README command 1's token-level drafter (configs/targets/smollm2_135m.py,
variant quick: SmolLM2-135M-Instruct, 8 x 320 tokens, one TTT step, a 4k draft vocabulary,
cached features) for each step budget of --steps, from one data directory per source (the data
is made once and its CPU time counted once). Every drafter is measured on the same held-out
set: the target's greedy answers to the last --num_heldout ShareGPT prompts (never trained on),
as deployment sees them:
  * agreement: teacher-forced, the share of response positions where the drafter's first draft
    token (mapped to the target's vocabulary) is the target's full-vocabulary argmax;
  * greedy tau at K = 1..4 (chains) on the first --num_tau of those prompts.
Writes WORKDIR/results.json (one row per source and budget, rewritten after each: CPU minutes of
the data (prompts and answers) and of training (the target's feature pass included), unique
response tokens trained on, agreement, tau), results.md (the table, 95% bootstrap intervals
over the held-out prompts, the paired difference to magpie at the same steps) and study.png
(agreement against steps and against response tokens). Rows already in WORKDIR/results.json
are kept; --rescore measures per-prompt agreement for finished rows that lack it.

Another conversation count is another workdir (with the same held-out set), shown in one table:

  python benchmarks/data_study.py --workdir runs/ds300 --sources given,regenerate,mix \
      --steps 480 --num_conversations 300
  python benchmarks/data_study.py --workdir runs/data_study --include runs/ds300 --specbench 1

--specbench N adds greedy tau on the first N Spec-Bench prompts of each category to every row.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import common
import configs
from ppow_jax import run_files
from ppow_jax.data import prompts
from ppow_jax.data.selfdistill import token_counts
from ppow_jax.models import registry

SOURCES = ("magpie", "given", "regenerate", "mix")
SPECBENCH_PROMPT_LEN = 512  # README command 1's evaluation: configs/targets/smollm2_135m.py


def key(row) -> tuple:
  """A row's identity: its source, steps and (ShareGPT sources) conversation count."""
  return row["source"], row["steps"], row.get("conversations")


def export_dir(args, row) -> str:
  """Where a row's drafter is: --score rows and rows of an --include study name theirs."""
  return row.get("export") or os.path.join(args.workdir, f"{row['source']}_{row['steps']}",
                                            "export")


def sft_config(source: str, args, workdir: str, steps: int):
  """README command 1's token-level settings on `source`'s data."""
  c = configs.load("targets/smollm2_135m", "quick").sft
  c.workdir = workdir
  c.target.path = registry.fetch(registry.SMOLLM2_135M, progress=False)
  c.data.dir = os.path.join(args.workdir, f"data_{source}")
  if source != "magpie":
    c.data.update(dict(synthesize=0, conversations="sharegpt", answers=source, mix_ratio=0.5,
                       num_samples=args.num_conversations, loss_on_prompt=False))
  c.train.num_steps = steps
  c.train.checkpoint_every = max(steps, 1)
  c.eval.update(dict(windows=(), num_prompts=args.num_tau))
  if args.smoke:
    c.data.update(dict(num_samples=24 if source != "magpie" else c.data.num_samples,
                       synthesize=24 if source == "magpie" else 0, num_heldout=4,
                       max_new_tokens=24, seq_len=96, gen_batch_size=8))
    c.drafter.draft_vocab_size = 1024
    c.train.batch_size = 8
  return c


def heldout_set(args, tok, cfg, params):
  """(records [prompt_len, prompt + greedy answer], prompt texts) of the held-out ShareGPT
  prompts, the answers generated once and cached in WORKDIR."""
  path = os.path.join(args.workdir, "heldout_greedy.npz")
  convs, _ = prompts.load_conversations(registry.fetch_data(registry.SHAREGPT))
  held = convs[len(convs) - args.num_heldout:]
  texts = [c.user_turns[0] for c in held]
  ids = [prompts.encode_prompt(tok, prompts.Prompt(c.id, "heldout", c.user_turns[:1]))
         for c in held]
  keep = [i for i, x in enumerate(ids) if len(x) <= args.seq_len - args.max_new_tokens]
  if not os.path.exists(path):
    from ppow_jax.decoding import continuous, sampling
    outs = continuous.generate(cfg, params, [ids[i] for i in keep], continuous.StreamSettings(
        max_new_tokens=args.max_new_tokens, batch_size=16,
        sp=sampling.SamplingParams(temperature=0.0)), desc="held-out greedy answers")
    recs = [np.asarray([len(ids[i]), *ids[i], *o], np.int32) for i, o in zip(keep, outs)]
    np.savez(path, lengths=[len(r) for r in recs], tokens=np.concatenate(recs))
  with np.load(path) as z:
    ends = np.cumsum(z["lengths"])
    recs = [z["tokens"][e - n:e] for n, e in zip(z["lengths"], ends)]
  return recs, [texts[i] for i in keep]


def agreement(target_cfg, target_params, drafter, records, seq_len: int):
  """Per held-out record: (positions where the drafter's first draft token, teacher-forced, is
  the target's full-vocabulary argmax; response positions). Agreement = sum / sum."""
  import jax
  import jax.numpy as jnp
  from ppow_jax.eagle3 import ttt
  from ppow_jax.models import transformer
  dcfg, dparams = drafter.cfg, drafter.params()
  d2t = jnp.asarray(drafter.d2t[...])

  @jax.jit
  def hits(tokens, valid, pred):
    out = transformer.forward(target_cfg, target_params, tokens, key_valid=valid,
                              hidden_layers=dcfg.aux_layers)
    best = jnp.argmax(out.logits, -1)[:, 1:]  # slot j: the target's choice at position j+1
    [logits] = ttt.unroll(dcfg, dparams, target_params["embed"], tokens,
                          jnp.concatenate(out.hidden, -1), 1)
    draft = jnp.argmax(logits[:, :-1], -1)
    draft = draft + d2t[draft]
    m = pred[:, 1:]
    return jnp.sum((draft == best) * m), jnp.sum(m)

  counts, totals = [], []
  for r in records:
    plen, seq = int(r[0]), r[1:1 + seq_len]
    tokens = np.zeros((1, seq_len), np.int32)
    valid = np.zeros((1, seq_len), bool)
    tokens[0, :len(seq)], valid[0, :len(seq)] = seq, True
    pred = np.zeros((1, seq_len), bool)
    pred[0, plen - 1:len(seq) - 1] = True  # positions whose next token is an answer token
    h, n = hits(jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(pred))
    counts.append(int(h))
    totals.append(int(n))
  return counts, totals


def agreement_fields(target, drafter, held, seq_len: int) -> dict:
  h, n = agreement(target.cfg, target.params(), drafter, held, seq_len)
  return {"agreement": sum(h) / max(sum(n), 1), "agreement_hits": h, "agreement_positions": n}


def score_fields(args, target, drafter, held, windows) -> dict:
  """A drafter's row figures: held-out agreement (per prompt) and greedy tau at each window on
  the first --num_tau held-out prompts."""
  from ppow_jax.training import final_eval
  ids = [r[1:1 + int(r[0])].tolist() for r in held[:args.num_tau]]
  return {**agreement_fields(target, drafter, held, args.seq_len),
          **final_eval.measure_tau(target, drafter, ids, windows=windows,
                                   max_new_tokens=args.max_new_tokens, batch_size=1)}


def specbench_fields(args, target, drafter, windows) -> dict:
  """Greedy tau at each window on the first --specbench prompts of every Spec-Bench category
  (as README command 1's evaluation encodes them), pooled, with a 95% interval over prompts."""
  from ppow_jax import assets
  from ppow_jax.decoding import runner
  from ppow_jax.evaluation import parsing, statistics
  from ppow_jax.training.final_eval import Eagle3EngineDrafter
  bench = parsing.load_benchmarks([assets.SPEC_BENCH], [], args.specbench)
  ids = prompts.encode_prompts(target.tokenizer, bench, SPECBENCH_PROMPT_LEN)
  dr, dp = Eagle3EngineDrafter(drafter.cfg), Eagle3EngineDrafter.bind(drafter, target.params())
  out = {"specbench_prompts": len(ids)}
  for k in windows:
    res = runner.decode(target.cfg, target.params(), ids, runner.DecodeSettings(
        window=k, max_new_tokens=args.max_new_tokens, batch_size=1), drafter=dr,
        drafter_params=dp, desc=f"Spec-Bench tau K={k}")
    f = statistics.prompt_figures(res)
    out[f"specbench_tau_k{k}"] = sum(f["accept_length_sum"]) / sum(f["steps"])
    acc, steps = np.asarray(f["accept_length_sum"]), np.asarray(f["steps"])
    idx = statistics.resampled_prompts(len(ids))
    out[f"specbench_tau_k{k}_ci"] = statistics.interval_95(acc[idx].sum(1) / steps[idx].sum(1))
    # Per prompt, so two drafters can be compared paired (same prompts) later.
    out[f"specbench_k{k}_accept_length_sum"], out[f"specbench_k{k}_steps"] = (
        f["accept_length_sum"], f["steps"])
  return out


def bootstrap_agreement(rows, reps: int = 2000, seed: int = 0):
  """Adds to each row with per-prompt counts a 95% interval of its agreement and the paired
  differences to magpie (same steps) and, for the target's answers, to given (same steps and
  conversations), resampling the held-out prompts."""
  from ppow_jax.evaluation import statistics
  n = len(next((r["agreement_hits"] for r in rows if "agreement_hits" in r), []))
  if not n:
    return
  idx = statistics.resampled_prompts(n, reps, seed)
  ratio = lambda r: (np.asarray(r["agreement_hits"])[idx].sum(1)
                     / np.asarray(r["agreement_positions"])[idx].sum(1))
  for r in rows:
    if "agreement_hits" not in r:
      continue
    r["agreement_ci"] = statistics.interval_95(ratio(r))
    # Paired differences: to magpie at the same steps; the target's answers (regenerate, mix)
    # also to the same conversations as given.
    for name, same in (("magpie", ("steps",)), ("given", ("steps", "conversations"))):
      ref = next((m for m in rows if m["source"] == name and "agreement_hits" in m
                  and all(m.get(f) == r.get(f) for f in same)), None)
      if ref is not None and ref is not r and (name == "magpie" or r["source"] in SOURCES[2:]):
        r[f"vs_{name}"] = r["agreement"] - ref["agreement"]
        r[f"vs_{name}_ci"] = statistics.interval_95(ratio(r) - ratio(ref))


def main(argv=None):
  ap = common.parser(__doc__, target=None, out=None)  # the target: SmolLM2-135M-Instruct
  ap.add_argument("--workdir", default="runs/data_study", help="the runs and the results")
  ap.add_argument("--sources", default=",".join(SOURCES))
  ap.add_argument("--steps", default="120,480", help="step budgets, comma-separated")
  ap.add_argument("--num_conversations", type=int, default=2000)
  ap.add_argument("--num_heldout", type=int, default=64)
  ap.add_argument("--num_tau", type=int, default=16)
  ap.add_argument("--windows", default="1,2,3,4")
  ap.add_argument("--max_new_tokens", type=int, default=128)
  ap.add_argument("--seq_len", type=int, default=320)
  ap.add_argument("--smoke", action="store_true", help="tiny data and budgets: checks it runs")
  ap.add_argument("--rescore", action="store_true", help="train nothing: measure the per-prompt "
                  "agreement of the workdir's finished rows that lack it, then report")
  ap.add_argument("--score", action="append", default=[], metavar="LABEL:STEPS=DIR",
                  help="train nothing: add a row for a drafter trained elsewhere (an EAGLE-3 "
                  "export, e.g. README command 1's runs/default/sft/export), scored on the same "
                  "held-out set; repeatable")
  ap.add_argument("--include", action="append", default=[], metavar="WORKDIR",
                  help="train nothing: add the rows of another study's workdir (made with the "
                  "same --num_heldout, e.g. another --num_conversations) to this one's table; "
                  "repeatable")
  ap.add_argument("--specbench", type=int, default=0, metavar="N",
                  help="also greedy tau on the first N Spec-Bench prompts of each category, for "
                  "every row that lacks it")
  ap.add_argument("--specbench_rows", default="", metavar="SOURCE:STEPS[:CONVERSATIONS],...",
                  help="--specbench for these rows only (e.g. magpie:480,given:480:300)")
  args = ap.parse_args(argv)
  if args.smoke:
    args.num_heldout, args.num_tau, args.max_new_tokens, args.seq_len = 6, 2, 16, 96
    args.windows, args.num_conversations = "1,2", 24
  os.makedirs(args.workdir, exist_ok=True)
  from ppow_jax.eagle3.checkpoint import load_eagle3
  from ppow_jax.modes import sft
  from ppow_jax.training import data_feed, startup
  windows = tuple(int(k) for k in args.windows.split(","))
  # Rows of an earlier run in this workdir are kept: a study cut short, or extended by another
  # source or budget, reruns only what it lacks.
  results = os.path.join(args.workdir, common.RESULTS_JSON)
  rows = json.load(open(results))["rows"] if os.path.exists(results) else []
  scored = [parse_score(v) for v in args.score]  # checked before anything loads
  rows += included_rows(args, rows)
  state = {}

  def target_and_held(config):
    if not state:
      state["target"] = startup.load_target(config)
      t = state["target"]
      state["held"] = heldout_set(args, t.tokenizer, t.cfg, t.params())[0]
    return state["target"], state["held"]

  def save():
    run_files.write_json(results, {"args": vars(args), "rows": rows})

  if scored or args.rescore or args.include:
    for label, steps, export in scored:
      target, held = target_and_held(sft_config("magpie", args, args.workdir, 1))
      rows = [r for r in rows if (r["source"], r["steps"]) != (label, steps)]
      rows.append({"source": label, "steps": steps, "export": os.path.abspath(export),
                   **score_fields(args, target, load_eagle3(export, target.cfg), held, windows)})
      print(f"{label}, {steps} steps: agreement {rows[-1]['agreement']:.4f}", flush=True)
      save()
    for r in rows if args.rescore else ():
      if "agreement_hits" not in r:
        target, held = target_and_held(sft_config("magpie", args, args.workdir, 1))
        r.update(agreement_fields(target, load_eagle3(export_dir(args, r), target.cfg), held,
                                  args.seq_len))
        print(f"{r['source']}, {r['steps']} steps: agreement {r['agreement']:.4f}", flush=True)
        save()
  else:
    for source in args.sources.split(","):
      data_cpu = None
      for steps in (int(s) for s in args.steps.split(",")):
        row_key = (source, steps, args.num_conversations if source != "magpie" else None)
        if any(key(r) == row_key for r in rows):
          print(f"{source}, {steps} steps: measured before, kept")
          continue
        if any(key(r)[:2] == row_key[:2] and "workdir" not in r for r in rows):
          raise SystemExit(f"{args.workdir} has {source} at {steps} steps for another "
                           "--num_conversations: give this one another --workdir (and --include "
                           "it here to see both)")
        workdir = os.path.join(args.workdir, f"{source}_{steps}")
        os.makedirs(workdir, exist_ok=True)
        config = sft_config(source, args, workdir, steps)
        target, held = target_and_held(config)
        if data_cpu is None:  # the data (and its feature cache) once per source
          t = time.process_time()
          train, _ = data_feed.prepare_data(config, target, workdir)
          data_cpu = time.process_time() - t
          unique_tokens = int(token_counts(train, target.cfg.vocab_size).sum())
          # Made by an earlier run (cached now): its cost is the one that run measured.
          data_cpu = next((r["data_cpu_min"] * 60 for r in rows if r["source"] == source),
                          data_cpu)
        t = time.process_time()
        sft.run(config, workdir)
        train_cpu = time.process_time() - t
        drafter = load_eagle3(os.path.join(workdir, "export"), target.cfg)
        rows.append({"source": source, "steps": steps, "conversations": row_key[2],
                     "export": os.path.abspath(os.path.join(workdir, "export")),
                     "training_sequences": len(train), "data_cpu_min": data_cpu / 60,
                     "train_cpu_min": train_cpu / 60, "unique_tokens": unique_tokens,
                     **score_fields(args, target, drafter, held, windows)})
        print(json.dumps({k: v for k, v in rows[-1].items() if "_hits" not in k
                          and "_positions" not in k}), flush=True)
        save()
  picked = [k for k in args.specbench_rows.split(",") if k]
  for r in rows if args.specbench else ():
    if matches(r, picked) and not all(f"specbench_tau_k{k}" in r for k in windows):
      target, _ = target_and_held(sft_config("magpie", args, args.workdir, 1))
      r.update(specbench_fields(args, target, load_eagle3(export_dir(args, r), target.cfg),
                                windows))
      print(f"{r['source']}, {r['steps']} steps: Spec-Bench tau "
            + ", ".join(f"K={k} {r[f'specbench_tau_k{k}']:.3f}" for k in windows), flush=True)
      save()
  write_report(args, rows, windows)


def matches(row, keys: list[str]) -> bool:
  """Whether `row` is one of `keys` (SOURCE:STEPS[:CONVERSATIONS]); every row when none."""
  fields = [row["source"], str(row["steps"]), str(row.get("conversations"))]
  return not keys or any(k.split(":") == fields[:len(k.split(":"))] for k in keys)


def included_rows(args, rows) -> list[dict]:
  """The rows of each --include workdir that this study lacks (by `key`), marked with where
  they came from; their held-out set must be this one's (the same per-prompt positions)."""
  out = []
  for other in args.include:
    path = os.path.join(other, common.RESULTS_JSON)
    if not os.path.exists(path):
      raise SystemExit(f"--include {other}: no {common.RESULTS_JSON} there")
    for r in json.load(open(path))["rows"]:
      same = next((m for m in rows + out if key(m) == key(r)), None)
      if same is not None:
        if same.get("agreement_positions") != r.get("agreement_positions"):
          raise SystemExit(f"--include {other}: its {key(r)} row differs from this study's")
        continue
      mine = next((m for m in rows if "agreement_positions" in m), None)
      if mine is not None and mine["agreement_positions"] != r.get("agreement_positions"):
        raise SystemExit(f"--include {other}: scored on another held-out set than "
                         f"{args.workdir} (give both the same --num_heldout)")
      out.append({**r, "workdir": os.path.abspath(other),
                  "export": export_dir(argparse.Namespace(workdir=other), r)})
  return out


def parse_score(value: str):
  """(label, steps, export dir) of a --score value LABEL:STEPS=DIR."""
  head, sep, export = value.partition("=")
  label, _, steps = head.partition(":")
  if not (sep and label and steps.isdigit() and export):
    raise SystemExit(f"--score {value!r}: expected LABEL:STEPS=DIR, e.g. "
                     "command1:720=runs/default/sft/export")
  if not os.path.isdir(export):
    raise SystemExit(f"--score {value!r}: {export} is not a directory")
  return label, int(steps), export


def write_report(args, rows, windows):
  bootstrap_agreement(rows)
  ci = lambda r, k: (f" [{r[k][0]:+.3f}, {r[k][1]:+.3f}]" if k.startswith("vs") else
                     f" [{r[k][0]:.3f}, {r[k][1]:.3f}]") if k in r else ""
  bench = [k for k in windows if any(f"specbench_tau_k{k}" in r for r in rows)]
  table = common.markdown_table(
      ["source", "conversations", "steps", "CPU min (data + training)", "response tokens",
       "agreement [95%]", "vs magpie, same steps [95%]",
       "vs given, same conversations and steps [95%]", *(f"tau K={k}" for k in windows),
       *(f"Spec-Bench tau K={k} [95%]" for k in bench)],
      [[r["source"], r.get("conversations") or "", r["steps"],
        f"{r['data_cpu_min']:.1f} + {r['train_cpu_min']:.1f}" if "data_cpu_min" in r else "",
        r.get("unique_tokens", ""), f"{r['agreement']:.3f}" + ci(r, "agreement_ci"),
        *((f"{r[f'vs_{m}']:+.3f}" + ci(r, f"vs_{m}_ci")) if f"vs_{m}" in r else ""
          for m in ("magpie", "given")),
        *(f"{r[f'tau_k{k}']:.2f}" for k in windows),
        *((f"{r[f'specbench_tau_k{k}']:.2f}" + ci(r, f"specbench_tau_k{k}_ci"))
          if f"specbench_tau_k{k}" in r else "" for k in bench)]
       for r in rows])
  print(table)
  common.write_results(args.workdir, {"args": vars(args), "rows": rows},
                       table + "\n\n![agreement against steps and response tokens](study.png)",
                       title="Training data per CPU minute")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  # Against steps (one line per source and conversation count) and against response tokens
  # (one line per source at the budget most rows share: more data at the same steps). A row's training
  # CPU holds the feature pass only for its source's first budget (later ones reuse the cache),
  # so CPU minutes are read from the table, not plotted as one axis.
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  err = lambda mine: np.array([[r["agreement"] - r["agreement_ci"][0],
                                r["agreement_ci"][1] - r["agreement"]] if "agreement_ci" in r
                               else [0, 0] for r in mine]).T
  for label in dict.fromkeys((r["source"], r.get("conversations")) for r in rows):
    mine = sorted((r for r in rows if (r["source"], r.get("conversations")) == label),
                  key=lambda r: r["steps"])
    name = label[0] + (f" ({label[1]} conv.)" if label[1] else "")
    axes[0].errorbar([r["steps"] for r in mine], [r["agreement"] for r in mine], yerr=err(mine),
                     marker="o", capsize=3, label=name)
  budgets = [r["steps"] for r in rows if "unique_tokens" in r]
  last = max(set(budgets), key=lambda b: (budgets.count(b), b)) if budgets else 0
  for source in dict.fromkeys(r["source"] for r in rows):
    mine = sorted((r for r in rows if r["source"] == source and r["steps"] == last
                   and "unique_tokens" in r), key=lambda r: r["unique_tokens"])
    if mine:  # --score rows: steps only
      axes[1].errorbar([r["unique_tokens"] for r in mine], [r["agreement"] for r in mine],
                       yerr=err(mine), marker="o", capsize=3, label=source)
  axes[0].set_xlabel("training steps (8 x 320 tokens)")
  axes[1].set_xlabel(f"response tokens in the training data ({last} steps)")
  axes[1].set_xscale("log")
  axes[0].set_ylabel("held-out agreement, 95% interval")
  axes[0].legend(fontsize=7)
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(args.workdir, "study.png"), dpi=120)


if __name__ == "__main__":
  main()
