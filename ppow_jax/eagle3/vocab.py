"""Draft vocabulary selection: the Vd most frequent target tokens, as EAGLE-3's d2t/t2d maps.

Layout as published by EAGLE-3 / SpecForge (`specforge/data/preprocessing.py`,
`process_token_dict_to_mappings`): the chosen target ids sorted ascending are the draft ids
0..Vd-1; `d2t[i] = target_id - i` (an offset, so target_id = i + d2t[i]) and `t2d[v]` marks
target ids that have a draft id.
"""

from __future__ import annotations

import numpy as np


def build_vocab_maps(token_counts, draft_vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(d2t int64 [Vd], t2d bool [V]) for the Vd most frequent tokens, ties broken by lower id."""
  counts = np.asarray(token_counts)
  if counts.ndim != 1 or counts.size == 0:
    raise ValueError(f"token_counts must be a non-empty 1-D array [V], got shape {counts.shape}")
  if counts.dtype.kind not in "iuf" or np.any(counts < 0):
    raise ValueError("token_counts must be non-negative numbers")
  v = counts.size
  if not 1 <= draft_vocab_size <= v:
    raise ValueError(f"draft_vocab_size={draft_vocab_size} must be in [1, V={v}]")
  ids = np.arange(v, dtype=np.int64)
  # lexsort's last key is primary: descending count, then ascending id.
  chosen = np.sort(np.lexsort((ids, -counts.astype(np.float64)))[:draft_vocab_size])
  d2t = chosen.astype(np.int64) - np.arange(draft_vocab_size, dtype=np.int64)
  t2d = np.zeros(v, dtype=bool)
  t2d[chosen] = True
  return d2t, t2d
