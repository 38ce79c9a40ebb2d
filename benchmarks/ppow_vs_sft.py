"""PPOW against token-level training as a study: arms x seeds at one CPU budget, paired bootstrap.

  python benchmarks/ppow_vs_sft.py --target ppow_jax/assets/stories260k \
    --start runs/study/sft_start/export --data_dir runs/study/data --cpu_minutes 4 \
    --out runs/study/ppow_vs_sft --eval_prompts 512

From one converged token-level drafter (`--start`, an SFT export) every arm trains for the same
CPU time (`train.max_cpu_seconds`, counted after compilation; single-threaded XLA per run, runs
`--parallel` at a time):
  token-level       the EAGLE-3 loss, continued (configs/sft.py, init_from=start)
  token-level LK    the same with the LK acceptance loss (ttt.loss=lk_lambda, arXiv 2602.23881)
  PPOW              configs/ppow.py (plus --ppow_args)
  PPOW w/o R_dist, PPOW w/o windowing, PPOW w/o both   (ablations, --ablation_seeds seeds)
Then every drafter (and the start) decodes the same held-out prompts (16-token prefixes of the
held-out self-distillation sequences in --data_dir, never trained on) greedily and at T = 1 with
chains of K = 4, 6, 10 and the tree --tree; per-prompt accepted tokens and steps are kept, so
tau's 95% intervals come from a bootstrap over prompts (paired across arms: the same resampled
prompts for every arm) and over seeds (resampled within each arm). Every phase resumes: finished
runs and evaluations are skipped on a rerun. Writes OUT/results.json, OUT/table.md,
OUT/tau.png (tau per arm with intervals) and OUT/diagnostics.png (PPOW's per-step signal).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

import common

ROOT = common.REPO

SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
BASELINE = "token-level"
ABLATIONS = ("PPOW w/o R_dist", "PPOW w/o windowing", "PPOW w/o both")


def arms(a) -> dict[str, tuple[str, list[str]]]:
  """name -> (config file, overrides) of every trained arm."""
  sft = ["--config.optim.warmup_steps=10", f"--config.optim.learning_rate={a.sft_lr}",
         *shlex.split(a.sft_args)]
  ppow = shlex.split(a.ppow_args)
  out = {
      BASELINE: ("configs/sft.py", sft),
      "token-level LK": ("configs/sft.py", [*sft, "--config.ttt.loss=lk_lambda"]),
      "PPOW": ("configs/ppow.py", ppow),
      "PPOW w/o R_dist": ("configs/ppow.py", [*ppow, "--config.ppow.use_proximity=False"]),
      "PPOW w/o windowing": ("configs/ppow.py", [*ppow, "--config.ppow.windowing=False"]),
      "PPOW w/o both": ("configs/ppow.py", [*ppow, "--config.ppow.use_proximity=False",
                                            "--config.ppow.windowing=False"]),
  }
  for v in a.variant:
    name, sep, extra = v.partition("=")
    flags = shlex.split(extra)
    if not sep or not name.strip():
      raise SystemExit(f"--variant {v!r}: expected NAME=ARGS")
    # NAME ends at the first "=": a name holding one ("K=10 windows") would silently become a
    # wrong arm, so every ARGS word must be a flag.
    if not flags or any(not f.startswith("--") for f in flags):
      raise SystemExit(f"--variant {v!r}: ARGS must be --config.x=y flags, got {extra!r} "
                       "(a NAME cannot contain '=')")
    if name.strip() in out:
      raise SystemExit(f"--variant {v!r}: an arm named {name.strip()!r} exists already")
    out[name.strip()] = ("configs/ppow.py", [*ppow, *flags])
  skip = {x.strip() for x in a.skip.split(",") if x.strip()}
  return {k: v for k, v in out.items() if k not in skip}


def references(a, all_arms) -> list[str]:
  """The arms of --also_vs, checked before any training (a typo found after hours is hours lost)."""
  refs = [x.strip() for x in a.also_vs.split(",") if x.strip()]
  for ref in refs:
    if ref not in all_arms:
      raise SystemExit(f"--also_vs {ref!r}: no such arm among {sorted(all_arms)}")
  return refs


def slug(name: str, seed: int | None = None) -> str:
  s = name.replace(" ", "_").replace("/", "").replace("+", "plus_")
  return s if seed is None else f"{s}_seed{seed}"


def _priority():
  """Training runs go before other work on the machine (as root); their budgets are CPU time,
  so priority changes when they finish, never how much they train."""
  try:
    os.nice(-10)
  except OSError:
    pass


def train_one(name, seed, config, overrides, a) -> tuple[str, int, dict]:
  """One training run in a subprocess; skipped when its eval.json (written last) exists."""
  workdir = os.path.join(a.out, "runs", slug(name, seed))
  done = os.path.join(workdir, "eval.json")
  if not os.path.exists(done):
    common = [f"--config.target.path={os.path.abspath(a.target)}",
              f"--config.data.dir={os.path.abspath(a.data_dir)}",
              f"--config.drafter.init_from={os.path.abspath(a.start)}",
              f"--config.data.num_samples={a.num_samples}",
              f"--config.data.num_heldout={a.num_heldout}",
              f"--config.seed={seed}", "--config.data.seed=0",  # one dataset, seeds vary training
              "--config.train.num_steps=1000000", f"--config.train.max_cpu_seconds={a.cpu_minutes * 60}",
              "--config.train.checkpoint_every=100000", "--config.train.log_every=5",
              "--config.eval.windows=()"]
    cmd = [sys.executable, "-m", "ppow_jax.main", f"--config={config}", f"--workdir={workdir}",
           *common, *overrides]
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD)}
    os.makedirs(workdir, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(workdir, "train.log"), "w") as f:
      proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=_priority)
    if proc.returncode:
      raise RuntimeError(f"{name} seed {seed} failed ({proc.returncode}); see {workdir}/train.log")
    with open(os.path.join(workdir, "command.txt"), "w") as f:
      f.write(" ".join(shlex.quote(c) for c in ["python", *cmd[1:]]) + "\n")
    print(f"trained {name} seed {seed} in {time.time() - t0:.0f} s", flush=True)
  with open(done) as f:
    return name, seed, json.load(f)


def settings(a) -> dict[str, dict]:
  """Evaluation settings: name -> decode settings (chains at each K, greedy and T = 1; the tree)."""
  out = {}
  for t in (0.0, 1.0):
    for k in a.windows:
      out[f"T{t:g} K={k}"] = dict(window=k, temperature=t, tree=None)
  d, topk, n = (int(x) for x in a.tree.split(","))
  out[f"T0 tree {a.tree}"] = dict(window=d, temperature=0.0, tree=(d, topk, n))
  return out


def evaluate(a, drafters: dict[str, str]):
  """Per-prompt (accepted tokens, steps) of every drafter at every setting, cached per drafter."""

  from ppow_jax.data import selfdistill
  from ppow_jax.decoding import runner, sampling
  from ppow_jax.decoding.tree import TreeSpec
  from ppow_jax.eagle3.checkpoint import load_eagle3
  from ppow_jax.eagle3.engine_adapter import Eagle3EngineDrafter
  from ppow_jax.models import hf_checkpoint

  model = hf_checkpoint.load_model(a.target)
  cfg, params = model.cfg, model.params()
  heldout = selfdistill.load(a.data_dir, "heldout")
  prompts = [r[1:1 + max(int(r[0]), 16)].tolist() for r in heldout[:a.eval_prompts]]
  if len(prompts) < a.eval_prompts:
    raise SystemExit(f"{a.data_dir}: {len(prompts)} held-out sequences, --eval_prompts "
                     f"{a.eval_prompts} asked for")
  os.makedirs(os.path.join(a.out, "eval"), exist_ok=True)
  out = {}
  items = list(drafters.items())
  for run, export in reversed(items) if a.eval_reverse else items:
    path = os.path.join(a.out, "eval", f"{run}.json")
    if os.path.exists(path):
      with open(path) as f:
        out[run] = json.load(f)
      continue
    t0 = time.time()
    drafter = load_eagle3(export, cfg)
    dr, dp = Eagle3EngineDrafter(drafter.cfg), Eagle3EngineDrafter.bind(drafter, params)
    res = {}
    for name, s in settings(a).items():
      ds = runner.DecodeSettings(
          window=s["window"], max_new_tokens=a.max_new_tokens, batch_size=a.eval_batch,
          sp=sampling.SamplingParams(temperature=s["temperature"]), seed=0,
          tree=TreeSpec(*s["tree"]) if s["tree"] else None)
      r = runner.decode(cfg, params, prompts, ds, drafter=dr, drafter_params=dp, desc=name,
                        progress=False)
      res[name] = {"accepted": [sum(x.accept_lengths) for x in r],
                   "steps": [len(x.accept_lengths) for x in r]}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(res, f)
    os.replace(tmp, path)
    out[run] = res
    print(f"evaluated {run} in {time.time() - t0:.0f} s: " + ", ".join(
        f"{n} {sum(v['accepted']) / sum(v['steps']):.3f}" for n, v in res.items()), flush=True)
  return out


def bootstrap(evals: dict, groups: dict[str, list[str]], setting: str, reps: int, seed: int = 0,
              baseline: str = BASELINE):
  """tau per arm (mean over its seeds of total accepted / total steps) with a 95% interval, and
  each arm's difference to `baseline`; prompts resampled once per replicate for all arms
  (paired), seeds resampled within each arm. Two levels, so not statistics.resampled_prompts:
  its own draws (RandomState, prompts then seeds) keep the published intervals reproducible."""
  rng = np.random.RandomState(seed)
  n = len(next(iter(evals.values()))[setting]["steps"])
  acc = {r: np.asarray(e[setting]["accepted"], np.float64) for r, e in evals.items()}
  stp = {r: np.asarray(e[setting]["steps"], np.float64) for r, e in evals.items()}

  def tau(runs, idx, pick):
    return np.mean([acc[runs[j]][idx].sum() / stp[runs[j]][idx].sum() for j in pick])

  point = {g: tau(runs, np.arange(n), range(len(runs))) for g, runs in groups.items()}
  draws = {g: np.empty(reps) for g in groups}
  for b in range(reps):
    idx = rng.randint(0, n, n)
    for g, runs in groups.items():
      draws[g][b] = tau(runs, idx, rng.randint(0, len(runs), len(runs)))
  out = {}
  for g, runs in groups.items():
    seeds = [acc[r].sum() / stp[r].sum() for r in runs]
    row = {"tau": point[g], "ci": list(np.percentile(draws[g], [2.5, 97.5])), "seeds": len(runs),
           "seed_std": float(np.std(seeds, ddof=1)) if len(runs) > 1 else 0.0}
    if baseline in groups and g != baseline:
      d = draws[g] - draws[baseline]
      rel = draws[g] / draws[baseline] - 1
      row["diff"] = point[g] - point[baseline]
      row["diff_ci"] = list(np.percentile(d, [2.5, 97.5]))
      row["rel"] = point[g] / point[baseline] - 1
      row["rel_ci"] = list(np.percentile(rel, [2.5, 97.5]))
    out[g] = row
  return out


def table(stats: dict, order: list[str], settings_: list[str], baseline: str = BASELINE) -> str:
  lines = []
  for s in settings_:
    lines += [f"**{s}**", "", f"| drafter | seeds | tau [95% CI] | vs {baseline} [95% CI] |",
              "| --- | --- | --- | --- |"]
    for g in order:
      r = stats[s].get(g)
      if r is None:
        continue
      cell = f"{r['tau']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
      diff = "" if "diff" not in r else (
          f"{r['diff']:+.3f} ({100 * r['rel']:+.1f}%) [{100 * r['rel_ci'][0]:+.1f}%, "
          f"{100 * r['rel_ci'][1]:+.1f}%]" + (" *" if r['rel_ci'][0] > 0 or r['rel_ci'][1] < 0
                                               else ""))
      lines.append(f"| {g} | {r['seeds']} | {cell} | {diff} |")
    lines.append("")
  return "\n".join(lines)


def plot_tau(stats, order, settings_, path):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(3.2 * len(settings_), 4.2))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, len(settings_), squeeze=False)[0]
  for ax, s in zip(axes, settings_):
    names = [g for g in order if g in stats[s]]
    y = [stats[s][g]["tau"] for g in names]
    err = np.array([[stats[s][g]["tau"] - stats[s][g]["ci"][0],
                     stats[s][g]["ci"][1] - stats[s][g]["tau"]] for g in names]).T
    ax.errorbar(range(len(names)), y, yerr=err, fmt="o", capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_title(s, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel("tau (95% CI: prompts x seeds)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


DIAG = [("zero_var_groups", "groups with zero reward variance"),
        (("reward_p10", "reward_p50", "reward_p90"), "reward p10 / p50 / p90"),
        (("adv_abs_p10", "adv_abs_p50", "adv_abs_p90"), "|advantage| p10 / p50 / p90"),
        ("k_hist", "accepted length of rollouts (share)"),
        (("window_score_p50", "window_score_p90", "window_score_selected"),
         "window score: candidates p50 / p90, selected mean"),
        ("kl", "KL(target || drafter) on windows"),
        ("clip_fraction", "policy-ratio clip fraction"),
        ("rollout_tau", "rollout tau")]


def plot_diagnostics(out_dir, runs: dict[str, str], path):
  """Per-step signal diagnostics of each PPOW arm (first seed), from its metrics.jsonl."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(16, 7.5))
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, 4).ravel()
  for name, workdir in runs.items():
    p = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(p):
      continue
    with open(p) as f:
      rows = [r for r in map(json.loads, f) if "zero_var_groups" in r]
    steps = [r["step"] for r in rows]
    for ax, (key, title) in zip(axes, DIAG):
      ax.set_title(title, fontsize=9)
      if key == "k_hist":
        h = np.array([r["k_hist"] for r in rows])
        if name == "PPOW" and len(h):
          from matplotlib import colormaps
          ax.stackplot(steps, h.T, labels=[f"k={i}" for i in range(h.shape[1])],
                       colors=colormaps["viridis"](np.linspace(0, 1, h.shape[1])))
          ax.legend(fontsize=5, ncol=2, loc="upper right")
        continue
      for j, kk in enumerate(key if isinstance(key, tuple) else (key,)):
        ax.plot(steps, [r[kk] for r in rows], lw=0.7, ls=("-", "--", ":")[j],
                label=name if j == 0 else None,
                color=f"C{list(runs).index(name)}")
  axes[0].legend(fontsize=7)
  for ax in axes:
    ax.set_xlabel("step", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--target", required=True)
  ap.add_argument("--start", required=True, help="token-level drafter export to start from")
  ap.add_argument("--data_dir", required=True, help="self-distillation data of the start run")
  ap.add_argument("--num_samples", type=int, default=4608, help="as the start run's data")
  ap.add_argument("--num_heldout", type=int, default=512, help="as the start run's data")
  ap.add_argument("--cpu_minutes", type=float, default=4.0, help="training budget of every run")
  ap.add_argument("--seeds", type=int, default=5, help="seeds of the main arms")
  ap.add_argument("--ablation_seeds", type=int, default=3)
  ap.add_argument("--parallel", type=int, default=2, help="training runs at a time")
  ap.add_argument("--sft_lr", type=float, default=1e-4)
  ap.add_argument("--sft_args", default="")
  ap.add_argument("--ppow_args", default="")
  ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                  help='an extra PPOW arm (ablation seeds), e.g. "G16=--config.ppow.group_size=16"')
  ap.add_argument("--skip", default="", help="comma-separated arms to leave out")
  ap.add_argument("--eval_prompts", type=int, default=512)
  ap.add_argument("--eval_batch", type=int, default=64)
  ap.add_argument("--max_new_tokens", type=int, default=112)
  ap.add_argument("--windows", default="4,6,10")
  ap.add_argument("--tree", default="6,4,24", help="depth,topk,num_nodes of the tree row")
  ap.add_argument("--bootstrap", type=int, default=2000)
  ap.add_argument("--eval_reverse", action="store_true",
                  help="evaluate the drafters last to first (a second process beside a first)")
  ap.add_argument("--finished_only", action="store_true",
                  help="train nothing: evaluate and report the runs that finished")
  ap.add_argument("--also_vs", default="", help="comma-separated arms to compare every arm "
                  "against too (e.g. PPOW: each PPOW variant against PPOW), in table.md")
  ap.add_argument("--out", required=True)
  a = ap.parse_args()
  a.windows = [int(k) for k in a.windows.split(",")]
  os.makedirs(a.out, exist_ok=True)

  all_arms = arms(a)
  refs = references(a, all_arms)
  main_arms = {BASELINE, "token-level LK", "PPOW"}
  jobs = [(name, seed, *spec) for name, spec in all_arms.items()
          for seed in range(a.seeds if name in main_arms else a.ablation_seeds)]
  # The main arms' first three seeds, then each ablation once, then the rest seed by seed: a
  # study cut short still compares the main arms over seeds and has every ablation.
  jobs.sort(key=lambda j: (0 if j[0] in main_arms and j[1] < 3 else 1 if j[1] == 0 else 2, j[1],
                           list(all_arms).index(j[0])))
  results = {}
  if a.finished_only:
    jobs = [j for j in jobs
            if os.path.exists(os.path.join(a.out, "runs", slug(j[0], j[1]), "eval.json"))]
  with concurrent.futures.ThreadPoolExecutor(a.parallel) as pool:
    futs = [pool.submit(train_one, *j, a) for j in jobs]
    for f in concurrent.futures.as_completed(futs):
      name, seed, r = f.result()
      results[slug(name, seed)] = {"arm": name, "seed": seed, "steps": r["num_steps"]}

  drafters = {"start": os.path.abspath(a.start)}
  drafters.update({k: os.path.join(a.out, "runs", k, "export") for k in sorted(results)})
  evals = evaluate(a, drafters)
  evals = {k: evals[k] for k in drafters}  # one order, whichever process evaluated what
  groups = {"start": ["start"]}
  for k, r in results.items():
    groups.setdefault(r["arm"], []).append(k)
  order = ["start", *[g for g in all_arms if g in groups]]
  names = list(settings(a))
  stats = {s: bootstrap(evals, groups, s, a.bootstrap) for s in names}
  steps = {g: float(np.mean([results[k]["steps"] for k in runs])) for g, runs in groups.items()
           if g != "start"}
  md = table(stats, order, names)
  md = (f"{len(next(iter(evals.values()))[names[0]]['steps'])} held-out prompts, "
        f"{a.max_new_tokens} new tokens; {a.cpu_minutes:g} CPU minutes of training per run "
        f"(mean steps: " + ", ".join(f"{g} {s:.0f}" for g, s in steps.items()) + ")\n"
        "`*`: the 95% interval of the difference excludes 0.\n\n" + md)
  vs = {}
  for ref in refs:
    if ref not in groups:  # (with --finished_only: an arm none of whose runs finished)
      raise SystemExit(f"--also_vs {ref!r}: no finished run among {sorted(groups)}")
    vs[ref] = {s: bootstrap(evals, groups, s, a.bootstrap, baseline=ref) for s in names}
    md += f"\n## Against {ref} (same bootstrap, paired over prompts)\n\n" + table(
        vs[ref], [g for g in order if g != "start"], names, baseline=ref)
  with open(os.path.join(a.out, "table.md"), "w") as f:
    f.write(md)
  with open(os.path.join(a.out, "results.json"), "w") as f:
    json.dump({"args": {k: v for k, v in vars(a).items()}, "runs": results, "mean_steps": steps,
               "stats": stats, "stats_vs": vs}, f, indent=1)
  plot_tau(stats, order, names, os.path.join(a.out, "tau.png"))
  ppow_runs = {g: os.path.join(a.out, "runs", slug(g, 0)) for g in all_arms if "PPOW" in g
               or g not in (BASELINE, "token-level LK")}
  plot_diagnostics(a.out, ppow_runs, os.path.join(a.out, "diagnostics.png"))
  print(md)


if __name__ == "__main__":
  main()
