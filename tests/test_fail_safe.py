"""Fail safe (issue 28), through the command line: every user error is one line naming the
field, file or value, exit status 2, no traceback, refused before the work it would spoil;
Ctrl-C / SIGTERM end in one line and 130 / 143, and decode and eval keep their finished batches
and resume on a rerun; a failed start leaves an earlier run's config.json alone.

The user errors run the command line in this process (`conftest.main_in_process`: its flag parser
and main, exit status and file descriptors 1 and 2 captured); one of them, and every test about a
signal, runs the real `python -m ppow_jax.main` in a subprocess."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import main_in_process

from ppow_jax import assets, run_files
from ppow_jax.training import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GSM8K = assets.GSM8K
RUN_MAIN = "import runpy; runpy.run_module('ppow_jax.main', run_name='__main__', alter_sys=True)"


def _kill_self_after(calls: int, name: str, signum: str) -> str:
  """A `python -c` prelude: the process sends itself `signum` when runner.decode's `name`
  (a batch callback or the function itself) has been called `calls` times, as Ctrl-C would."""
  return f"""
import os, signal
from ppow_jax.decoding import runner
_decode, _n = runner.decode, [0]
def _count():
  _n[0] += 1
  if _n[0] == {calls}:
    os.kill(os.getpid(), signal.{signum})
def _wrapped(*a, **k):
  if {name!r} == 'decode':
    _count()
    return _decode(*a, **k)
  on_batch = k.pop('on_batch')
  return _decode(*a, on_batch=lambda i, r: (on_batch(i, r), _count()), **k)
runner.decode = _wrapped
"""


def _main(*args, prelude=None, env=None, jax_cache=None):
  """The real command line in a subprocess; `jax_cache`: a persistent compilation cache folder (a
  rerun then loads the programs its interrupted first run compiled instead of compiling them)."""
  cmd = ([sys.executable, "-c", prelude + RUN_MAIN] if prelude
         else [sys.executable, "-m", "ppow_jax.main"])
  env = {k: v for k, v in (env or os.environ).items() if k not in ("XLA_FLAGS", "PPOW_DEBUG")}
  env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
  if jax_cache:
    env.update(JAX_COMPILATION_CACHE_DIR=str(jax_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  # A shell that started the tests in the background (`cmd &`) leaves SIGINT ignored, and the
  # child would inherit that; the interruption tests need Ctrl-C's default meaning.
  return subprocess.run([*cmd, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300,
                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _one_line(res, status: int, *needles) -> str:
  """`status`, one line on stderr holding every needle, no traceback; returns the line."""
  out = res.stdout + res.stderr
  assert res.returncode == status, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  lines = [line for line in res.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, res.stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  return lines[0]


def _decode_args(workdir, target, *overrides):
  return ("--config", "configs/decode.py", "--workdir", workdir, f"--config.target.path={target}",
          f"--config.data.prompts={GSM8K}", *overrides)


def _decode(workdir, target, *overrides, **kw):
  """decode in a subprocess."""
  return _main(*_decode_args(workdir, target, *overrides), **kw)


def _here(capfd, *args, env=None):
  """The command line in this process (conftest.main_in_process)."""
  return main_in_process(capfd, *args, env=env)


def _decode_here(capfd, workdir, target, *overrides):
  return _here(capfd, *_decode_args(workdir, target, *overrides))


def test_numbers_must_be_finite(tmp_path, stories_path, capfd):
  _one_line(_decode_here(capfd, tmp_path / "d", stories_path, "--config.decode.temperature=inf"),
            2, "error: config.decode.temperature=inf: must be a finite number >= 0.0")
  assert not (tmp_path / "d").exists()  # refused before the workdir is even made
  _one_line(_here(capfd, "--config", "configs/sft.py", "--workdir", tmp_path / "s",
                  f"--config.target.path={stories_path}", "--config.optim.learning_rate=-inf"),
            2, "error: config.optim.learning_rate=-inf: must be a finite number > 0.0")
  _one_line(_here(capfd, "--config", "configs/eval.py", "--workdir", tmp_path / "e",
                  f"--config.target.path={stories_path}", "--config.eval.temperatures=0,nan"),
            2, "error: config.eval.temperatures: 'nan' is not a finite number")


def _truncate(path, keep: int):
  with open(path, "r+b") as f:
    f.truncate(keep)


def test_truncated_or_missing_model_files_are_named(tmp_path, stories_path, capfd):
  target = tmp_path / "target"
  shutil.copytree(stories_path, target)
  weights = target / "model.safetensors"
  size = os.path.getsize(weights)
  _truncate(weights, size - 1000)  # a partial download: header intact, data cut short
  _one_line(_decode_here(capfd, tmp_path / "w", target), 2,
            f"error: {weights}: truncated safetensors file: {size - 1000} bytes, its header "
            f"describes {size}")
  import gguf
  path = str(tmp_path / "cut.gguf")
  writer = gguf.GGUFWriter(path, "llama")
  writer.add_tensor("token_embd.weight", np.ones((64, 32), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  full = os.path.getsize(path)
  _truncate(path, full - 512)
  _one_line(_here(capfd, "--config", "configs/convert.py", "--workdir", tmp_path / "c",
                  f"--config.source={path}"), 2,
            f"error: {path}: truncated GGUF file: {full - 512} bytes, its tensors need {full}")
  shutil.copy(os.path.join(stories_path, "model.safetensors"), weights)
  os.remove(target / "tokenizer.json")
  _one_line(_decode_here(capfd, tmp_path / "w", target), 2,
            f"error: {target}: its tokenizer cannot be loaded (tokenizer.json missing")


def test_a_config_file_that_does_not_load_is_one_line(tmp_path, capfd):
  _one_line(_here(capfd, "--config", "configs/decode.py:extra", "--workdir", tmp_path), 2,
            "error: --config=configs/decode.py:extra: the config file does not load: TypeError: "
            "get_config() takes 0 positional arguments but 1 was given")


def test_an_unusable_workdir_is_named(tmp_path, stories_path, capfd):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  _one_line(_decode_here(capfd, a_file, stories_path), 2,
            f"error: --workdir={a_file}: the run directory is a file, not a directory")
  _one_line(_decode_here(capfd, a_file / "run", stories_path), 2,
            f"error: --workdir={a_file / 'run'}: the run directory cannot be made: {a_file} is a "
            "file")
  _one_line(_decode_here(capfd, "/proc/ppow_run", stories_path), 2,
            "error: --workdir=/proc/ppow_run: the run directory cannot be")


def test_a_model_cache_under_a_file_is_named(tmp_path, capfd):
  a_file = tmp_path / "a_file"
  a_file.write_text("x")
  _one_line(_here(capfd, "--config", "configs/fetch.py", "--workdir", tmp_path / "f",
                  f"--config.cache_dir={a_file / 'cache'}"), 2,
            f"error: config.cache_dir={a_file / 'cache'}: the model cache cannot be made: {a_file} "
            "is a file")
  _one_line(_here(capfd, "--config", "configs/fetch.py", "--workdir", tmp_path / "f",
                  env={"PPOW_JAX_CACHE": str(a_file)}), 2,
            f"error: PPOW_JAX_CACHE={a_file}: the model cache is a file, not a directory")


def test_decode_tree_is_checked_before_any_work(tmp_path, stories_path, capfd):
  for tree, needle in (("6,4", "'6,4' is not 'depth,topk,num_nodes'"),
                       ("6,4,1000", "num_nodes=1000 exceeds 1 + topk + (depth-1)*topk^2 = 85")):
    _one_line(_decode_here(capfd, tmp_path / "w", stories_path,
                           f"--config.drafter.path={stories_path}", f"--config.decode.tree={tree}"),
              2,
              f"error: config.decode.tree: {needle}")
  assert not (tmp_path / "w").exists()


def test_drafter_settings_are_checked_before_generating_data(tmp_path, stories_path, capfd):
  _one_line(_here(capfd, "--config", "configs/ppow.py", "--workdir", tmp_path,
                  f"--config.target.path={stories_path}",
                  f"--config.drafter.init_from={stories_path}"), 2,
            f"error: config.drafter.init_from={stories_path}: ", "is not an EAGLE-3 drafter")
  assert not (tmp_path / "data").exists()  # no self-distillation data was generated
  # Aux layers the target lacks (5 layers) are refused before the data too.
  _one_line(_here(capfd, "--config", "configs/sft.py", "--workdir", tmp_path,
                  f"--config.target.path={stories_path}", "--config.drafter.aux_layers=1,2,99"),
            2, "error: config.drafter.aux_layers='1,2,99': expected three layer indices in [1, 5]")
  assert not (tmp_path / "data").exists()


def test_a_cut_off_sharegpt_file_decodes_its_complete_records(tmp_path, stories_path, capfd,
                                                              caplog):
  # A ShareGPT JSON list cut off inside its third record (as PyPI's copy is) was refused whole
  # ("malformed JSON ... at at column ..."); now its complete records are decoded, one warning.
  recs = [{"id": f"c{i}", "conversations": [{"from": "human", "value": f"Once upon a time {i}"},
                                            {"from": "gpt", "value": "there was a cat."}]}
          for i in range(3)]
  text = json.dumps(recs)
  cut = tmp_path / "sharegpt.json"
  cut.write_text(text[:text.index('"c2"') + 20])
  res = _here(capfd, "--config", "configs/decode.py", "--workdir", tmp_path / "w",
              f"--config.target.path={stories_path}", f"--config.data.prompts={cut}",
              "--config.decode.max_new_tokens=4")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "Traceback" not in res.stderr
  # (in this process absl's warnings reach the log capture, not file descriptor 2)
  warnings = [r.getMessage() for r in caplog.records if "ends early" in r.getMessage()]
  assert len(warnings) == 1 and str(cut) in warnings[0], caplog.text[-3000:]
  assert "read its 2 complete records" in warnings[0]
  records = [json.loads(line) for line in (tmp_path / "w" / "decode.jsonl").open()]
  assert len(records) == 2
  # A defect before the end is still an error naming the file, line and column, "at" once.
  bad = tmp_path / "bad.json"
  bad.write_text(text.replace('"c1"', "c1", 1))
  line = _one_line(_here(capfd, "--config", "configs/decode.py", "--workdir", tmp_path / "w2",
                         f"--config.target.path={stories_path}",
                         f"--config.data.prompts={bad}"), 2, str(bad), "malformed JSON")
  assert "at at" not in line and "column" in line


@pytest.mark.e2e
def test_a_failed_start_keeps_the_earlier_config_json(tmp_path, stories_path):
  earlier = {"mode": "decode", "note": "the earlier run's config"}
  (tmp_path / "config.json").write_text(json.dumps(earlier))
  # The context overflow is found by the mode (it needs the target), after the config checks.
  _one_line(_decode(tmp_path, stories_path, "--config.decode.max_new_tokens=100000"), 2,
            "error: the longest prompt", "exceeds the target's max_position_embeddings")
  assert json.loads((tmp_path / "config.json").read_text()) == earlier


@pytest.mark.e2e
def test_sigint_mid_decode_keeps_the_finished_batches_and_a_rerun_resumes(tmp_path, stories_path):
  w = tmp_path / "run"
  args = (w, stories_path, "--config.data.limit=6",
          "--config.decode.max_new_tokens=8", "--config.decode.batch_size=2")
  cache = tmp_path / "jax_cache"
  res = _decode(*args, prelude=_kill_self_after(2, "on_batch", "SIGINT"), jax_cache=cache)
  _one_line(res, 130, "interrupted (SIGINT)", "rerun the same command to resume")
  partial = [json.loads(line) for line in (w / "decode.partial.jsonl").open()]
  assert [e["batch"] for e in partial[1:]] == [0, 1]  # after the settings line
  assert not (w / "decode.jsonl").exists()
  res = _decode(*args, jax_cache=cache)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "resuming: 2 of 3 batches decoded before" in res.stdout
  records = [json.loads(line) for line in (w / "decode.jsonl").open()]
  assert len(records) == 6
  kept = [r for e in partial[1:] for r in e["records"]]
  assert records[:4] == kept  # taken over as they were (their timings too), not decoded again
  assert not (w / "decode.partial.jsonl").exists()


@pytest.mark.e2e
def test_sigterm_mid_eval_keeps_the_finished_batches_and_a_rerun_resumes(tmp_path, stories_path):
  w, cache = tmp_path / "run", tmp_path / "jax_cache"
  args = ("--config", "configs/eval.py", "--workdir", w,
          f"--config.target.path={stories_path}", "--config.drafters=",
          f"--config.data.benchmarks={GSM8K}", "--config.data.limit_per_category=3",
          "--config.eval.temperatures=0", "--config.eval.windows=",
          "--config.eval.max_new_tokens=8", "--config.eval.progress=False")
  # One decode per batch (the baseline alone): the third call starts the third batch.
  res = _main(*args, prelude=_kill_self_after(3, "decode", "SIGTERM"), jax_cache=cache)
  _one_line(res, 143, "interrupted (SIGTERM)")
  partial = [json.loads(line) for line in (w / "eval.partial.jsonl").open()][1:]
  assert [e["start"] for e in partial] == [0, 1]
  res = _main(*args, jax_cache=cache)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "resuming: 2 batches decoded before" in res.stdout
  report = json.loads((w / "report.json").read_text())
  assert sum(report["num_prompts"].values()) == 3
  assert report["results"]["0"]["autoregressive"]["overall"]["num_tokens"] == 3 * 8
  assert not (w / "eval.partial.jsonl").exists()


def test_batch_log_resumes_only_its_own_settings_and_drops_a_cut_off_line(tmp_path):
  path = str(tmp_path / "x.partial.jsonl")
  log = run_files.BatchLog(path, {"seed": 0, "k": (1, 2)})
  assert log.entries == []
  log.append({"batch": 0})
  log.append({"batch": 1})
  with open(path, "a") as f:
    f.write('{"batch": 2, "rec')  # cut off by a crash mid-write
  assert run_files.BatchLog(path, {"seed": 0, "k": (1, 2)}).entries == [{"batch": 0},
                                                                         {"batch": 1}]
  assert open(path).read().count("\n") == 3  # the cut-off line is gone from the file too
  assert run_files.BatchLog(path, {"seed": 1, "k": (1, 2)}).entries == []  # other settings
  assert run_files.BatchLog(path, {"seed": 0, "k": (1, 2)}).entries == []  # started afresh


def test_non_finite_loss_never_claims_a_checkpoint_that_does_not_exist():
  with pytest.raises(metrics.NonFiniteLossError) as e:
    metrics.check_finite(1, float("nan"), None)
  assert "no checkpoint was written before it" in str(e.value)
  assert "step None" not in str(e.value)
  with pytest.raises(metrics.NonFiniteLossError, match=r"checkpoint \(step 4\) is kept"):
    metrics.check_finite(5, float("inf"), 4)
