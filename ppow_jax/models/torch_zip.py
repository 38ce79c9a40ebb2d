"""Reading `torch.save` state dicts (the zip format, torch >= 1.6) into numpy, without torch.

EAGLE's published drafters ship `pytorch_model.bin`. Its `data.pkl` is unpickled by a restricted
unpickler that knows only the names a state dict of tensors uses (`_rebuild_tensor_v2`,
`_rebuild_parameter`, the typed storages, OrderedDict), so loading runs no code from the file;
each storage is the raw little-endian bytes of `<archive>/data/<key>`.
"""

from __future__ import annotations

import collections
import pickle
import zipfile

import ml_dtypes
import numpy as np

from ppow_jax.user_errors import UserError


class TorchZipError(UserError, ValueError):
  """A file that is not a readable torch.save state dict of tensors; the message names it."""


_STORAGES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Storage:
  def __init__(self, dtype):
    self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, *_):
  """A numpy view of `size` elements with element `stride`, starting at `offset`."""
  data = storage  # a 1-D array of the storage's dtype
  if not size:
    return np.array(data[offset])
  itemsize = data.itemsize
  view = np.lib.stride_tricks.as_strided(data[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.ascontiguousarray(view)


def _rebuild_parameter(tensor, *_):
  return tensor


class _Unpickler(pickle.Unpickler):
  def __init__(self, f, archive: zipfile.ZipFile, prefix: str, path: str):
    super().__init__(f)
    self.archive, self.prefix, self.path = archive, prefix, path

  def find_class(self, module, name):
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGES:
      return _Storage(_STORAGES[name])
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    raise TorchZipError(f"{self.path}: holds {module}.{name}, not only tensors; ppow_jax reads "
                        "state dicts of tensors")

  def persistent_load(self, pid):
    kind, storage_type, key, _location, numel = pid
    if kind != "storage" or not isinstance(storage_type, _Storage):
      raise TorchZipError(f"{self.path}: unsupported storage record {pid!r}")
    raw = self.archive.read(f"{self.prefix}data/{key}")
    return np.frombuffer(raw, dtype=storage_type.dtype, count=numel)


def load(path: str) -> dict[str, np.ndarray]:
  """{name: array} of a torch.save'd state dict (tensors only)."""
  try:
    archive = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise TorchZipError(f"{path}: not a torch zip checkpoint ({e}); the legacy pre-1.6 format "
                        "is not read") from None
  with archive:
    pkl = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pkl) != 1:
      raise TorchZipError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}")
    prefix = pkl[0][:-len("data.pkl")]
    order = f"{prefix}byteorder"
    if order in archive.namelist() and archive.read(order).strip() != b"little":
      raise TorchZipError(f"{path}: big-endian tensors are not supported")
    with archive.open(pkl[0]) as f:
      try:
        state = _Unpickler(f, archive, prefix, path).load()
      except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        if isinstance(e, TorchZipError):
          raise
        raise TorchZipError(f"{path}: unreadable state dict ({e})") from None
  if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
    raise TorchZipError(f"{path}: not a state dict of tensors")
  return dict(state)
