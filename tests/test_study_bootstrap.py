"""The PPOW study's paired bootstrap (benchmarks/ppow_vs_sft.py) on hand-made per-prompt counts."""

import argparse
import os

import numpy as np
import pytest

from benchmarks import ppow_vs_sft as study


def _eval(accepted, steps):
  return {"s": {"accepted": list(accepted), "steps": list(steps)}}


def test_identical_arms_differ_by_exactly_zero_and_a_shift_is_resolved():
  r = np.random.RandomState(0)
  steps = r.randint(20, 40, 200)
  acc = steps * 3 + r.randint(-10, 10, 200)
  evals = {"a0": _eval(acc, steps), "a1": _eval(acc, steps),
           "b0": _eval(acc + steps // 10, steps), "b1": _eval(acc + steps // 10 + 1, steps)}
  groups = {study.BASELINE: ["a0", "a1"], "same": ["a1"], "better": ["b0", "b1"]}
  out = study.bootstrap(evals, groups, "s", reps=300)
  assert out["same"]["diff"] == 0 and out["same"]["diff_ci"] == [0.0, 0.0]
  tau_a = acc.sum() / steps.sum()
  assert out[study.BASELINE]["tau"] == pytest.approx(tau_a)
  lo, hi = out["better"]["rel_ci"]
  assert 0 < lo <= out["better"]["rel"] <= hi  # ~+3%: resolved by the paired bootstrap
  assert out["better"]["seeds"] == 2 and out["better"]["seed_std"] > 0


def test_tau_is_total_accepted_over_total_steps_not_a_mean_of_ratios():
  evals = {"x": _eval([10, 2], [2, 2])}
  out = study.bootstrap(evals, {"x": ["x"]}, "s", reps=10)
  assert out["x"]["tau"] == pytest.approx(12 / 4)


def test_any_arm_can_be_the_reference_and_differences_flip_sign():
  r = np.random.RandomState(1)
  steps = r.randint(20, 40, 100)
  acc = steps * 3 + r.randint(-10, 10, 100)
  evals = {"a": _eval(acc, steps), "b": _eval(acc + steps // 10, steps)}
  groups = {study.BASELINE: ["a"], "PPOW": ["b"]}
  vs_base = study.bootstrap(evals, groups, "s", reps=200)
  vs_ppow = study.bootstrap(evals, groups, "s", reps=200, baseline="PPOW")
  assert "diff" not in vs_ppow["PPOW"] and "diff" in vs_ppow[study.BASELINE]
  assert vs_ppow[study.BASELINE]["diff"] == pytest.approx(-vs_base["PPOW"]["diff"])
  assert vs_ppow[study.BASELINE]["diff_ci"][1] < 0  # the baseline is resolved below PPOW
  assert "vs PPOW" in study.table({"s": vs_ppow}, [study.BASELINE, "PPOW"], ["s"], "PPOW")


def _args(variant=(), also_vs="", skip=""):
  return argparse.Namespace(sft_lr=1e-4, sft_args="", ppow_args="", variant=list(variant),
                            skip=skip, also_vs=also_vs)


def test_variants_and_references_are_checked_before_any_training():
  a = _args(["G16=--config.ppow.group_size=16"], also_vs="PPOW, G16")
  arms = study.arms(a)
  assert arms["G16"] == ("configs/ppow.py", ["--config.ppow.group_size=16"])
  assert study.references(a, arms) == ["PPOW", "G16"]
  # A name holding "=" would split there and make a wrong arm silently; refused instead.
  with pytest.raises(SystemExit, match=r"ARGS must be --config.x=y flags.*cannot contain '='"):
    study.arms(_args(["K=10 windows=--config.ppow.window=10"]))
  with pytest.raises(SystemExit, match="exists already"):
    study.arms(_args(["PPOW=--config.ppow.beta=0"]))
  with pytest.raises(SystemExit, match=r"--also_vs 'PPW': no such arm among \[.*'PPOW'"):
    study.references(_args(also_vs="PPW"), arms)


def test_data_study_score_values_are_checked_before_anything_loads(tmp_path):
  """benchmarks/data_study.py --score LABEL:STEPS=DIR: a malformed value or a missing folder is
  refused in one line naming the value, before the target or any drafter is loaded."""
  from benchmarks import data_study
  assert data_study.parse_score(f"command1:720={tmp_path}") == ("command1", 720, str(tmp_path))
  for bad in ("command1=" + str(tmp_path), f"command1:many={tmp_path}", "command1:720=",
              f":720={tmp_path}"):
    with pytest.raises(SystemExit, match="expected LABEL:STEPS=DIR"):
      data_study.parse_score(bad)
  with pytest.raises(SystemExit, match="is not a directory"):
    data_study.parse_score(f"c:1={tmp_path / 'missing'}")


def _study_row(source, steps, conversations, hits, positions):
  return {"source": source, "steps": steps, "conversations": conversations,
          "agreement": sum(hits) / sum(positions), "agreement_hits": hits,
          "agreement_positions": positions, "tau_k1": 1.3, "unique_tokens": 1000 * sum(hits)}


def test_data_study_includes_another_workdir_on_the_same_heldout_set(tmp_path):
  """--include adds another study's rows (a second conversation count) to this table, skips
  rows both have, refuses a study scored on another held-out set, and the report shows the
  conversation count and the paired difference to magpie for the included row."""
  import argparse
  import json
  from benchmarks import data_study
  pos = [10, 20, 30]
  magpie = _study_row("magpie", 480, None, [3, 6, 9], pos)
  mine = [magpie, _study_row("given", 480, 1000, [5, 10, 15], pos)]
  other = tmp_path / "ds300"
  other.mkdir()
  (other / "results.json").write_text(json.dumps({"rows": [
      magpie, _study_row("given", 480, 300, [4, 8, 12], pos),
      _study_row("regenerate", 480, 300, [5, 9, 12], pos)]}))
  args = argparse.Namespace(workdir=str(tmp_path / "main"), include=[str(other)], windows="1")
  got = data_study.included_rows(args, mine)
  assert [data_study.key(r) for r in got] == [("given", 480, 300), ("regenerate", 480, 300)]
  assert got[0]["export"] == str(other / "given_480" / "export")
  os.makedirs(args.workdir)
  data_study.write_report(args, mine + got, (1,))
  table = (tmp_path / "main" / "results.md").read_text()
  assert "| given | 300 | 480 |" in table and "| given | 1000 | 480 |" in table
  row300 = next(r for r in got if r["conversations"] == 300)
  assert abs(row300["vs_magpie"] - (0.4 - 0.3)) < 1e-12  # 24/60 against 18/60
  assert "vs_given" not in row300 and "vs_given" not in mine[1]
  regen = got[1]  # against given on the same 300 conversations, not the 1,000
  assert abs(regen["vs_given"] - (26 - 24) / 60) < 1e-12 and len(regen["vs_given_ci"]) == 2
  assert (tmp_path / "main" / "study.png").stat().st_size > 0
  (other / "results.json").write_text(json.dumps({"rows": [
      _study_row("given", 480, 300, [4, 8], [10, 20])]}))
  with pytest.raises(SystemExit, match="another held-out set"):
    data_study.included_rows(args, mine)


def test_data_study_row_keys():
  from benchmarks import data_study
  given = _study_row("given", 480, 300, [1], [2])
  assert data_study.matches(given, [])
  assert data_study.matches(given, ["magpie:480", "given:480"])
  assert data_study.matches(given, ["given:480:300"])
  assert not data_study.matches(given, ["given:480:1000", "given:120", "magpie:480"])


def test_data_study_refuses_another_conversation_count_in_one_workdir(tmp_path):
  """A workdir that holds given at 480 steps for 1,000 conversations refuses 300 at 480 steps
  (its data and runs would be mixed up) before anything loads, naming the remedy; a missing
  --include workdir is named too. The earlier rows stay as they were."""
  import json
  from benchmarks import data_study
  rows = {"rows": [_study_row("given", 480, 1000, [1], [2])]}
  (tmp_path / "results.json").write_text(json.dumps(rows))
  with pytest.raises(SystemExit, match="another --num_conversations: give this one another"):
    data_study.main(["--workdir", str(tmp_path), "--sources", "given", "--steps", "480",
                     "--num_conversations", "300"])
  with pytest.raises(SystemExit, match="--include .*nowhere: no results.json"):
    data_study.main(["--workdir", str(tmp_path), "--include", str(tmp_path / "nowhere")])
  assert json.loads((tmp_path / "results.json").read_text()) == rows
