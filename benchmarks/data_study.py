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
"""

from __future__ import annotations

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


def bootstrap_agreement(rows, reps: int = 2000, seed: int = 0):
  """Adds to each row with per-prompt counts a 95% interval of its agreement and, where magpie
  ran the same steps, the paired difference to it (resampling the held-out prompts)."""
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
    ref = next((m for m in rows if m["source"] == "magpie" and m["steps"] == r["steps"]
                and "agreement_hits" in m), None)
    if ref is not None and ref is not r:
      r["vs_magpie"] = r["agreement"] - ref["agreement"]
      r["vs_magpie_ci"] = statistics.interval_95(ratio(r) - ratio(ref))


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
  target = None
  if scored:
    target = startup.load_target(sft_config("magpie", args, args.workdir, 1))
    held, _ = heldout_set(args, target.tokenizer, target.cfg, target.params())
    for label, steps, export in scored:
      rows = [r for r in rows if (r["source"], r["steps"]) != (label, steps)]
      rows.append({"source": label, "steps": steps, "export": os.path.abspath(export),
                   **score_fields(args, target, load_eagle3(export, target.cfg), held, windows)})
      print(f"{label}, {steps} steps: agreement {rows[-1]['agreement']:.4f}", flush=True)
    run_files.write_json(results, {"args": vars(args), "rows": rows})
    return write_report(args, rows, windows)
  if args.rescore:
    target = startup.load_target(sft_config("magpie", args, args.workdir, 1))
    held, _ = heldout_set(args, target.tokenizer, target.cfg, target.params())
    for r in rows:
      if "agreement_hits" not in r:
        export = os.path.join(args.workdir, f"{r['source']}_{r['steps']}", "export")
        r.update(agreement_fields(target, load_eagle3(export, target.cfg), held, args.seq_len))
        print(f"{r['source']}, {r['steps']} steps: agreement {r['agreement']:.4f}", flush=True)
    run_files.write_json(results, {"args": vars(args), "rows": rows})
    return write_report(args, rows, windows)
  for source in args.sources.split(","):
    data_cpu = None
    for steps in (int(s) for s in args.steps.split(",")):
      if any(r["source"] == source and r["steps"] == steps for r in rows):
        print(f"{source}, {steps} steps: measured before, kept")
        continue
      workdir = os.path.join(args.workdir, f"{source}_{steps}")
      os.makedirs(workdir, exist_ok=True)
      config = sft_config(source, args, workdir, steps)
      if target is None:
        target = startup.load_target(config)
        held, held_texts = heldout_set(args, target.tokenizer, target.cfg, target.params())
      if data_cpu is None:  # the data (and its feature cache) once per source
        t = time.process_time()
        train, _ = data_feed.prepare_data(config, target, workdir)
        data_cpu = time.process_time() - t
        unique_tokens = int(token_counts(train, target.cfg.vocab_size).sum())
        # Made by an earlier run (cached now): its cost is the one that run measured.
        data_cpu = next((r["data_cpu_min"] * 60 for r in rows if r["source"] == source), data_cpu)
      t = time.process_time()
      sft.run(config, workdir)
      train_cpu = time.process_time() - t
      drafter = load_eagle3(os.path.join(workdir, "export"), target.cfg)
      rows.append({"source": source, "steps": steps,
                   "conversations": args.num_conversations if source != "magpie" else None,
                   "training_sequences": len(train), "data_cpu_min": data_cpu / 60,
                   "train_cpu_min": train_cpu / 60, "unique_tokens": unique_tokens,
                   **score_fields(args, target, drafter, held, windows)})
      print(json.dumps({k: v for k, v in rows[-1].items() if "_hits" not in k
                        and "_positions" not in k}), flush=True)
      run_files.write_json(results, {"args": vars(args), "rows": rows})
  write_report(args, rows, windows)


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
  table = common.markdown_table(
      ["source", "steps", "CPU min (data + training)", "response tokens", "agreement [95%]",
       "vs magpie, same steps [95%]", *(f"tau K={k}" for k in windows)],
      [[r["source"], r["steps"],
        f"{r['data_cpu_min']:.1f} + {r['train_cpu_min']:.1f}" if "data_cpu_min" in r else "",
        r.get("unique_tokens", ""), f"{r['agreement']:.3f}" + ci(r, "agreement_ci"),
        (f"{r['vs_magpie']:+.3f}" + ci(r, "vs_magpie_ci")) if "vs_magpie" in r else "",
        *(f"{r[f'tau_k{k}']:.2f}" for k in windows)]
       for r in rows])
  print(table)
  common.write_results(args.workdir, {"args": vars(args), "rows": rows},
                       table + "\n\n![agreement against steps and response tokens](study.png)",
                       title="Training data per CPU minute")
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  # Against steps and against response tokens: a row's training CPU holds the feature pass
  # only for its source's first budget (later ones reuse the cache), so CPU minutes are read
  # from the table, not plotted as one axis.
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for source in dict.fromkeys(r["source"] for r in rows):
    for ax, x in zip(axes, ("steps", "unique_tokens")):
      mine = [r for r in rows if r["source"] == source and x in r]  # --score rows: steps only
      if not mine:
        continue
      ax.errorbar([r[x] for r in mine], [r["agreement"] for r in mine],
                  yerr=np.array([[r["agreement"] - r["agreement_ci"][0],
                                  r["agreement_ci"][1] - r["agreement"]] if "agreement_ci" in r
                                 else [0, 0] for r in mine]).T,
                  marker="o", capsize=3, label=source, linestyle="-" if x == "steps" else "none")
  axes[0].set_xlabel("training steps (8 x 320 tokens)")
  axes[1].set_xlabel("response tokens in the training data")
  axes[1].set_xscale("log")
  axes[0].set_ylabel("held-out agreement, 95% interval")
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.workdir, "study.png"), dpi=120)


if __name__ == "__main__":
  main()
