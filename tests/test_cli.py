"""The command line on bad input: one line on stderr naming the file, field or value, exit status
2, no traceback; an internal error keeps its traceback, and --debug / PPOW_DEBUG=1 show one for
every error.

Most checks run the command line in this process (`conftest.main_in_process`: its flag parser and
main, exit status and file descriptors 1 and 2 captured); the real `python -m ppow_jax.main` in a
subprocess proves the interpreter's side: a parse error is one line and status 2, a successful run
prints no torch notice nor cursor control, and an internal error's traceback is printed."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
from conftest import main_in_process

from ppow_jax import assets, config_checks

ROOT = pathlib.Path(__file__).resolve().parents[1]
STORIES = pathlib.Path(assets.STORIES260K)
GSM8K = pathlib.Path(assets.GSM8K)
TORCH_NOTICE = "PyTorch was not found"
# `python -c` preludes run before ppow_jax.main as __main__ (argv passes through unchanged).
RUN_MAIN = "import runpy; runpy.run_module('ppow_jax.main', run_name='__main__', alter_sys=True)"
HIDE_TORCH = ("import importlib.util as u; _find = u.find_spec; "
              "u.find_spec = lambda n, *a, **k: None if n == 'torch' else _find(n, *a, **k); ")

def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PPOW_DEBUG")}
  env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", **extra)
  return env


def _main(*args, prelude=None, env=None, timeout=300):
  cmd = [sys.executable, "-c", prelude + RUN_MAIN] if prelude else [sys.executable, "-m",
                                                                    "ppow_jax.main"]
  return subprocess.run([*cmd, *map(str, args)], cwd=ROOT, env=env or _env(), capture_output=True,
                        text=True, timeout=timeout)


def _here(capfd, *args, env=None):
  """The command line in this process (conftest.main_in_process)."""
  return main_in_process(capfd, *args, env=env)


def _decode_here(capfd, workdir, *overrides, env=None):
  return _here(capfd, "--config", "configs/decode.py", "--workdir", workdir,
               f"--config.target.path={STORIES}", *overrides, env=env)


def _decode(workdir, *overrides, **kw):
  """decode in a subprocess."""
  return _main("--config", "configs/decode.py", "--workdir", workdir,
               f"--config.target.path={STORIES}", *overrides, **kw)


def _user_error(res, *needles):
  """Exit 2, one `error:` line naming what is wrong, nothing else on stderr, no traceback."""
  out = res.stdout + res.stderr
  assert res.returncode == 2, out[-3000:]
  assert "Traceback" not in out, out[-3000:]
  lines = [line for line in res.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  return lines[0]


def test_bad_paths_and_files(tmp_path, capfd):
  w = tmp_path / "w"
  missing = tmp_path / "no_model"
  _user_error(_here(capfd, "--config", "configs/decode.py", "--workdir", w,
                    f"--config.target.path={missing}", f"--config.data.prompts={GSM8K}"),
              f"config.target.path='{missing}': no such directory")
  (tmp_path / "not_a_model").mkdir()
  _user_error(_here(capfd, "--config", "configs/decode.py", "--workdir", w,
                    f"--config.target.path={tmp_path / 'not_a_model'}",
                    f"--config.data.prompts={GSM8K}"), "config.target.path=", "no config.json")
  _user_error(_decode_here(capfd, w, f"--config.data.prompts={tmp_path / 'nope.jsonl'}"),
              f"config.data.prompts='{tmp_path / 'nope.jsonl'}': no such file")
  _user_error(_decode_here(capfd, w, f"--config.data.prompts={GSM8K}",
                           f"--config.drafter.path={missing}"),
              f"config.drafter.path='{missing}': no such directory")
  _user_error(_here(capfd, "--config", tmp_path / "nope.py"),
              f"--config={tmp_path / 'nope.py'}: no such config file")
  empty, bad_json, unknown = (tmp_path / n for n in ("empty.jsonl", "bad.jsonl", "odd.jsonl"))
  empty.write_text("\n\n")
  bad_json.write_text('{"prompt": "a"}\n{"prompt": \n')
  unknown.write_text('{"text": "a"}\n')
  _user_error(_decode_here(capfd, w, f"--config.data.prompts={empty}"), f"{empty}: no prompts")
  _user_error(_decode_here(capfd, w, f"--config.data.prompts={bad_json}"),
              f"{bad_json}:2: malformed JSON")
  _user_error(_decode_here(capfd, w, f"--config.data.prompts={unknown}"),
              f"{unknown}:1: unknown prompt format, keys ['text']")


@pytest.mark.e2e
def test_misspelt_config_keys_suggest_the_field(tmp_path, capfd):
  line = _user_error(_decode_here(capfd, tmp_path, "--config.decode.windw=4"),
                     "--config.decode.windw: config.decode has no field 'windw'",
                     "did you mean 'window'?")
  assert "configs/decode.py" in line
  # configs/sft.py has no decode section at all: the fields it does have are listed.
  _user_error(_here(capfd, "--config", "configs/sft.py", "--workdir", tmp_path,
                    "--config.decode.windw=4"),
              "config has no field 'decode' (configs/sft.py); it has data, distributed, drafter")
  _user_error(_decode_here(capfd, tmp_path, "--wrkdir=x"), "Unknown command line flag 'wrkdir'")
  _user_error(_decode_here(capfd, tmp_path, "--config.decode.window=abc"),
              "--config.decode.window=abc")
  # The real interpreter: a command-line mistake is one line and status 2, nothing else.
  _user_error(_main(), "--config is required")


@pytest.mark.parametrize("config,overrides,message", [
    ("decode", ("--config.decode.window=-1",), "config.decode.window=-1: must be an integer >= 1"),
    ("decode", ("--config.decode.window=-1", f"--config.drafter.path={STORIES}"),
     "config.decode.window=-1: must be an integer >= 1"),
    ("decode", ("--config.decode.temperature=-0.5",),
     "config.decode.temperature=-0.5: must be a number >= 0.0"),
    ("decode", ("--config.data.truncation=right",),
     "config.data.truncation='right': must be one of 'left', 'error'"),
    ("sft", ("--config.optim.learning_rate=0",),
     "config.optim.learning_rate=0.0: must be a number > 0.0"),
    ("ppow", ("--config.ppow.group_size=1", f"--config.drafter.init_from={STORIES}"),
     "config.ppow.group_size=1: must be an integer >= 2"),
    ("ppow", (), "config.drafter.init_from='': is empty"),
    ("ppow", ("--config.ppow.policy_coef=-1", f"--config.drafter.init_from={STORIES}"),
     "config.ppow.policy_coef=-1.0: must be a number >= 0.0"),
    ("ppow", ("--config.ppow.windows_in=prompt", f"--config.drafter.init_from={STORIES}"),
     "config.ppow.windows_in='prompt': must be one of 'response', 'any'"),
    ("sft", ("--config.data.synthesis.openings=(1,)",),
     "config.data.synthesis.openings=(1,): must be a tuple of strings"),
    ("eval", ("--config.eval.temperatures=0,x", f"--config.data.benchmarks={GSM8K}"),
     "config.eval.temperatures: 'x' is not a number"),
    ("default.py:toy", ("--config.sft.train.num_steps=0",),
     "config.sft.train.num_steps=0: must be an integer >= 1"),
    ("default.py:toy", ("--config.target_lm.num_heads=3",),
     "config.target_lm.hidden_size=128 is not a multiple of num_heads=3"),
    ("convert", ("--config.source=/nowhere/model.gguf",),
     "config.source='/nowhere/model.gguf': no such file"),
    ("targets/llama31_8b", ("--config.mode=dryrun", "--config.dryrun.platform=gpu"),
     "config.dryrun.platform='gpu': must be one of 'cpu', ''"),
])
def test_bad_values_name_the_field(tmp_path, capfd, config, overrides, message):
  target = ([f"--config.target.path={STORIES}"]
            if config in ("decode", "sft", "ppow", "eval") else [])
  prompts = [f"--config.data.prompts={GSM8K}"] if config == "decode" else []
  spec = f"configs/{config}" if ".py" in config else f"configs/{config}.py"
  _user_error(_here(capfd, "--config", spec, "--workdir", tmp_path, *target, *prompts,
                    *overrides), message)
  assert not (tmp_path / "config.json").exists()  # refused before any work


def _short_context_copy(tmp_path, positions=256):
  """stories260k with a 256-position context (as the default pipeline's target has)."""
  path = tmp_path / "short"
  shutil.copytree(STORIES, path)
  cfg = json.loads((path / "config.json").read_text())
  cfg["max_position_embeddings"] = positions
  (path / "config.json").write_text(json.dumps(cfg))
  return path


@pytest.mark.e2e
def test_short_prompts_fit_a_short_context_and_overflow_names_the_fields(tmp_path, capfd):
  target = _short_context_copy(tmp_path)
  prompts = tmp_path / "p.jsonl"
  prompts.write_text('{"prompt": "Once upon"}\n')
  common = ["--config", "configs/decode.py", f"--config.target.path={target}",
            f"--config.data.prompts={prompts}", "--config.decode.max_new_tokens=8"]
  # Defaults (data.max_prompt_len=256) with a 3-token prompt; transformers has no torch here.
  ok = _main(*common, "--workdir", tmp_path / "ok", prelude=HIDE_TORCH)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert json.loads((tmp_path / "ok" / "summary.json").read_text())["num_prompts"] == 1
  assert TORCH_NOTICE not in ok.stdout + ok.stderr
  assert "\r" not in ok.stdout + ok.stderr  # not a terminal: no cursor control
  assert ok.stdout.strip().startswith("1 prompts: tau=")
  # The prelude does hide torch: a bare import prints the notice.
  bare = subprocess.run([sys.executable, "-c", HIDE_TORCH + "import transformers"],
                        env=_env(), capture_output=True, text=True, timeout=120)
  assert TORCH_NOTICE in bare.stderr
  _user_error(_here(capfd, *common, "--workdir", tmp_path / "long",
                    "--config.decode.max_new_tokens=300"),
              "config.decode.max_new_tokens (300)", "max_position_embeddings (256)")


def test_incompatible_drafter_names_it(tmp_path, capfd):
  import flax.nnx as nnx
  from ppow_jax.models import hf_checkpoint
  from ppow_jax.models.config import ModelConfig
  from ppow_jax.models.transformer import Transformer
  other = tmp_path / "other"  # an LM with another vocabulary than the target's 512
  cfg = ModelConfig(vocab_size=256, hidden_size=16, intermediate_size=32, num_layers=1,
                    num_heads=2, num_kv_heads=1, head_dim=8)
  hf_checkpoint.save_model(Transformer(cfg, rngs=nnx.Rngs(0)), str(other))
  _user_error(_decode_here(capfd, tmp_path / "w", f"--config.data.prompts={GSM8K}",
                           f"--config.drafter.path={other}"),
              f"drafter {other} has vocab_size 256 but the target has 512")


@pytest.mark.e2e
def test_internal_errors_keep_their_traceback(tmp_path, capfd):
  boom = ("import ppow_jax.modes.decode as m; "
          "m.run = lambda *a: (_ for _ in ()).throw(RuntimeError('boom')); ")
  res = _decode(tmp_path, f"--config.data.prompts={GSM8K}", prelude=boom)
  assert res.returncode not in (0, 2)
  assert "Traceback" in res.stderr and "RuntimeError: boom" in res.stderr
  # --debug and PPOW_DEBUG=1 let a user error propagate as its exception too (which the
  # interpreter then prints with its traceback, as above), instead of the one line.
  bad = (f"--config.data.prompts={GSM8K}", "--config.decode.window=-1")
  for args, env in (((*bad, "--debug"), None), (bad, {"PPOW_DEBUG": "1"})):
    with pytest.raises(config_checks.ConfigValueError, match=r"config\.decode\.window=-1"):
      _decode_here(capfd, tmp_path, *args, env=env)
