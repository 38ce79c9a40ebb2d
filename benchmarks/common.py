"""What the scripts in benchmarks/ share: the repository importable when a script runs as
`python benchmarks/NAME.py` from the repo root, the standard --target and --out arguments, the
target loaded, markdown tables, and one results writer (OUT/results.json and OUT/results.md, each
recording the device, jax version, commit and machine that made the numbers).

Scripts import it as a sibling module (`import common`): Python puts a script's own folder first
on sys.path, and pytest.ini adds benchmarks/ for the tests that import a script.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # A benchmark never reaches for a hub.

RESULTS_JSON, RESULTS_MD = "results.json", "results.md"


def parser(doc: str, *, target: str | None = "required",
           out: str | None = "required") -> argparse.ArgumentParser:
  """An ArgumentParser whose --help is the script's docstring, with the standard arguments:
  --target, a Hugging Face checkpoint directory, and --out, the results folder; each
  "required", "optional" (default "") or None (the script defines its own or has none)."""
  ap = argparse.ArgumentParser(description=doc,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  if target:
    ap.add_argument("--target", required=target == "required", default="",
                    help="the target: a Hugging Face checkpoint directory")
  if out:
    ap.add_argument("--out", required=out == "required", default="",
                    help=f"folder for {RESULTS_JSON} and {RESULTS_MD}"
                    + ("" if out == "required" else " (none written if empty)"))
  return ap


def load_target(path: str, dtype: str | None = None, tokenizer: bool = True):
  """(model, tokenizer) of the checkpoint at `path` (tokenizer None when not asked for)."""
  from ppow_jax.models import hf_checkpoint
  model = hf_checkpoint.load_model(path, dtype=dtype)
  return model, hf_checkpoint.load_tokenizer(path) if tokenizer else None


def commit() -> str:
  """The checkout's commit (+ "-dirty" if tracked files changed), else $PPOW_JAX_COMMIT."""
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, timeout=10)
    if head.returncode == 0:
      dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                             capture_output=True, text=True, timeout=10).stdout.strip()
      return head.stdout.strip() + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    pass
  return os.environ.get("PPOW_JAX_COMMIT", "unknown")


def environment() -> dict:
  """Where the numbers come from: device, versions, commit, machine, date and command."""
  import jax
  devices = jax.devices()
  return {
      "device": f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform})",
      "jax": jax.__version__, "python": platform.python_version(), "commit": commit(),
      "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join(["python", *sys.argv]),
  }


def markdown_table(header: list[str], rows: list[list]) -> str:
  """A markdown table; cells are written with str()."""
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def write_results(out: str, data: dict, markdown: str, title: str = "") -> list[str]:
  """Writes OUT/results.json (`data` plus `environment`) and OUT/results.md (title, the
  environment, then `markdown`), atomically; prints and returns their paths."""
  from ppow_jax import run_files
  os.makedirs(out, exist_ok=True)
  env = environment()
  paths = [os.path.join(out, RESULTS_JSON), os.path.join(out, RESULTS_MD)]
  run_files.write_json(paths[0], json.loads(json.dumps({**data, "environment": env},
                                                       default=str)))
  head = [f"# {title}", ""] if title else []
  head += [f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in env.items()]
  with run_files.atomic_open(paths[1]) as f:
    f.write("\n".join(head) + "\n\n" + markdown.rstrip() + "\n")
  print(f"-> {', '.join(paths)}")
  return paths
