"""Writing run outputs: atomic JSON files and JSON-lines records."""

from __future__ import annotations

import json
import os


def write_json(path: str, obj, indent: int = 2):
  """Writes JSON atomically (temp file + rename): a crash never leaves a truncated file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=indent)
    f.write("\n")
  os.replace(tmp, path)


def write_jsonl(path: str, records):
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  os.replace(tmp, path)
