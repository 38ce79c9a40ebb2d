"""The pipeline's stage plumbing that needs no training: configs/default.py and its variants,
the CPU-time budget of the token-level control, held-out prompts for a user's target."""

import json
import os

import pytest

import configs
from ppow_jax import config_checks, run_files
from ppow_jax.modes import pipeline
from ppow_jax.user_errors import ConfigValueError


def _config(name, *args):
  return configs.load(name, *args)


def test_default_is_the_smollm2_quick_recipe_and_toy_a_variant():
  c = _config("default")
  assert c.target.source == "smollm2-135m-instruct" and c.workdir == "runs/default"
  # Trained on ShareGPT's conversations as given (issue 25's data study), nothing synthesized.
  assert (c.sft.data.conversations, c.sft.data.answers, c.sft.data.synthesize) == (
      "sharegpt", "given", 0) and c.ppow.data.conversations == "sharegpt"
  assert not c.control.enabled and tuple(c.ppow_seeds) == ()
  config_checks.check(c)
  toy = _config("default", "toy")
  assert toy.target.source == "toy" and toy.workdir == "runs/toy" and "target_lm" in toy
  config_checks.check(toy)
  full = _config("targets/smollm2_135m")
  assert full.control.enabled and tuple(full.ppow_seeds) == (0, 1)
  config_checks.check(full)
  with pytest.raises(ValueError, match="unknown variant"):
    _config("default", "tiny")


def test_bad_control_settings_name_the_field():
  c = _config("targets/smollm2_135m")
  c.control.learning_rate = 0.0
  with pytest.raises(ConfigValueError, match=r"config\.control\.learning_rate=0\.0"):
    config_checks.check(c)
  c = _config("targets/smollm2_135m")
  c.ppow_seeds = (0, "one")
  with pytest.raises(ConfigValueError, match=r"config\.ppow_seeds"):
    config_checks.check(c)



def test_bad_data_seed_names_the_field():
  c = _config("targets/smollm2_135m", "quick")
  assert c.sft.data.seed == c.ppow.data.seed == -1  # -1: the run's seed
  c.sft.data.seed = -2
  with pytest.raises(ConfigValueError, match=r"config\.sft\.data\.seed=-2"):
    config_checks.check(c)
  c.sft.data.seed = 3
  config_checks.check(c)

def test_loss_on_prompt_is_token_level_only():
  """Token-level training may learn prompt tokens too, PPOW never: a PPOW stage asked to is
  refused, naming the field, rather than silently ignoring it."""
  c = _config("targets/smollm2_135m", "quick")
  assert not c.ppow.data.loss_on_prompt
  c.sft.data.loss_on_prompt = True
  config_checks.check(c)
  c.ppow.data.loss_on_prompt = True
  with pytest.raises(ConfigValueError, match=r"config\.ppow\.data\.loss_on_prompt=True"):
    config_checks.check(c)


def test_control_budget_is_ppow_training_cpu_time(tmp_path):
  # Logged every 2nd step: the mean logged step cost times the steps trained.
  run_files.write_jsonl(str(tmp_path / "metrics.jsonl"), [
      {"step": 2, "loss": 1.0, "step_cpu_time": 3.0},
      {"step": 4, "step_cpu_time": 5.0},
      {"step": 4, "eval_tau": 2.0}])
  assert pipeline._training_cpu_seconds(str(tmp_path)) == pytest.approx(16.0)
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
  with pytest.raises(RuntimeError, match="no step_cpu_time"):
    pipeline._training_cpu_seconds(str(tmp_path))


def test_drafting_is_chosen_on_heldout_prompts_by_measured_speedup(tmp_path, monkeypatch,
                                                                   capsys):
  """The chain K or tree where the better drafter is fastest on held-out prompts (ties: the
  cheaper step), decoded greedily from the held-out file, never the evaluation's benchmarks;
  cached per candidate set; a note when nothing beats autoregressive decoding."""
  from ppow_jax.decoding import tree as draft_tree
  from ppow_jax.modes import eval as eval_mode
  c = _config("default")
  eval_cfg = c.eval.copy_and_resolve_references()
  eval_cfg.data.benchmarks = "/evaluation/prompts.jsonl"
  eval_cfg.eval.temperatures = "0,1"
  calls = []
  speed = {"a": {1: 1.05, 2: 1.10, 3: 0.96}, "b": {1: 1.02, 2: 1.094, 3: 1.12}}
  tree_speed = {"a": {3: 1.00, 4: 1.15}, "b": {3: 1.08, 4: 1.11}}

  def fake_run(cfg, workdir):  # eval mode's report.json, reduced to what the choice reads
    calls.append(cfg)
    ks = [int(k) for k in cfg.eval.windows.split(",") if k]
    ns = [int(n) for n in cfg.eval.tree_num_nodes.split(",") if n]
    data = {"windows": ks, "tree": cfg.eval.tree or None, "tree_num_nodes": ns,
            "window_sweep": {"results": {
                name: {str(k): {"mean": {"speedup": s[k]}} for k in ks}
                for name, s in speed.items()}} if ks else None,
            "tree_sweep": {"results": {
                name: {str(n): {"mean": {"speedup": s[n]}} for n in ns}
                for name, s in tree_speed.items()}} if ns else None}
    run_files.write_json(os.path.join(workdir, "report.json"), data)
    return data

  def fake_heldout(sft_cfg, target_path, path):
    run_files.write_jsonl(path, [{"prompt": "held out", "category": "heldout"}])

  monkeypatch.setattr(eval_mode, "run", fake_run)
  monkeypatch.setattr(pipeline, "_heldout_prompt_file", fake_heldout)
  timings = {}

  def choose(chains, tree=None, nodes=()):
    return pipeline._choose_drafting(c.window_choice, chains, tree, list(nodes), eval_cfg, c.sft,
                                     "/target", str(tmp_path), str(tmp_path / "w"), timings)

  assert choose([1, 2, 3]) == pipeline.Drafting(3)  # drafter b at K=3 (1.12) beats every cell
  (cfg,) = calls
  assert cfg.data.benchmarks == str(tmp_path / "heldout_prompts.jsonl")
  assert cfg.eval.temperatures == "0" and cfg.eval.windows == "1,2,3" and cfg.eval.tree == ""
  assert cfg.eval.max_new_tokens == c.window_choice.max_new_tokens
  assert cfg.data.limit_per_category == c.window_choice.num_prompts and "window" in timings
  # Cached: the same candidates do not decode again.
  assert choose([1, 2, 3]) == pipeline.Drafting(3) and len(calls) == 1
  # Speedups equal to two decimals: the shorter window.
  speed["b"][3] = 1.095
  assert choose([2, 3]) == pipeline.Drafting(2) and len(calls) == 2
  # A tree beside the chains: one decode with the tree and its num_nodes sweep; tree 1,4,4 of
  # drafter a (1.15) beats every chain.
  tree = draft_tree.TreeSpec(1, 4, 4)
  assert choose([1, 2], tree, [3, 4]) == pipeline.Drafting(0, "1,4,4") and len(calls) == 3
  assert calls[-1].eval.tree == "1,4,4" and calls[-1].eval.tree_num_nodes == "3,4"
  # Equal to two decimals: the step verifying fewer tokens (K=2 verifies 3, the tree 4) wins.
  tree_speed["a"][4], tree_speed["b"][4] = 1.104, 1.0
  os.remove(tmp_path / "w" / "report.json")  # else the cached measurement stands
  assert choose([1, 2], tree, [3, 4]) == pipeline.Drafting(2)
  # Only a tree: the evaluation of the choice decodes the tree alone (window 0).
  assert choose([], tree, [3, 4]) == pipeline.Drafting(0, "1,4,4")
  assert calls[-1].eval.window == 0 and calls[-1].eval.windows == ""
  assert "no drafting beat autoregressive" not in capsys.readouterr().out
  # Every candidate slower than autoregressive decoding: the fastest is still chosen, and said.
  speed.update(a={1: 0.97, 2: 0.90}, b={1: 0.95, 2: 0.88})
  assert choose([1, 2]) == pipeline.Drafting(1)
  out = capsys.readouterr().out
  assert "no drafting beat autoregressive decoding" in out and "(best K=1 0.97x)" in out


def test_drafting_candidates_of_the_recipe():
  c = _config("default")
  chains, tree, nodes = pipeline._drafting_candidates(c.window_choice)
  assert chains == [1] and str(tree) == "1,4,4" and nodes == [3, 4]
  c.window_choice.tree = ""
  c.window_choice.tree_num_nodes = ""
  assert pipeline._drafting_candidates(c.window_choice) == ([1], None, [])



def test_drafting_line_says_what_was_verified():
  """The line above the printed table: a tree's verified tokens (newest + drafted), or K."""
  tree = pipeline._drafting_line({"window": 0, "tree": "1,4,3"})
  assert tree.startswith("draft tree 1,4,3 per step (depth 1, topk 4): 3 tokens verified")
  assert tree.endswith("the newest and 2 drafted")
  assert pipeline._drafting_line({"window": 2, "tree": "1,4,3"}) == "K = 2 draft tokens per step"
  assert pipeline._drafting_line({"window": 1}) == "K = 1 draft tokens per step"

def test_bad_window_choice_names_the_field():
  c = _config("default")
  c.window_choice.candidates = "1,x"
  with pytest.raises(ValueError, match=r"config\.window_choice\.candidates"):
    config_checks.check(c)
  c = _config("default")
  c.window_choice.num_prompts = 0
  with pytest.raises(ConfigValueError, match=r"config\.window_choice\.num_prompts=0"):
    config_checks.check(c)
  c = _config("default")
  c.window_choice.tree = "1,4,9"  # a depth-1 tree of top 4 has 5 candidate nodes
  with pytest.raises(ValueError, match=r"config\.window_choice\.tree"):
    config_checks.check(c)
  c = _config("default")
  c.window_choice.tree = ""
  with pytest.raises(ValueError, match=r"config\.window_choice\.tree_num_nodes.*needs"):
    config_checks.check(c)
  c = _config("default")
  c.eval.eval.window = 0  # tree-only drafting without a tree
  with pytest.raises(ConfigValueError, match=r"config\.eval\.eval\.window=0: .*eval\.tree is empty"):
    config_checks.check(c)
