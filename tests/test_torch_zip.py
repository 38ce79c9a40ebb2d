"""torch.save'd state dicts read without torch: every dtype, strided views, and refusal of
anything but tensors."""

import pickle

import ml_dtypes
import numpy as np
import pytest

from ppow_jax.models import torch_zip

torch = pytest.importorskip("torch")


def test_state_dict_reads_exactly(tmp_path):
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  state = {
      "f32": base, "f16": base.half(), "bf16": base.bfloat16(), "i64": torch.arange(5),
      "bool": torch.tensor([True, False, True]), "i8": torch.tensor([-3, 4], dtype=torch.int8),
      "transposed": base.t(), "slice": base[1:3, 2:5], "scalar": torch.tensor(2.5),
      "param": torch.nn.Parameter(base[0].clone()),
  }
  path = tmp_path / "pytorch_model.bin"
  torch.save(state, path)
  got = torch_zip.load(str(path))
  assert set(got) == set(state)
  for name, t in state.items():
    want = (t.detach().float().numpy().astype(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16
            else t.detach().numpy())
    assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
    np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_refuses_anything_but_tensors(tmp_path):
  code = tmp_path / "code.bin"
  torch.save({"w": torch.ones(2), "f": print}, code)  # a pickled global: never resolved
  with pytest.raises(torch_zip.TorchZipError,
                     match=r"code\.bin: holds (__builtin__|builtins)\.print"):
    torch_zip.load(str(code))
  legacy = tmp_path / "legacy.bin"
  legacy.write_bytes(pickle.dumps({"w": 1}))
  with pytest.raises(torch_zip.TorchZipError, match="not a torch zip checkpoint"):
    torch_zip.load(str(legacy))
