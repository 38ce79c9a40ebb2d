"""PPOW against more token-level training at equal wall-clock, plus PPOW's ablations.

  python benchmarks/ppow_vs_sft.py --target ../shared/models/stories260k \
    --start runs/sft/export --data_dir runs/sft/data --minutes 10 --out runs/ppow_vs_sft

From one token-level drafter (`--start`, an SFT export), trains for the same wall-clock budget:
  +token-level   the EAGLE-3 loss, continued (configs/sft.py, init_from=start)
  +PPOW          configs/ppow.py
  PPOW w/o R_dist, PPOW w/o windowing   (ablations)
and measures greedy tau at K=6 and K=10 on the same held-out prompts (prefixes of the held-out
self-distillation sequences in --data_dir). The start is measured first; then the training
runs go --parallel at a time (a token-level run beside PPOW runs), so concurrent runs share the
CPU equally; --parallel equal to the number of training runs gives a strictly equal share.
Writes OUT/results.json and OUT/table.md. Extra config overrides for every PPOW run: --ppow_args "--config.x=y ...".
"""

import argparse
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(name, config, workdir, args, log):
  cmd = [sys.executable, "-m", "ppow_jax.main", f"--config={config}", f"--workdir={workdir}", *args]
  t0 = time.time()
  with open(log, "w") as f:
    proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
  if proc.returncode:
    raise RuntimeError(f"{name} failed ({proc.returncode}); see {log}")
  with open(os.path.join(workdir, "eval.json")) as f:
    result = json.load(f)
  result["wall_seconds"] = time.time() - t0
  result["command"] = " ".join(shlex.quote(c) for c in ["python", *cmd[1:]])
  return name, result


def plot(out_dir, results):
  """OUT/plots.png: tau per run (K=6, K=10) and the PPOW runs' rollout tau over training."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  names = sorted(results, key=lambda n: n != "start")
  fig = Figure(figsize=(13, 4.5))
  FigureCanvasAgg(fig)
  ax1, ax2 = fig.subplots(1, 2)
  x = range(len(names))
  for i, (k, label) in enumerate((("tau_k6", "K=6"), ("tau_k10", "K=10"))):
    ax1.bar([j + 0.4 * i for j in x], [results[n][k] for n in names], width=0.4, label=label)
  ax1.set_xticks([j + 0.2 for j in x], names, rotation=25, ha="right", fontsize=8)
  lo = min(min(r["tau_k6"], r["tau_k10"]) for r in results.values())
  ax1.set_ylim(lo - 0.3, None)
  ax1.set_ylabel("greedy tau on held-out prompts")
  ax1.legend()
  for name in names:
    path = os.path.join(out_dir, _slug(name), "metrics.jsonl")
    if not os.path.exists(path):
      continue
    with open(path) as f:
      rows = [r for r in map(json.loads, f) if "rollout_tau" in r]
    if rows:
      ax2.plot([r["step"] for r in rows], [r["rollout_tau"] for r in rows], label=name, lw=0.8)
  ax2.set_xlabel("step")
  ax2.set_ylabel("rollout tau (sampled windows)")
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "plots.png"), dpi=110)


def _slug(name):
  return name.replace(" ", "_").replace("/", "").replace("+", "plus_")


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--target", required=True)
  ap.add_argument("--start", required=True, help="token-level drafter export to start from")
  ap.add_argument("--data_dir", required=True, help="self-distillation data of the start run")
  ap.add_argument("--minutes", type=float, default=10.0)
  ap.add_argument("--out", required=True)
  ap.add_argument("--parallel", type=int, default=2)
  ap.add_argument("--seq_len", type=int, default=128)
  ap.add_argument("--ppow_args", default="")
  ap.add_argument("--sft_args", default="")
  ap.add_argument("--skip", default="", help="comma-separated run names to leave out")
  ap.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                  help='an extra PPOW run, e.g. "anchor all=--config.ppow.anchor_tokens=all"')
  ap.add_argument("--eval_prompts", type=int, default=32, help="held-out prompts to measure on")
  ap.add_argument("--plot_only", action="store_true", help="redraw OUT/plots.png from OUT")
  a = ap.parse_args()
  if a.plot_only:
    with open(os.path.join(a.out, "results.json")) as f:
      plot(a.out, json.load(f)["results"])
    return
  os.makedirs(a.out, exist_ok=True)
  secs = str(a.minutes * 60)
  common = [f"--config.target.path={os.path.abspath(a.target)}",
            f"--config.data.dir={os.path.abspath(a.data_dir)}",
            f"--config.drafter.init_from={os.path.abspath(a.start)}",
            f"--config.data.seq_len={a.seq_len}", f"--config.data.max_new_tokens={a.seq_len - 1}",
            "--config.eval.windows=(6,10)", "--config.eval.max_new_tokens=96",
            f"--config.eval.num_prompts={a.eval_prompts}"]
  budget = ["--config.train.num_steps=100000", f"--config.train.max_seconds={secs}",
            "--config.train.checkpoint_every=1000"]
  ppow = ["configs/ppow.py", [*common, *budget, *shlex.split(a.ppow_args)]]
  sft = ["configs/sft.py", [*common, *budget, "--config.optim.warmup_steps=10",
                            "--config.optim.learning_rate=1e-3", *shlex.split(a.sft_args)]]
  # +token-level and +PPOW start together, so they share the CPU alike.
  jobs = [
      ("+token-level", sft[0], sft[1]),
      ("+PPOW", ppow[0], ppow[1]),
      ("start", "configs/sft.py", [*common, "--config.train.num_steps=0"]),
      ("PPOW w/o R_dist", ppow[0], [*ppow[1], "--config.ppow.use_proximity=False"]),
      ("PPOW w/o windowing", ppow[0], [*ppow[1], "--config.ppow.windowing=False"]),
      ("PPOW w/o both", ppow[0], [*ppow[1], "--config.ppow.use_proximity=False",
                                  "--config.ppow.windowing=False"]),
  ]
  for v in a.variant:
    name, sep, extra = v.partition("=")
    if not sep or not name.strip():
      ap.error(f"--variant {v!r}: expected NAME=ARGS")
    jobs.append((name.strip(), ppow[0], [*ppow[1], *shlex.split(extra)]))
  skip = {x.strip() for x in a.skip.split(",") if x.strip()}
  jobs = [j for j in jobs if j[0] not in skip]
  order = [j[0] for j in sorted(jobs, key=lambda j: j[0] != "start")]
  results = {}

  def done(name, r):
    results[name] = r
    print(f"{name}: tau_k6={r['tau_k6']:.3f} tau_k10={r['tau_k10']:.3f} steps={r['num_steps']}",
          flush=True)

  # The start's evaluation runs first and alone, so every training run shares the CPU with
  # training runs only (equal wall-clock budgets mean equal compute).
  for name, config, args in [j for j in jobs if j[0] == "start"]:
    done(*run(name, config, os.path.join(a.out, "start"), args, os.path.join(a.out, "start.log")))
  with concurrent.futures.ThreadPoolExecutor(a.parallel) as pool:
    futs = [pool.submit(run, name, config, os.path.join(a.out, _slug(name)), args,
                        os.path.join(a.out, f"{_slug(name)}.log"))
            for name, config, args in jobs if name != "start"]
    for f in concurrent.futures.as_completed(futs):
      done(*f.result())
  rows = ["| drafter | steps | tau (K=6) | tau (K=10) |", "| --- | --- | --- | --- |"]
  for name in order:
    r = results[name]
    rows.append(f"| {name} | {r['num_steps']} | {r['tau_k6']:.3f} | {r['tau_k10']:.3f} |")
  table = "\n".join(rows)
  with open(os.path.join(a.out, "table.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(a.out, "results.json"), "w") as f:
    json.dump({"minutes": a.minutes, "results": results}, f, indent=2)
  plot(a.out, results)
  print(table)


if __name__ == "__main__":
  main()
