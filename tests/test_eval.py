"""Eval mode: a tiny stories260k run writes the report (tables, JSON, plots) with the right rows,
columns and figures; greedy runs are deterministic; bad benchmarks and drafters fail before
decoding."""

import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

import configs
from ppow_jax import assets
from ppow_jax.decoding import runner
from ppow_jax.decoding.drafter_io import DrafterMismatchError
from ppow_jax.data.prompts import PromptFileError
from ppow_jax.eagle3 import Eagle3Config, Eagle3Drafter, save_eagle3
from ppow_jax.evaluation import parsing, report, statistics, truncated_lm
from ppow_jax.evaluation.parsing import EvalSetupError
from ppow_jax.models import hf_checkpoint
from ppow_jax.models.config import ModelConfig
from ppow_jax.models.transformer import Transformer
from ppow_jax.modes import eval as eval_mode

SPEC_BENCH = pathlib.Path(assets.SPEC_BENCH)
WINDOW = 3


def _config(target, drafters, benchmarks, **eval_kw):
  c = configs.load("eval")
  c.target.path = target
  c.drafters = drafters
  c.data.benchmarks = benchmarks
  c.data.categories = "writing,qa"
  c.data.limit_per_category = 2
  c.data.max_prompt_len = 16  # one length bucket: one compilation per drafter and K
  c.eval.update({**dict(temperatures="0", window=WINDOW, windows="", max_new_tokens=16,
                        progress=False), **eval_kw})
  return c


@pytest.fixture(scope="module")
def drafters(stories_path, tmp_path_factory):
  trunc = truncated_lm(stories_path, str(tmp_path_factory.mktemp("trunc2")), 2)
  return f"self={stories_path},trunc={trunc}"


@pytest.fixture(scope="module")
def run_dir(stories_path, drafters, tmp_path_factory):
  out = tmp_path_factory.mktemp("eval")
  eval_mode.run(_config(stories_path, drafters, str(SPEC_BENCH), windows=f"2,{WINDOW}"), str(out))
  return out


def test_truncated_lm_keeps_vocab_and_first_layers(stories_path, tmp_path):
  full = hf_checkpoint.load_model(stories_path)
  small = hf_checkpoint.load_model(truncated_lm(stories_path, str(tmp_path), 2))
  assert small.cfg == full.cfg.replace(num_layers=2)
  a, b = full.params(), small.params()
  assert (b["layers"]["q_proj"] == a["layers"]["q_proj"][:2]).all()
  assert (b["embed"] == a["embed"]).all()


@pytest.mark.slow
def test_report_files_rows_and_columns(run_dir):
  data = json.loads((run_dir / "report.json").read_text())
  assert data["categories"] == ["writing", "qa"]
  assert data["num_prompts"] == {"writing": 2, "qa": 2}
  assert list(data["results"]) == ["0"]
  assert list(data["results"]["0"]) == ["autoregressive", "self", "trunc"]
  md = (run_dir / "report.md").read_text()
  assert "| drafter | writing | qa | mean |" in md
  for name in ("autoregressive", "self", "trunc"):
    r = data["results"]["0"][name]
    cells = [report.cell(r["categories"][c]) for c in ("writing", "qa")] + [report.cell(r["mean"])]
    assert f"| {name} | " + " | ".join(cells) + " |" in md
  for png in ("tau_per_category_T0.png", "accept_lengths_T0.png", "speedup_vs_window.png"):
    head = (run_dir / png).read_bytes()[:8]
    assert head == b"\x89PNG\r\n\x1a\n", png
    assert f"]({png})" in md


@pytest.mark.slow
def test_figures_are_consistent(run_dir):
  res = json.loads((run_dir / "report.json").read_text())["results"]["0"]
  ar, me = res["autoregressive"], res["self"]
  for c in ("writing", "qa"):
    assert ar["categories"][c]["tau"] == 1.0 and ar["categories"][c]["speedup"] == 1.0
    assert ar["categories"][c]["accept_length_histogram"] == {"1": ar["categories"][c]["num_steps"]}
    for name, r in res.items():
      st = r["categories"][c]
      hist = {int(k): v for k, v in st["accept_length_histogram"].items()}
      assert sum(hist.values()) == st["num_steps"]
      assert sum(k * v for k, v in hist.items()) / st["num_steps"] == pytest.approx(st["tau"])
      assert st["num_tokens"] == 2 * 16  # stories260k writes past 16 tokens without EOS
      assert st["speedup"] == pytest.approx(
          st["tokens_per_second"] / ar["categories"][c]["tokens_per_second"])
  assert me["mean"]["tau"] > 1.5 > ar["mean"]["tau"] == 1.0  # the target drafting for itself
  assert max(int(k) for k in me["overall"]["accept_length_histogram"]) == WINDOW + 1
  assert me["mean"]["speedup"] == pytest.approx(
      (me["categories"]["writing"]["speedup"] + me["categories"]["qa"]["speedup"]) / 2)


@pytest.mark.slow
def test_window_sweep(run_dir):
  data = json.loads((run_dir / "report.json").read_text())
  sweep = data["window_sweep"]
  assert sweep["temperature"] == 0.0 and data["windows"] == [2, WINDOW]
  assert list(sweep["results"]) == ["self", "trunc"]
  assert sweep["results"]["self"][str(WINDOW)]["mean"] == data["results"]["0"]["self"]["mean"]
  hist2 = sweep["results"]["self"]["2"]["overall"]["accept_length_histogram"]
  assert max(int(k) for k in hist2) == 3  # decoded with K=2: at most 3 tokens per step
  assert "| self | " in (run_dir / "report.md").read_text().split("## Window sweep")[1]


@pytest.mark.slow
def test_greedy_eval_is_deterministic(run_dir, stories_path, drafters, tmp_path):
  again = eval_mode.run(_config(stories_path, drafters, str(SPEC_BENCH)), str(tmp_path))
  first = json.loads((run_dir / "report.json").read_text())["results"]["0"]
  for name in ("self", "trunc"):
    for c in ("writing", "qa"):
      a, b = first[name]["categories"][c], again["results"]["0"][name]["categories"][c]
      assert (a["tau"], a["accept_length_histogram"]) == (b["tau"], b["accept_length_histogram"])


# --- 95% bootstrap intervals of the overall figures ------------------------------------------------


def _prompts(tau, tokens_per_second, n=40, seed=1):
  """Synthetic per-prompt figures (`statistics.prompt_figures`) scattered around tau and
  tokens/s; seed=None: every prompt identical."""
  rng = np.random.default_rng(seed)
  jitter = (lambda: rng.uniform(0.7, 1.3, n)) if seed is not None else (lambda: np.ones(n))
  steps = np.round(50 * jitter()).astype(int)
  produced = np.round(steps * tau * jitter()).astype(int)
  seconds = produced / tokens_per_second * jitter()
  return {"tokens": produced.tolist(), "accept_length_sum": produced.tolist(),
          "steps": steps.tolist(), "seconds": seconds.tolist()}


def test_paired_bootstrap_intervals():
  base = _prompts(1.0, 100.0, seed=2)
  base["accept_length_sum"] = base["steps"]  # autoregressive: one token per step
  fast, slow = _prompts(3.0, 250.0, seed=3), _prompts(1.5, 120.0, seed=4)
  a, b = statistics.paired_bootstrap(fast, base), statistics.paired_bootstrap(slow, base)
  for r, d in ((a, fast), (b, slow)):
    assert r["tau"] == sum(d["accept_length_sum"]) / sum(d["steps"])
    assert r["speedup"] == pytest.approx(sum(d["tokens"]) / sum(d["seconds"])
                                         / (sum(base["tokens"]) / sum(base["seconds"])))
    for k in ("tau", "speedup"):
      lo, hi = r[f"{k}_interval"]
      assert lo < r[k] < hi
    assert (r["num_prompts"], r["resamples"], r["seed"]) == (40, 2000, 0)
  assert a["tau_interval"][0] > b["tau_interval"][1]  # widely apart: intervals do not overlap
  assert a["speedup_interval"][0] > b["speedup_interval"][1]
  assert statistics.paired_bootstrap(fast, base) == a  # a fixed seed: deterministic
  # Every prompt the same: nothing to resample, a zero-width interval at the point.
  same = statistics.paired_bootstrap(_prompts(2.0, 150.0, seed=None), base)
  assert same["tau_interval"] == [same["tau"]] * 2 and same["tau"] == 2.0
  # Paired: the drafter and the baseline resample the same prompts, so a drafter equal to its
  # baseline reads speedup 1 in every resample (unpaired draws would scatter around 1).
  assert statistics.paired_bootstrap(fast, fast)["speedup_interval"] == [1.0, 1.0]
  with pytest.raises(AssertionError, match="same prompts"):
    statistics.paired_bootstrap(fast, _prompts(1.0, 100.0, n=39))


@pytest.mark.slow
def test_report_has_overall_intervals(run_dir):
  """Every row of report.json carries the 95% intervals of its overall tau and speedup over all
  4 prompts; recomputed from its per-prompt figures, the points are the "overall" figures."""
  data = json.loads((run_dir / "report.json").read_text())
  row = data["results"]["0"]
  base = row["autoregressive"]
  for name, r in row.items():
    ci = r[statistics.INTERVALS]
    assert (ci["num_prompts"], ci["resamples"], ci["seed"]) == (4, 2000, 0)
    boot = statistics.paired_bootstrap(statistics.pooled_prompts(r["categories"]),
                                       statistics.pooled_prompts(base["categories"]))
    assert boot["tau"] == pytest.approx(r["overall"]["tau"], rel=1e-12)
    assert boot["speedup"] == pytest.approx(r["overall"]["speedup"], rel=1e-12)
    assert [boot["tau_interval"], boot["speedup_interval"]] == [ci["tau"], ci["speedup"]]
    for k in ("tau", "speedup"):
      assert ci[k][0] <= r["overall"][k] * (1 + 1e-12) and r["overall"][k] <= ci[k][1] * (1 + 1e-12)
    for c in ("writing", "qa"):
      pp = r["categories"][c]["per_prompt"]
      assert sum(pp["tokens"]) == r["categories"][c]["num_tokens"]
      assert sum(pp["steps"]) == r["categories"][c]["num_steps"]
      assert sum(pp["seconds"]) == pytest.approx(r["categories"][c]["seconds"])
  assert base[statistics.INTERVALS]["tau"] == base[statistics.INTERVALS]["speedup"] == [1.0, 1.0]
  sweep = data["window_sweep"]["results"]["self"]
  assert sweep[str(WINDOW)][statistics.INTERVALS] == row["self"][statistics.INTERVALS]
  assert statistics.INTERVALS in sweep["2"]
  md = (run_dir / "report.md").read_text()
  overall = md.split("## Overall tau / speedup, 95% intervals")[1].split("## Tau / speedup per")[0]
  assert "bootstrap interval over the 4 prompts" in overall
  assert "| drafter | tau [95%] | speedup [95%] | prompts |" in overall
  ci = row["self"][statistics.INTERVALS]
  assert (f"| self | {row['self']['overall']['tau']:.2f} [{ci['tau'][0]:.2f}, {ci['tau'][1]:.2f}] "
          in overall)
  old = {**data, "results": {"0": {
      n: {k: v for k, v in r.items() if k != statistics.INTERVALS} for n, r in row.items()}}}
  assert report.overall_tables(old) == ""
  # The summary the pipeline prints: pooled figures with their intervals (category means for
  # an older report.json).
  summary = report.summary_table(data)
  assert (f"| self | {row['self']['overall']['tau']:.2f} [{ci['tau'][0]:.2f}, {ci['tau'][1]:.2f}] "
          in summary) and "pooled over 4 prompts" in summary
  assert f"| self | {row['self']['mean']['tau']:.2f} |" in report.summary_table(old)


def test_resumed_eval_keeps_the_logged_per_prompt_figures(stories_path, tmp_path, monkeypatch):
  """An eval interrupted after its first batch resumes from eval.partial.jsonl: that batch's
  per-prompt figures (its timings too) in report.json are the logged ones, and the intervals
  stand on every prompt."""
  calls, real = [], runner.decode

  def dies_in_second_batch(*a, **kw):
    calls.append(1)
    if len(calls) == 3:  # baseline and drafter per batch: the second batch's first decode
      raise KeyboardInterrupt
    return real(*a, **kw)

  cfg = _config(stories_path, f"self={stories_path}", str(SPEC_BENCH))
  monkeypatch.setattr(runner, "decode", dies_in_second_batch)
  with pytest.raises(KeyboardInterrupt):
    eval_mode.run(cfg, str(tmp_path))
  logged = [json.loads(line) for line in (tmp_path / eval_mode.PARTIAL).open()][1:]
  assert [(e["category"], e["start"]) for e in logged] == [("writing", 0)]
  monkeypatch.setattr(runner, "decode", real)
  row = eval_mode.run(cfg, str(tmp_path))["results"]["0"]
  for name, job in zip(("autoregressive", "self"), logged[0]["jobs"]):
    kept = runner.DecodeResult(**logged[0]["results"][job][0])
    pp = row[name]["categories"]["writing"]["per_prompt"]
    assert {k: v[0] for k, v in pp.items()} == {
        k: v[0] for k, v in statistics.prompt_figures([kept]).items()}
    assert row[name][statistics.INTERVALS]["num_prompts"] == 4


# --- Validation before decoding -------------------------------------------------------------------


def _zeros(make):
  """The module `make()` builds, with all-zero weights (no random-init compilations)."""
  module = nnx.eval_shape(make)
  state = nnx.state(module)
  nnx.replace_by_pure_dict(state, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                                               nnx.to_pure_dict(state)))
  nnx.update(module, state)
  return module


@pytest.fixture
def no_decode(monkeypatch):
  def boom(*a, **k):
    raise AssertionError("runner.decode called before validation finished")
  monkeypatch.setattr(runner, "decode", boom)


def test_malformed_benchmark_fails_before_decoding(no_decode, stories_path, tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"prompt": "hi", "category": "writing"}\n{"prompt": "oops",\n')
  with pytest.raises(PromptFileError, match=rf"{bad}:2: malformed JSON"):
    eval_mode.run(_config(stories_path, "", f"{SPEC_BENCH},{bad}"), str(tmp_path))


def test_missing_benchmark_fails_before_decoding(no_decode, stories_path, tmp_path):
  missing = tmp_path / "nope.jsonl"
  with pytest.raises(PromptFileError, match=f"not found: {missing}"):
    eval_mode.run(_config(stories_path, "", f"{SPEC_BENCH},{missing}"), str(tmp_path))


def test_wrong_vocab_drafter_fails_before_decoding(no_decode, stories_path, tmp_path):
  cfg = ModelConfig(vocab_size=256, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8)
  other = str(tmp_path / "other")
  hf_checkpoint.save_model(_zeros(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), other)
  with pytest.raises(DrafterMismatchError, match=rf"drafter 'other': .*{other}.*vocab_size 256"):
    eval_mode.run(_config(stories_path, f"self={stories_path},other={other}", str(SPEC_BENCH)),
                  str(tmp_path))


def test_eagle3_drafter_for_another_target_fails_before_decoding(no_decode, stories_path, tmp_path):
  target = hf_checkpoint.load_model(stories_path).cfg  # 5 layers
  e3 = str(tmp_path / "e3")
  cfg = Eagle3Config.from_target(target, aux_layers=(2, 4, 7))
  save_eagle3(_zeros(lambda: Eagle3Drafter(cfg, rngs=nnx.Rngs(0))), e3)
  with pytest.raises(EvalSetupError, match=r"drafter 'e3'.*aux_layers=\(2, 4, 7\)"):
    eval_mode.run(_config(stories_path, f"e3={e3}", str(SPEC_BENCH)), str(tmp_path))


def test_missing_drafter_and_context_overflow(no_decode, stories_path, tmp_path):
  with pytest.raises(EvalSetupError, match=f"drafter 'gone'.*{tmp_path}/gone"):
    eval_mode.run(_config(stories_path, f"gone={tmp_path}/gone", str(SPEC_BENCH)), str(tmp_path))
  with pytest.raises(EvalSetupError, match="max_position_embeddings"):
    eval_mode.run(_config(stories_path, "", str(SPEC_BENCH), max_new_tokens=600), str(tmp_path))


def test_config_parsing():
  assert parsing.parse_drafters(" a=/x , b=/y/ ,/z/w") == {"a": "/x", "b": "/y/", "w": "/z/w"}
  for bad, msg in [("a=/x,a=/y", "given twice"), ("autoregressive=/x", "reserved"),
                   ("=/x", "not 'name=path'")]:
    with pytest.raises(EvalSetupError, match=msg):
      parsing.parse_drafters(bad)
  assert parsing.parse_numbers("t", "0, 1,0.7,1", float, 0.0) == [0.0, 1.0, 0.7]
  assert parsing.parse_numbers("w", (2, 4), int, 1) == [2, 4]
  with pytest.raises(EvalSetupError, match="w: '0' is below"):
    parsing.parse_numbers("w", "2,0", int, 1)
  with pytest.raises(EvalSetupError, match="t: 'x' is not a number"):
    parsing.parse_numbers("t", "x", float, 0.0)


# --- Draft trees ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_tree_rows_and_num_nodes_sweep(stories_path, tmp_path):
  data = eval_mode.run(_config(stories_path, f"self={stories_path}", str(SPEC_BENCH), windows="",
                               tree="2,2,5", tree_num_nodes="3,5"), str(tmp_path))
  row = data["results"]["0"]
  assert list(row) == ["autoregressive", "self", "self tree 2,2,5"]
  chain, tr = row["self"], row["self tree 2,2,5"]
  assert (chain["tree"], chain["window"], tr["tree"]) == (None, WINDOW, "2,2,5")
  for c in ("writing", "qa"):
    st = tr["categories"][c]
    hist = {int(k): v for k, v in st["accept_length_histogram"].items()}
    assert sorted(hist) == [1, 2, 3] and sum(hist.values()) == st["num_steps"]
    assert st["num_tokens"] == 2 * 16
    assert sum(k * v for k, v in hist.items()) / st["num_steps"] == pytest.approx(st["tau"])
  assert 1.5 < tr["mean"]["tau"] <= 3
  sweep = data["tree_sweep"]
  assert (sweep["depth"], sweep["topk"], data["tree_num_nodes"]) == (2, 2, [3, 5])
  assert sweep["results"]["self"]["5"]["mean"] == tr["mean"]
  assert max(int(k) for k in sweep["results"]["self"]["3"]["overall"]["accept_length_histogram"]) <= 3
  md = (tmp_path / "report.md").read_text()
  assert f"| self tree 2,2,5 | {report.cell(tr['categories']['writing'])} |" in md
  sweep_md = md.split("## Tree num_nodes sweep")[1]
  assert f"| drafter | chain K={WINDOW} | N=3 | N=5 |" in sweep_md
  assert (f"| self | {report.cell(chain['mean'])} | "
          f"{report.cell(sweep['results']['self']['3']['mean'])} | {report.cell(tr['mean'])} |"
          in sweep_md)
  assert (tmp_path / "tau_vs_num_nodes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_window_zero_decodes_every_drafter_as_the_tree_only(stories_path, tmp_path, monkeypatch):
  """eval.window = 0: the drafters' rows are the tree itself (no chain decode), named as the
  drafters, with the same figures a tree row of the two-way evaluation has; greedy lossless."""
  trees = []
  real = runner.decode

  def recording(cfg, params, ids, settings, *, drafter=None, **kw):
    trees.append(None if drafter is None else str(settings.tree))
    return real(cfg, params, ids, settings, drafter=drafter, **kw)

  monkeypatch.setattr(runner, "decode", recording)
  data = eval_mode.run(_config(stories_path, f"self={stories_path}", str(SPEC_BENCH), window=0,
                               windows="", tree="2,2,5", tree_num_nodes="3,5"), str(tmp_path))
  assert trees == [None, "2,2,5", "2,2,3"] * 4  # per prompt: baseline, the tree, the sweep
  row = data["results"]["0"]
  assert list(row) == ["autoregressive", "self"]
  assert (row["self"]["window"], row["self"]["tree"]) == (0, "2,2,5")
  assert row["self"]["identical_to_autoregressive"] == 1 and 1.5 < row["self"]["mean"]["tau"] <= 3
  assert data["tree_sweep"]["results"]["self"]["5"]["mean"] == row["self"]["mean"]
  md = (tmp_path / "report.md").read_text()
  assert "drafting tree 2,2,5" in md and "every drafter drafts a dynamic tree" in md
  assert "| drafter | N=3 | N=5 |" in md.split("## Tree num_nodes sweep")[1]
  with pytest.raises(EvalSetupError, match=r"config.eval.window=0 .* needs config.eval.tree"):
    eval_mode.run(_config(stories_path, f"self={stories_path}", str(SPEC_BENCH), window=0),
                  str(tmp_path))


@pytest.mark.parametrize("kw,msg", [
    (dict(tree="4,4,70"), r"config.eval.tree: num_nodes=70 exceeds 1 \+ topk \+ "
                          r"\(depth-1\)\*topk\^2 = 53"),
    (dict(tree="2,2,5", tree_num_nodes="4,9"), r"config.eval.tree_num_nodes: num_nodes=9 exceeds"),
    (dict(tree_num_nodes="4"), r"config.eval.tree_num_nodes='4' needs config.eval.tree"),
    (dict(tree="2,2"), r"config.eval.tree: '2,2' is not 'depth,topk,num_nodes'"),
])
def test_bad_tree_settings_fail_before_decoding(no_decode, stories_path, tmp_path, kw, msg):
  with pytest.raises(EvalSetupError, match=msg):
    eval_mode.run(_config(stories_path, f"self={stories_path}", str(SPEC_BENCH), **kw),
                  str(tmp_path))


def test_baseline_and_drafters_decode_each_category_back_to_back(stories_path, drafters,
                                                                  tmp_path, monkeypatch):
  """Interleaved: every job (baseline, drafters, the K sweep) decodes a batch before any job
  starts the next, so the speedup of a drafter never compares two different moments."""
  calls = []
  real = runner.decode

  def recording(cfg, params, ids, settings, *, drafter=None, desc="", **kw):
    calls.append((desc, None if drafter is None else settings.window))
    return real(cfg, params, ids, settings, drafter=drafter, desc=desc, **kw)

  monkeypatch.setattr(runner, "decode", recording)
  data = eval_mode.run(_config(stories_path, drafters, str(SPEC_BENCH), windows=f"2,{WINDOW}"),
                       str(tmp_path))
  cats = [c for c, _ in calls]
  # 1 baseline + 2 drafters at K + 2 drafters at the swept K=2: 5 decodes per batch (one prompt
  # each, 2 per category), in a block.
  assert cats == ["writing"] * 10 + ["qa"] * 10
  assert [k for _, k in calls] == [None, WINDOW, WINDOW, 2, 2] * 4
  assert data["window_sweep"]["results"]["self"]["2"]["mean"]["tau"] > 1
  assert data["results"]["0"]["self"]["identical_to_autoregressive"] == 1


# --- Prompts: the shipped defaults, and tables on fewer prompts than asked ------------------------


def test_readme_command_1_evaluates_the_shipped_spec_bench():
  """README command 1's table stands on Spec-Bench as shipped: one prompt of each of its 13
  categories, whatever folders lie beside the clone; training avoids all three evaluation sets."""
  c = configs.load("default")
  assert c.eval.data.benchmarks == assets.SPEC_BENCH
  assert c.sft.data.exclude.split(",") == list(assets.BENCHMARKS)
  assert all(pathlib.Path(p).is_file() for p in assets.BENCHMARKS)
  prompts = parsing.load_benchmarks([c.eval.data.benchmarks], [],
                                      c.eval.data.limit_per_category)
  assert len(prompts) == 13 and len({p.category for p in prompts}) == 13


def test_fewer_prompts_than_asked_are_flagged(stories_path, tmp_path, capsys):
  """A category with fewer prompts than limit_per_category: the table is still made, with a
  warning on stdout, at the top of report.md and under the pipeline's summary table."""
  bench = tmp_path / "bench.jsonl"
  bench.write_text("".join(json.dumps({"prompt": f"Once upon a time {i}", "category": c}) + "\n"
                           for i, c in enumerate(["big", "big", "big", "small"])))
  c = _config(stories_path, "", str(bench), max_new_tokens=4)
  c.data.categories, c.data.limit_per_category = "", 3
  data = eval_mode.run(c, str(tmp_path))
  warning = ("WARNING: built from 4 prompts, fewer than the config asked for (3 per category): "
             "small has 1")
  assert data["num_prompts"] == {"big": 3, "small": 1}
  assert warning in capsys.readouterr().out
  assert (tmp_path / "report.md").read_text().splitlines()[2] == f"**{warning}**"
  assert report.summary_table(data).splitlines()[-1] == warning
  # Every category gives what is asked (or nothing was asked): no warning anywhere.
  for limit in (1, 0):
    full = dict(data, limit_per_category=limit)
    assert report.shortfall(full) == "" and "WARNING" not in report.markdown_tables(full)
    assert "WARNING" not in report.summary_table(full) + report.markdown(full, {})
