"""A text corpus that every machine with Python already has: the interpreter's standard library.

The toy pipeline runs offline with nothing downloaded, so its target LM is trained on the
`*.py` source files of the running interpreter's standard library
(`sysconfig.get_paths()["stdlib"]`). The corpus is therefore deterministic for a given Python
build (the same version on another OS or patch release may ship slightly different files).
"""

from __future__ import annotations

import os
import random
import sysconfig

# Directories left out: test suites (repetitive, huge), installed third-party packages, bytecode
# caches, and data-table modules (codec charmaps, the pydoc topic dump) that are not code.
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                       "__pycache__", "encodings", "pydoc_data"})
SKIP_FILE_PREFIXES = ("_sysconfigdata",)  # Build-machine specific.


def stdlib_files(root: str | None = None) -> list[str]:
  """Sorted paths (relative to `root`, default the stdlib) of the corpus' candidate files."""
  root = root or sysconfig.get_paths()["stdlib"]
  if not os.path.isdir(root):
    raise FileNotFoundError(f"standard library directory not found: {root}")
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
    for name in filenames:
      if name.endswith(".py") and not name.startswith(SKIP_FILE_PREFIXES):
        out.append(os.path.relpath(os.path.join(dirpath, name), root))
  return sorted(out)


def stdlib_corpus(max_bytes: int, seed: int, *, root: str | None = None) -> list[str]:
  """Standard-library source files as documents (one file each), at most `max_bytes` in total.

  Files are shuffled by `seed` from their sorted order and taken while they fit under the cap
  (a file that would overflow it is skipped), then returned in path order. Files that are not
  UTF-8 or are empty are skipped.
  """
  if max_bytes <= 0:
    raise ValueError(f"max_bytes must be positive, got {max_bytes}")
  root = root or sysconfig.get_paths()["stdlib"]
  files = stdlib_files(root)
  order = list(range(len(files)))
  random.Random(seed).shuffle(order)
  chosen, total = [], 0
  for i in order:
    path = os.path.join(root, files[i])
    size = os.path.getsize(path)
    if size == 0 or total + size > max_bytes:
      continue
    with open(path, "rb") as f:
      raw = f.read()
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError:
      continue
    chosen.append((files[i], text))
    total += len(raw)
    if max_bytes - total < 64:  # Nothing useful still fits.
      break
  chosen.sort()
  return [text for _, text in chosen]


def split_documents(docs: list[str], holdout_fraction: float,
                    seed: int) -> tuple[list[str], list[str]]:
  """Deterministic (train, heldout) split of whole documents; heldout gets at least one doc.

  Both parts keep the input order.
  """
  if not 0.0 < holdout_fraction < 1.0:
    raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
  if len(docs) < 2:
    raise ValueError(f"need at least 2 documents to split, got {len(docs)}")
  n_held = min(len(docs) - 1, max(1, round(len(docs) * holdout_fraction)))
  order = list(range(len(docs)))
  random.Random(seed).shuffle(order)
  held = set(order[:n_held])
  train = [d for i, d in enumerate(docs) if i not in held]
  heldout = [d for i, d in enumerate(docs) if i in held]
  return train, heldout
