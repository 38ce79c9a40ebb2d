"""Draft vocabulary selection, as EAGLE-3's d2t/t2d maps: the Vd tokens with the highest counts,
where the counts are either how often each token occurs in the training responses
("frequency", EAGLE-3's and SpecForge's rule) or how often the target *predicts* it, its greedy
next token at the response positions ("target_argmax"). A draft token can only be accepted if
the target's choice is in the draft vocabulary, so the share of the target's argmaxes a
vocabulary holds (`coverage`) caps acceptance whatever the drafter learns.

Layout as published by EAGLE-3 / SpecForge (`specforge/data/preprocessing.py`,
`process_token_dict_to_mappings`): the chosen target ids sorted ascending are the draft ids
0..Vd-1; `d2t[i] = target_id - i` (an offset, so target_id = i + d2t[i]) and `t2d[v]` marks
target ids that have a draft id.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _top(counts: np.ndarray, k: int) -> np.ndarray:
  """The ids of the k highest counts, ties broken by lower id, sorted ascending."""
  ids = np.arange(counts.size, dtype=np.int64)
  # lexsort's last key is primary: descending count, then ascending id.
  return np.sort(np.lexsort((ids, -counts.astype(np.float64)))[:k])


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
  chosen = _top(counts, draft_vocab_size)
  d2t = chosen.astype(np.int64) - np.arange(draft_vocab_size, dtype=np.int64)
  t2d = np.zeros(v, dtype=bool)
  t2d[chosen] = True
  return d2t, t2d


def by_argmax_then_frequency(argmax_counts, frequency_counts) -> np.ndarray:
  """Counts that rank tokens by the target's argmax counts, ties (e.g. the many tokens a small
  sample never saw predicted) by their frequency in the responses."""
  a, f = np.asarray(argmax_counts, np.int64), np.asarray(frequency_counts, np.int64)
  return a * (int(f.max(initial=0)) + 1) + f


def coverage(choice_counts, argmax_counts, sizes: Sequence[int]) -> dict[int, float]:
  """Per draft-vocabulary size, the share of the target's argmaxes (`argmax_counts` [V], e.g.
  on held-out responses) that the vocabulary chosen from `choice_counts` [V] holds."""
  choice, seen = np.asarray(choice_counts), np.asarray(argmax_counts)
  total = seen.sum()
  if total <= 0:
    raise ValueError("argmax_counts is empty: no response positions to cover")
  return {int(k): float(seen[_top(choice, min(int(k), choice.size))].sum() / total)
          for k in sizes}


def response_positions(records, i: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [<= seq_len], predicts [same]): predicts[t] says token t+1 is a response token
  (under the record's loss mask where it carries one, else after its prompt)."""
  rec = np.asarray(records[i])
  tokens = rec[1:1 + seq_len]
  masks = getattr(records, "loss_mask", None)
  if masks is not None:
    target = np.asarray(masks(i), bool)[:len(tokens)]
  else:
    target = np.arange(len(tokens)) >= int(rec[0])
  return tokens, np.concatenate([target[1:], [False]])


def target_argmax(target_cfg, target_params, records, *, seq_len: int, batch_size: int = 4
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per record, (the target's greedy next tokens, the tokens that follow) at its response
  positions (int32 arrays of one length): what `coverage` and agreement are measured on."""
  import jax  # Deferred: the maps above are plain numpy.
  import jax.numpy as jnp
  from ppow_jax.models import transformer

  @jax.jit
  def greedy(params, tokens, valid):
    return jnp.argmax(transformer.forward(target_cfg, params, tokens, key_valid=valid).logits, -1)

  out = []
  n = len(records)
  for start in range(0, n, batch_size):
    rows = list(range(start, min(start + batch_size, n)))
    got = [response_positions(records, i, seq_len) for i in rows]
    tokens = np.zeros((batch_size, seq_len), np.int32)
    valid = np.zeros((batch_size, seq_len), bool)
    for j, (t, _) in enumerate(got):
      tokens[j, :len(t)], valid[j, :len(t)] = t, True
    am = np.asarray(jax.device_get(greedy(target_params, jnp.asarray(tokens), jnp.asarray(valid))))
    for j, (t, pred) in enumerate(got):
      pos = np.flatnonzero(pred)
      out.append((am[j, pos].astype(np.int32), t[pos + 1].astype(np.int32)))
  return out


def argmax_counts(target_cfg, target_params, records, *, seq_len: int, batch_size: int = 4
                  ) -> np.ndarray:
  """How often the target predicts each token at the response positions of `records` [V]."""
  counts = np.zeros((target_cfg.vocab_size,), np.int64)
  for am, _ in target_argmax(target_cfg, target_params, records, seq_len=seq_len,
                             batch_size=batch_size):
    np.add.at(counts, am, 1)
  return counts
