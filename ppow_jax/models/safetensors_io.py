"""Minimal safetensors reader/writer over numpy (memory-mapped, bfloat16 via ml_dtypes, no torch).

Format: 8-byte little-endian header size, a JSON header {name: {dtype, shape, data_offsets}},
then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from ppow_jax import run_files
from ppow_jax.user_errors import UserError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class SafetensorsError(UserError, ValueError):
  pass


def read_header(path: str) -> tuple[dict, int]:
  """Returns ({name: info}, byte offset of the data section)."""
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise SafetensorsError(f"{path}: truncated safetensors file (no header)")
    (n,) = struct.unpack("<Q", raw)
    if n > os.path.getsize(path):
      raise SafetensorsError(f"{path}: corrupt safetensors header size {n}")
    try:
      header = json.loads(f.read(n))
    except json.JSONDecodeError as e:
      raise SafetensorsError(f"{path}: corrupt safetensors header ({e})") from None
  if not isinstance(header, dict):
    raise SafetensorsError(f"{path}: corrupt safetensors header (not a JSON object)")
  header.pop("__metadata__", None)
  try:
    end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
  except (KeyError, IndexError, TypeError, ValueError):
    raise SafetensorsError(f"{path}: corrupt safetensors header (a tensor without "
                           "data_offsets)") from None
  need, size = 8 + n + end, os.path.getsize(path)
  if size < need:
    raise SafetensorsError(f"{path}: truncated safetensors file: {size} bytes, its header "
                           f"describes {need} (a partial download or copy? fetch it again)")
  return header, 8 + n


def load(path: str, names=None) -> dict[str, np.ndarray]:
  """Loads tensors (all, or the given names) as read-only memory-mapped numpy arrays."""
  header, base = read_header(path)
  mm = np.memmap(path, dtype=np.uint8, mode="r")
  out = {}
  for name in (header if names is None else names):
    info = header[name]
    if info["dtype"] not in _DTYPES:
      raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    lo, hi = info["data_offsets"]
    out[name] = mm[base + lo: base + hi].view(_DTYPES[info["dtype"]]).reshape(info["shape"])
  return out


def save(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None):
  """Writes tensors atomically (`run_files.atomic_open`): a crash never leaves a half file."""
  header, offset, arrays = {}, 0, []
  for name, arr in tensors.items():
    arr = np.ascontiguousarray(np.asarray(arr))
    if arr.dtype not in _NAMES:
      raise SafetensorsError(f"tensor {name!r}: unsupported dtype {arr.dtype} for safetensors")
    header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
    arrays.append(arr)
  if metadata:
    header["__metadata__"] = metadata
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # Keeps the data section 8-byte aligned.
  with run_files.atomic_open(path, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for arr in arrays:
      f.write(arr.tobytes())
