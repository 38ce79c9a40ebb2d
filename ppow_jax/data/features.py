"""The frozen target's features for drafter training, computed once and cached (SpecForge's
"offline" mode) instead of re-running the target in every training step.

Per training sequence (padded to `seq_len`) the cache holds, in bfloat16, the three aux
residual streams the EAGLE-3 drafter fuses and the target's final-normed hidden state: the
target's distribution over the draft vocabulary is then one [H, Vd] product in the step
(`last_hidden @ lm_head[:, draft ids]`), ~7% of a target forward for SmolLM2. Stored as one
`.npy` file [N, seq_len, 4H] (memory-mapped when read), written in blocks and renamed into place
when complete; an interrupted run resumes at its last finished block.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from ppow_jax.models import transformer
from ppow_jax.progress import Progress

DTYPE = ml_dtypes.bfloat16


def cache_path(data_dir: str, split: str, aux_layers, seq_len: int) -> str:
  tag = "_".join(str(i) for i in aux_layers)
  return os.path.join(data_dir, "features", f"{split}-aux{tag}-len{seq_len}.npy")


def _padded(records, rows, seq_len: int):
  tokens = np.zeros((len(rows), seq_len), np.int32)
  valid = np.zeros((len(rows), seq_len), bool)
  for j, i in enumerate(rows):
    seq = np.asarray(records[i][1:1 + seq_len])
    tokens[j, :len(seq)], valid[j, :len(seq)] = seq, True
  return tokens, valid


def build(target_cfg, target_params, records, path: str, *, aux_layers, seq_len: int,
          batch_size: int = 8, progress: bool = True) -> str:
  """Writes the feature cache of `records` to `path` (skipped if it exists); returns the path."""
  if os.path.exists(path):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  n, h = len(records), target_cfg.hidden_size
  partial = f"{path}.partial"
  done_file = f"{partial}.done.json"
  done = 0
  if os.path.exists(partial) and os.path.exists(done_file):
    with open(done_file) as f:
      done = json.load(f)["rows"]
    out = _as_bf16(np.lib.format.open_memmap(partial, mode="r+"))
  else:
    out = _as_bf16(np.lib.format.open_memmap(partial, mode="w+", dtype=DTYPE,
                                             shape=(n, seq_len, 4 * h)))

  @jax.jit
  def feats(params, tokens, valid):
    o = transformer.forward(target_cfg, params, tokens, key_valid=valid, hidden_layers=aux_layers,
                            return_logits=False)
    return jnp.concatenate([*o.hidden, o.last_hidden], axis=-1).astype(jnp.bfloat16)

  bar = Progress(total=n, initial=done, desc="target features", unit="sequence",
                 enabled=progress)
  for start in range(done, n, batch_size):
    rows = list(range(start, min(start + batch_size, n)))
    tokens, valid = _padded(records, rows + [rows[-1]] * (batch_size - len(rows)), seq_len)
    out[start:start + len(rows)] = np.asarray(jax.device_get(feats(target_params, tokens, valid))
                                              )[:len(rows)]
    if (start // batch_size) % 16 == 15 or rows[-1] == n - 1:
      out.flush()
      with open(done_file, "w") as f:
        json.dump({"rows": rows[-1] + 1}, f)
    bar.update(len(rows))
  bar.close()
  out.flush()
  del out
  os.replace(partial, path)
  os.remove(done_file)
  return path


def _as_bf16(a: np.ndarray) -> np.ndarray:
  """.npy stores bfloat16 as 2-byte voids; view them as bfloat16 again."""
  return a if a.dtype == DTYPE else a.view(DTYPE)


def load(path: str) -> np.ndarray:
  """The cache as a read-only memory map [N, seq_len, 4H] (bfloat16)."""
  return _as_bf16(np.load(path, mmap_mode="r"))
