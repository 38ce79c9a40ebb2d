"""Writing run outputs: the one atomic writer (every JSON, JSON-lines and safetensors file goes
through it), the resumable log of finished batches, and the run's config."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
  """A file to write, opened under a temporary name and renamed onto `path` once closed: a crash
  never leaves a truncated file, and a reader sees the old file or the whole new one."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, mode) as f:
    yield f
  os.replace(tmp, path)


def write_json(path: str, obj, indent: int = 2):
  """Writes JSON atomically (`atomic_open`)."""
  with atomic_open(path) as f:
    json.dump(obj, f, indent=indent)
    f.write("\n")


def write_jsonl(path: str, records):
  """Writes one JSON record per line, atomically (`atomic_open`)."""
  with atomic_open(path) as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def record_config(workdir: str, config):
  """Writes the run's resolved config to workdir/config.json (unless it already holds it).

  Modes call this once their checks have passed, before their expensive work, so a run that
  fails to start leaves an earlier run's config.json as it was."""
  os.makedirs(workdir, exist_ok=True)  # a mode called directly (tests) may not have made it
  path = os.path.join(workdir, "config.json")
  resolved = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    try:
      with open(path) as f:
        if json.load(f) == resolved:
          return
    except (OSError, ValueError):
      pass  # unreadable: replaced below
  write_json(path, resolved)


def fingerprint(obj) -> str:
  """A short hash of a JSON-able object (e.g. every prompt's token ids), for `BatchLog` settings."""
  return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class BatchLog:
  """A JSON-lines file of finished batches, written as each one finishes, so an interrupted run
  keeps them and a rerun resumes after them.

  Its first line holds the settings of the run that wrote it (`{"settings": ...}`); a run with
  other settings starts the file afresh, so results of different settings never mix. A line cut
  off by a crash is dropped. `entries` holds the entries kept from the earlier run.
  """

  def __init__(self, path: str, settings: dict):
    self.path = path
    settings = json.loads(json.dumps(settings))  # as read back (tuples become lists)
    self.entries = []
    if os.path.exists(path):
      with open(path) as f:
        lines = f.read().split("\n")
      try:
        head = json.loads(lines[0])
      except ValueError:
        head = None
      if isinstance(head, dict) and head.get("settings") == settings:
        for line in lines[1:]:
          try:
            self.entries.append(json.loads(line))
          except ValueError:
            break  # the line a crash cut off, and nothing after it
    write_jsonl(path, [{"settings": settings}, *self.entries])

  def append(self, entry: dict):
    with open(self.path, "a") as f:
      f.write(json.dumps(entry) + "\n")
      f.flush()

  def remove(self):
    """Deletes the file: the run's finished outputs hold everything it had."""
    if os.path.exists(self.path):
      os.remove(self.path)
