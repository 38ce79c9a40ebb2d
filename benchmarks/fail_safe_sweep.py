"""A newcomer's sweep of bad inputs through the real command line (issue 28): how many end clean.

  .venv/bin/python benchmarks/fail_safe_sweep.py --out runs/fail_safe_sweep

Each case runs `python -m ppow_jax.main` in a subprocess on stories260k (ppow_jax/assets) with one
mistake a new user could make: a bad value, a bad or partial file, a bad path, a wrong model.
Clean = exit status 2, exactly one line on stderr starting with `error: `, no traceback. Prints
one row per case (status, clean or not, the line) and the count; --out writes them to
OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import tempfile

import common
from ppow_jax import assets

ROOT = common.REPO

S, G = assets.STORIES260K, assets.GSM8K


def _copy_target(tmp: str, name: str, edit) -> str:
  """A copy of stories260k with `edit(dir)` applied (a broken checkpoint)."""
  path = os.path.join(tmp, name)
  shutil.copytree(S, path)
  edit(path)
  return path


def _write(path: str, data: bytes) -> str:
  with open(path, "wb") as f:
    f.write(data)
  return path


def cases(tmp: str) -> list[tuple[str, list[str], dict]]:
  """(name, command-line arguments, extra environment) of every case."""
  w = os.path.join(tmp, "w")
  dec = ["--config", "configs/decode.py", "--workdir", w, f"--config.target.path={S}",
         f"--config.data.prompts={G}"]
  sft = ["--config", "configs/sft.py", "--workdir", w, f"--config.target.path={S}"]
  ppow = ["--config", "configs/ppow.py", "--workdir", w, f"--config.target.path={S}"]
  ev = ["--config", "configs/eval.py", "--workdir", w, f"--config.target.path={S}",
        f"--config.data.benchmarks={G}"]
  conv = ["--config", "configs/convert.py", "--workdir", w]
  a_file = _write(os.path.join(tmp, "a_file"), b"x")
  empty_dir = os.path.join(tmp, "empty_dir")
  os.makedirs(empty_dir)
  no_weights = _copy_target(tmp, "no_weights",
                            lambda p: os.remove(os.path.join(p, "model.safetensors")))
  bad_cfg = _copy_target(tmp, "bad_cfg", lambda p: _write(os.path.join(p, "config.json"), b"{"))
  no_tok = _copy_target(tmp, "no_tok", lambda p: os.remove(os.path.join(p, "tokenizer.json")))
  empty_w = _copy_target(tmp, "empty_w",
                         lambda p: _write(os.path.join(p, "model.safetensors"), b""))
  junk_w = _copy_target(tmp, "junk_w",
                        lambda p: _write(os.path.join(p, "model.safetensors"), os.urandom(4096)))
  half_w = _copy_target(tmp, "half_w", lambda p: os.truncate(
      os.path.join(p, "model.safetensors"), os.path.getsize(os.path.join(p, "model.safetensors"))
      // 2))
  junk_prompts = _write(os.path.join(tmp, "junk.jsonl"), os.urandom(2048))
  empty_txt = _write(os.path.join(tmp, "empty.txt"), b"")
  not_gz = _write(os.path.join(tmp, "prompts.jsonl.gz"), b'{"prompt": "a"}\n')
  cut_gz = os.path.join(tmp, "cut.jsonl.gz")
  with gzip.open(cut_gz, "wb") as f:
    f.write(b'{"prompt": "Once upon a time"}\n' * 200)
  os.truncate(cut_gz, os.path.getsize(cut_gz) // 2)
  junk_gguf = _write(os.path.join(tmp, "junk.gguf"), b"GGUF" + os.urandom(1024))
  return [
      ("decode.top_p=0", [*dec, "--config.decode.top_p=0"], {}),
      ("decode.top_p=1.5", [*dec, "--config.decode.top_p=1.5"], {}),
      ("decode.top_k=-1", [*dec, "--config.decode.top_k=-1"], {}),
      ("decode.temperature=nan", [*dec, "--config.decode.temperature=nan"], {}),
      ("decode.temperature=-inf", [*dec, "--config.decode.temperature=-inf"], {}),
      ("decode.max_new_tokens=0", [*dec, "--config.decode.max_new_tokens=0"], {}),
      ("decode.batch_size=0", [*dec, "--config.decode.batch_size=0"], {}),
      ("decode.window=2.5", [*dec, "--config.decode.window=2.5"], {}),
      ("decode.temperature without a value", [*dec, "--config.decode.temperature"], {}),
      ("data.limit=-1", [*dec, "--config.data.limit=-1"], {}),
      ("data.max_prompt_len=0", [*dec, "--config.data.max_prompt_len=0"], {}),
      ("target.dtype=float16", [*dec, "--config.target.dtype=float16"], {}),
      ("seed=-1", [*dec, "--config.seed=-1"], {}),
      ("mode=train", [*dec, "--config.mode=train"], {}),
      ("decode.tree=1,1,2 without a drafter", [*dec, "--config.decode.tree=1,1,2"], {}),
      ("decode.tree=a,b,c", [*dec, f"--config.drafter.path={S}", "--config.decode.tree=a,b,c"],
       {}),
      ("target.path is a file", [*dec, f"--config.target.path={a_file}"], {}),
      ("target without model.safetensors", [*dec, f"--config.target.path={no_weights}"], {}),
      ("target config.json not JSON", [*dec, f"--config.target.path={bad_cfg}"], {}),
      ("target without tokenizer.json", [*dec, f"--config.target.path={no_tok}"], {}),
      ("model.safetensors empty", [*dec, f"--config.target.path={empty_w}"], {}),
      ("model.safetensors random bytes", [*dec, f"--config.target.path={junk_w}"], {}),
      ("model.safetensors half", [*dec, f"--config.target.path={half_w}"], {}),
      ("drafter.path is a file", [*dec, f"--config.drafter.path={a_file}"], {}),
      ("drafter.path is an empty directory", [*dec, f"--config.drafter.path={empty_dir}"], {}),
      ("data.prompts is a directory", [*dec, f"--config.data.prompts={empty_dir}"], {}),
      ("data.prompts random bytes", [*dec, f"--config.data.prompts={junk_prompts}"], {}),
      ("data.prompts empty .txt", [*dec, f"--config.data.prompts={empty_txt}"], {}),
      ("data.prompts .gz not gzip", [*dec, f"--config.data.prompts={not_gz}"], {}),
      ("data.prompts .gz cut off", [*dec, f"--config.data.prompts={cut_gz}"], {}),
      ("no workdir at all", ["--config", "configs/decode.py", f"--config.target.path={S}",
                             f"--config.data.prompts={G}"], {}),
      ("sft data.prompts missing", [*sft, f"--config.data.prompts={tmp}/nope.jsonl"], {}),
      ("sft data.num_heldout >= num_samples",
       [*sft, "--config.data.num_samples=8", "--config.data.num_heldout=8"], {}),
      ("sft drafter.aux_layers=1,2", [*sft, "--config.drafter.aux_layers=1,2"], {}),
      ("sft drafter.aux_layers=1,2,99", [*sft, "--config.drafter.aux_layers=1,2,99"], {}),
      ("sft data.dir is a file", [*sft, f"--config.data.dir={a_file}"], {}),
      ("sft optim.b1=1.0", [*sft, "--config.optim.b1=1.0"], {}),
      ("sft train.max_seconds=inf", [*sft, "--config.train.max_seconds=inf"], {}),
      ("ppow drafter.init_from missing", [*ppow, f"--config.drafter.init_from={tmp}/gone"], {}),
      ("ppow ppow.temperature=0", [*ppow, f"--config.drafter.init_from={S}",
                                   "--config.ppow.temperature=0"], {}),
      ("eval drafters a=missing", [*ev, f"--config.drafters=a={tmp}/gone"], {}),
      ("eval drafter named autoregressive", [*ev, f"--config.drafters=autoregressive={S}"], {}),
      ("eval data.categories unknown", [*ev, "--config.data.categories=poetry"], {}),
      ("eval eval.tree=2,2", [*ev, "--config.eval.tree=2,2"], {}),
      ("eval eval.window=0 without a tree", [*ev, "--config.eval.window=0"], {}),
      ("eval eval.windows=0", [*ev, "--config.eval.windows=0"], {}),
      ("convert source=x.txt", [*conv, f"--config.source={a_file}"], {}),
      ("convert source random-bytes .gguf", [*conv, f"--config.source={junk_gguf}"], {}),
      ("convert dtype=float16", [*conv, f"--config.source={junk_gguf}",
                                 "--config.dtype=float16"], {}),
      ("fetch with PPOW_JAX_CACHE a file", ["--config", "configs/fetch.py", "--workdir", w],
       {"PPOW_JAX_CACHE": a_file}),
      ("--config with an argument get_config() does not take", ["--config",
                                                                "configs/decode.py:x"], {}),
      ("unknown flag --foo", [*dec, "--foo=1"], {}),
  ]


def run_case(args: list[str], env: dict, workdir: str) -> dict:
  shutil.rmtree(workdir, ignore_errors=True)
  e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PPOW_DEBUG")}
  e.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", **env)
  res = subprocess.run([sys.executable, "-m", "ppow_jax.main", *args], cwd=ROOT, env=e,
                       capture_output=True, text=True, timeout=600)
  lines = [line for line in res.stderr.splitlines() if line.strip()]
  out = res.stdout + res.stderr
  clean = (res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
           and "Traceback" not in out)
  return {"status": res.returncode, "clean": clean,
          "line": lines[-1] if lines else res.stdout.strip().splitlines()[-1:]}


def main():
  parser = common.parser(__doc__, target=None, out="optional")
  parser.add_argument("--only", default="", help="run only cases whose name contains this")
  a = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, args, env in cases(tmp):
      if a.only and a.only not in name:
        continue
      row = {"case": name, **run_case(args, env, os.path.join(tmp, "w"))}
      rows.append(row)
      print(f"{'clean' if row['clean'] else 'NOT CLEAN':9} {row['status']:>3}  {name}: "
            f"{row['line']}", flush=True)
  print(f"{sum(r['clean'] for r in rows)} of {len(rows)} clean")
  if a.out:
    table = common.markdown_table(
        ["case", "exit status", "clean", "last stderr line"],
        [[r["case"], r["status"], "yes" if r["clean"] else "NO",
          f"`{str(r['line']).replace('|', '/')}`"] for r in rows])
    common.write_results(a.out, {"rows": rows},
                         f"{sum(r['clean'] for r in rows)} of {len(rows)} clean\n\n{table}",
                         title="Bad inputs through the command line")


if __name__ == "__main__":
  main()
