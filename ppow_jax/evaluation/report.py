"""The evaluation report from report.json's dict: markdown tables and PNG plots.

Plots draw on matplotlib's Agg canvas directly (no pyplot), so they never need a display nor
change the process-wide backend. Files, per temperature T: tau_per_category_T{T}.png (grouped
bars), accept_lengths_T{T}.png (distribution of tokens per step, per drafter, chain and tree rows
alike); speedup_vs_window.png (mean speedup against the draft length K) when a sweep ran; and
tau_vs_num_nodes.png (tree tau and speedup against num_nodes, the chain as a line) when a tree
sweep ran.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ppow_jax.evaluation.statistics import INTERVALS

AUTOREGRESSIVE = "autoregressive"


def temperature_key(t: float) -> str:
  """report.json's key (and file-name tag) for a temperature: 0 -> "0", 0.7 -> "0.7"."""
  return f"{float(t):g}"


def drafting(data: dict) -> str:
  """How the main rows' drafters draft: "K=4" (a chain) or "tree 1,4,5" (eval.window = 0)."""
  if data.get("window") == 0 and data.get("tree"):
    return f"tree {data['tree']}"
  return f"K={data['window']}"


def cell(st: dict) -> str:
  return f"{st['tau']:.2f} / {st['speedup']:.2f}×"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
  return lines + ["| " + " | ".join(r) + " |" for r in rows]


def shortfall(data: dict) -> str:
  """A warning when a category gave fewer prompts than config.data.limit_per_category asked for,
  so that a table standing on fewer prompts than its config meant cannot pass unseen; "" when
  every category gave what was asked."""
  limit, n = data.get("limit_per_category") or 0, data["num_prompts"]
  short = {c: k for c, k in n.items() if k < limit}
  if not short:
    return ""
  return (f"WARNING: built from {sum(n.values())} prompts, fewer than the config asked for "
          f"({limit} per category): " + ", ".join(f"{c} has {k}" for c, k in short.items()))


def markdown_tables(data: dict) -> str:
  """Per temperature: rows drafters, columns categories and the mean, cells "tau / speedup×";
  first the `shortfall` warning, if any."""
  note = shortfall(data)
  return (f"{note}\n\n" if note else "") + _tables(data)


def _tables(data: dict) -> str:
  out = []
  cats = data["categories"]
  for tkey, row in data["results"].items():
    out += [f"### Temperature {tkey}{' (greedy)' if float(tkey) == 0 else ''}", ""]
    out += _table(["drafter", *cats, "mean"],
                  [[name, *(cell(r["categories"][c]) for c in cats), cell(r["mean"])]
                   for name, r in row.items()])
    out.append("")
  return "\n".join(out)


def _has_intervals(data: dict) -> bool:
  """Whether every row carries its intervals (a report.json made before them does not)."""
  return all(INTERVALS in r for row in data["results"].values() for r in row.values())


def _interval(r: dict, key: str) -> str:
  """' [low, high]' of a row's 95% interval of `key` (tau or speedup)."""
  low, high = r[INTERVALS][key]
  return f" [{low:.2f}, {high:.2f}]"


def overall_tables(data: dict) -> str:
  """Per temperature: each drafter's overall (pooled) tau and speedup with their 95% intervals
  and the prompts they stand on; "" for a report.json made before the intervals were."""
  if not _has_intervals(data):
    return ""
  some = next(iter(next(iter(data["results"].values())).values()))[INTERVALS]
  out = [f"[95%] = percentile bootstrap interval over the {some['num_prompts']} prompts "
         f"({some['resamples']} resamples of the prompts with replacement, seed {some['seed']}), "
         "each resample paired with the autoregressive run on the same prompts.", ""]
  for tkey, row in data["results"].items():
    out += [f"### Temperature {tkey}{' (greedy)' if float(tkey) == 0 else ''}", ""]
    table = []
    for name, r in row.items():
      o = r["overall"]
      table.append([name, f"{o['tau']:.2f}{_interval(r, 'tau')}",
                    f"{o['speedup']:.2f}×{_interval(r, 'speedup')}",
                    str(r[INTERVALS]["num_prompts"])])
    out += _table(["drafter", "tau [95%]", "speedup [95%]", "prompts"], table)
    out.append("")
  return "\n".join(out)


def summary_table(data: dict) -> str:
  """One short table: per drafter and temperature, tau, tokens/s and speedup pooled over the
  prompts with their 95% intervals (category means for a report.json made before the
  intervals were), and (greedy) whether every output equals the autoregressive one."""
  temps = list(data["results"])
  pooled = _has_intervals(data)
  ci = lambda r, k: _interval(r, k) if pooled else ""  # noqa: E731
  header = ["drafter"]
  for t in temps:
    header += [f"tau T={t}", f"tokens/s T={t}", f"speedup T={t}"]
  rows = []
  for name in data["results"][temps[0]]:
    cells = [name]
    for t in temps:
      r = data["results"][t][name]
      m = r["overall" if pooled else "mean"]
      cells += [f"{m['tau']:.2f}{ci(r, 'tau')}", f"{m['tokens_per_second']:.1f}",
                f"{m['speedup']:.2f}x{ci(r, 'speedup')}"]
    rows.append(cells)
  lines = _table(header, rows)
  if pooled:
    some = next(iter(data["results"][temps[0]].values()))[INTERVALS]
    lines.append(f"pooled over {some['num_prompts']} prompts; [95%]: bootstrap over the prompts, "
                 "paired with the autoregressive run")
  greedy = [t for t in temps if float(t) == 0]
  for t in greedy:
    for name, r in data["results"][t].items():
      if "identical_to_autoregressive" in r:
        share = r["identical_to_autoregressive"]
        lines.append(f"{name}: {'every' if share == 1 else f'{share:.0%} of the'} greedy "
                     f"output{'' if share == 1 else 's'} identical to autoregressive decoding"
                     + ("" if share == 1 else " (expected all: a bug, please report)"))
  note = shortfall(data)
  return "\n".join([*lines, *([note] if note else [])])


def markdown(data: dict, plots: dict[str, str]) -> str:
  """The whole report.md; `plots` maps a plot's key (e.g. "tau_T0") to its file name."""
  cats = data["categories"]
  n = data["num_prompts"]
  note = shortfall(data)
  lines = [
      f"# Evaluation of drafters for `{data['target']}`", "",
      *([f"**{note}**", ""] if note else []),
      f"- benchmarks: {', '.join(f'`{b}`' for b in data['benchmarks'])}",
      f"- prompts: {sum(n.values())} ({', '.join(f'{c}: {n[c]}' for c in cats)})",
      f"- max_new_tokens {data['max_new_tokens']}, batch size {data['batch_size']}, "
      f"drafting {drafting(data)}, seed {data['seed']}, top_k {data['top_k']}, "
      f"top_p {data['top_p']}",
      "- drafters: " + ", ".join(f"{k} (`{v}`)" if v else k for k, v in data["drafters"].items()),
      *([f"- tree `{data['tree']}` (depth, topk, num_nodes): "
         + ("every drafter drafts" if data["window"] == 0 else
            f"rows \"NAME tree {data['tree']}\" draft")
         + " a dynamic tree (EAGLE-2 expansion and rerank) instead of a chain of K"]
        if data.get("tree") else []),
      "",
      "Cells: tau / speedup. tau = mean tokens per target verification step (accepted + 1); "
      "speedup = tokens/s over the autoregressive tokens/s of the same engine, prompts and run. "
      "Overall = pooled over all prompts, with 95% bootstrap intervals over prompts (report.json: "
      f"`overall`, `{INTERVALS}`); mean = average over categories (no interval).", ""]
  overall = overall_tables(data)
  if overall:
    lines += ["## Overall tau / speedup, 95% intervals", "", overall]
  lines += [
      "## Tau / speedup per category", "", _tables(data),
      "## Tokens per second", ""]
  for tkey, row in data["results"].items():
    lines += [f"### Temperature {tkey}", ""]
    lines += _table(["drafter", *cats, "mean"],
                    [[name, *(f"{r['categories'][c]['tokens_per_second']:.1f}" for c in cats),
                      f"{r['mean']['tokens_per_second']:.1f}"] for name, r in row.items()])
    lines.append("")
  sweep = data.get("window_sweep")
  if sweep:
    ks = data["windows"]
    lines += [f"## Window sweep (temperature {temperature_key(sweep['temperature'])}, "
              "category mean)", ""]
    lines += _table(["drafter", *(f"K={k}" for k in ks)],
                    [[name, *(cell(r[str(k)]["mean"]) for k in ks)]
                     for name, r in sweep["results"].items()])
    lines.append("")
  tsweep = data.get("tree_sweep")
  if tsweep:
    ns, tkey = data["tree_num_nodes"], temperature_key(tsweep["temperature"])
    chain = data["results"][tkey]
    lines += [f"## Tree num_nodes sweep (temperature {tkey}, depth {tsweep['depth']}, topk "
              f"{tsweep['topk']}, category mean)", "",
              "num_nodes = tokens the target verifies per step, the root included.", ""]
    with_chain = data["window"] > 0  # else the drafters' main rows are the tree itself
    lines += _table(["drafter", *([f"chain K={data['window']}"] if with_chain else []),
                     *(f"N={n}" for n in ns)],
                    [[name, *([cell(chain[name]["mean"])] if with_chain else []),
                      *(cell(r[str(n)]["mean"]) for n in ns)]
                     for name, r in tsweep["results"].items()])
    lines.append("")
  if plots:
    lines += ["## Plots", ""] + [f"![{key}]({fname})" for key, fname in plots.items()] + [""]
  return "\n".join(lines)


def _figure(width=8.0, height=4.5):
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig, fig.add_subplot(1, 1, 1)


def _drafter_names(row: dict) -> list[str]:
  return [n for n in row if n != AUTOREGRESSIVE]


def plot_tau(data: dict, tkey: str, path: str):
  """Grouped bars: tau per category (and the mean) for each drafter at one temperature."""
  row = data["results"][tkey]
  names, groups = _drafter_names(row), [*data["categories"], "mean"]
  fig, ax = _figure(max(6.0, 1.2 * len(groups) + 2))
  x, width = np.arange(len(groups)), 0.8 / max(len(names), 1)
  top = 1.0
  for i, name in enumerate(names):
    r = row[name]
    vals = [r["categories"][c]["tau"] for c in data["categories"]] + [r["mean"]["tau"]]
    ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name)
    top = max(top, *vals)
  ax.axhline(1.0, color="gray", ls="--", lw=1, label=AUTOREGRESSIVE)
  ax.set_ylim(0, top * 1.3)  # headroom for the legend
  ax.set_xticks(x, groups, rotation=30, ha="right")
  ax.set_ylabel("tau (tokens per target step)")
  ax.set_title(f"tau per category, temperature {tkey}, {drafting(data)}")
  ax.legend(fontsize="small", ncol=min(len(names) + 1, 4), loc="upper center")
  fig.tight_layout()
  fig.savefig(path)


def plot_accept_lengths(data: dict, tkey: str, path: str):
  """Grouped bars: fraction of steps producing 1..K+1 tokens, per drafter (all categories)."""
  row = data["results"][tkey]
  names = _drafter_names(row)
  hists = {n: {int(k): v for k, v in row[n]["overall"]["accept_length_histogram"].items()}
           for n in names}
  lengths = sorted({k for h in hists.values() for k in h} | {1})
  fig, ax = _figure()
  x, width = np.arange(len(lengths)), 0.8 / max(len(names), 1)
  for i, name in enumerate(names):
    total = max(sum(hists[name].values()), 1)
    ax.bar(x + (i - (len(names) - 1) / 2) * width,
           [hists[name].get(k, 0) / total for k in lengths], width, label=name)
  ax.set_xticks(x, [str(k) for k in lengths])
  ax.set_xlabel("tokens per target step (accepted + 1)")
  ax.set_ylabel("fraction of steps")
  ax.set_title(f"accepted lengths, temperature {tkey}, {drafting(data)}")
  ax.set_ylim(0, 1.15)
  ax.legend(fontsize="small", ncol=min(len(names), 4), loc="upper center")
  fig.tight_layout()
  fig.savefig(path)


def plot_window_sweep(data: dict, path: str):
  """Lines: mean speedup against the draft length K, per drafter."""
  sweep = data["window_sweep"]
  ks = data["windows"]
  fig, ax = _figure(6.5, 4.5)
  for name, r in sweep["results"].items():
    ax.plot(ks, [r[str(k)]["mean"]["speedup"] for k in ks], marker="o", label=name)
  ax.axhline(1.0, color="gray", ls="--", lw=1, label=AUTOREGRESSIVE)
  ax.set_xticks(ks)
  ax.set_xlabel("window length K")
  ax.set_ylabel("speedup (× autoregressive tokens/s)")
  ax.set_title(f"speedup vs K, temperature {temperature_key(sweep['temperature'])}")
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path)


def plot_tree_sweep(data: dict, path: str):
  """Mean tau and speedup against num_nodes per drafter; its chain (K = window) as a dashed line."""
  sweep = data["tree_sweep"]
  ns, tkey = data["tree_num_nodes"], temperature_key(sweep["temperature"])
  fig = Figure(figsize=(11.0, 4.5), dpi=100)
  FigureCanvasAgg(fig)
  for i, key in enumerate(("tau", "speedup")):
    ax = fig.add_subplot(1, 2, i + 1)
    for j, (name, r) in enumerate(sweep["results"].items()):
      color = f"C{j}"
      ax.plot(ns, [r[str(n)]["mean"][key] for n in ns], marker="o", color=color,
              label=f"{name}, tree")
      if data["window"] > 0:
        ax.axhline(data["results"][tkey][name]["mean"][key], color=color, ls="--", lw=1,
                   label=f"{name}, chain K={data['window']}")
    ax.set_xticks(ns)
    ax.set_xlabel("num_nodes (tokens verified per step)")
    ax.set_ylabel("tau (tokens per target step)" if key == "tau" else "speedup (× autoregressive)")
    ax.set_title(f"{key}: tree depth {sweep['depth']}, topk {sweep['topk']}, temperature {tkey}")
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path)


def write_report(data: dict, workdir: str) -> list[str]:
  """Writes report.md and the PNG plots into workdir; returns their file names."""
  plots = {}
  for tkey, row in data["results"].items():
    if _drafter_names(row):
      plots[f"tau_T{tkey}"] = f"tau_per_category_T{tkey}.png"
      plot_tau(data, tkey, os.path.join(workdir, plots[f"tau_T{tkey}"]))
      plots[f"accept_lengths_T{tkey}"] = f"accept_lengths_T{tkey}.png"
      plot_accept_lengths(data, tkey, os.path.join(workdir, plots[f"accept_lengths_T{tkey}"]))
  if data.get("window_sweep"):
    plots["speedup_vs_window"] = "speedup_vs_window.png"
    plot_window_sweep(data, os.path.join(workdir, plots["speedup_vs_window"]))
  if data.get("tree_sweep"):
    plots["tau_vs_num_nodes"] = "tau_vs_num_nodes.png"
    plot_tree_sweep(data, os.path.join(workdir, plots["tau_vs_num_nodes"]))
  with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write(markdown(data, plots))
  return ["report.md", *plots.values()]
