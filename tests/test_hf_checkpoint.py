"""HF checkpoint directories: `save_model` round trips (through transformers and back) and the
errors `load_model` raises on bad directories, which must name the file, field or tensor."""

import json
import os
import shutil

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppow_jax.models import hf_checkpoint, safetensors_io
from ppow_jax.models.config import ConfigError, ModelConfig
from ppow_jax.models.hf_checkpoint import CheckpointError
from ppow_jax.models.transformer import Transformer, forward

_fwd = jax.jit(forward, static_argnums=0)

_BASE = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
             num_kv_heads=2, head_dim=8, bos_token_id=1, eos_token_id=2)
CONFIGS = {
    "qwen2": ModelConfig(model_type="qwen2", attention_bias=True, **_BASE),
    "qwen3": ModelConfig(model_type="qwen3", qk_norm=True, **{**_BASE, "head_dim": 16}),
    "llama_tied_llama3": ModelConfig(model_type="llama", tie_word_embeddings=True,
                                     rope_llama3=(8.0, 1.0, 4.0, 8), **_BASE),
    "mistral": ModelConfig(model_type="mistral", sliding_window=5, **_BASE),
}


def _random_model(cfg, seed=0):
  """A Transformer whose every weight (norms and biases too) is random and O(1)-scaled, so a
  swapped or transposed tensor changes the logits."""
  model = Transformer(cfg, rngs=nnx.Rngs(seed))
  params = model.params()
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree.flatten_with_path(params)[0]]
  new = []
  for path, k, x in zip(paths, keys, leaves):
    noise = jax.random.normal(k, x.shape, x.dtype)
    new.append(1.0 + 0.3 * noise if "norm" in path else (0.5 * noise if "bias" in path else 0.2 * noise))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.unflatten(treedef, new))
  nnx.update(model, state)
  return model


def _tokens(b=2, t=12, seed=0):
  return np.random.RandomState(seed).randint(0, 128, size=(b, t)).astype(np.int32)


def _logits(model, tokens):
  return np.asarray(_fwd(model.cfg, model.params(), jnp.asarray(tokens)).logits)


# --- save_model round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("name,shard_bytes", [("qwen2", 12_000), ("qwen3", None),
                                              ("llama_tied_llama3", None), ("mistral", 20_000)])
def test_save_model_round_trip_through_transformers_and_back(tmp_path, name, shard_bytes):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = CONFIGS[name]
  model = _random_model(cfg)
  path = str(tmp_path / name)
  hf_checkpoint.save_model(model, path, max_shard_bytes=shard_bytes)

  files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if shard_bytes:
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
      index = json.load(f)
    assert len(files) > 1 and sorted(set(index["weight_map"].values())) == files
    for f in files:  # Only a tensor larger than the limit may exceed it, alone in its shard.
      sizes = [v.nbytes for v in safetensors_io.load(os.path.join(path, f)).values()]
      assert sum(sizes) <= shard_bytes or len(sizes) == 1
  else:
    assert files == ["model.safetensors"]
    assert not os.path.exists(os.path.join(path, "model.safetensors.index.json"))

  tokens = _tokens()
  ours = _logits(model, tokens)
  assert ours.std() > 0.3

  tm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
  assert tm.config.model_type == cfg.model_type
  with torch.no_grad():
    ref = tm(torch.as_tensor(tokens, dtype=torch.int64)).logits.numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

  back = hf_checkpoint.load_model(path)
  assert back.cfg == cfg
  jax.tree.map(np.testing.assert_array_equal, back.params(), model.params())
  np.testing.assert_array_equal(_logits(back, tokens), ours)


@pytest.mark.slow
def test_save_model_bfloat16_round_trip(tmp_path):
  """A bfloat16 model is written as BF16 tensors and reads back bit-identical."""
  model = _random_model(CONFIGS["qwen2"].replace(dtype="bfloat16"))
  hf_checkpoint.save_model(model, str(tmp_path))
  header, _ = safetensors_io.read_header(str(tmp_path / "model.safetensors"))
  assert {v["dtype"] for v in header.values()} == {"BF16"}
  back = hf_checkpoint.load_model(str(tmp_path))
  assert back.cfg.dtype == "bfloat16"
  jax.tree.map(np.testing.assert_array_equal, back.params(), model.params())


# --- errors that name the problem ----------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_dirs(tmp_path_factory):
  """One single-file and one sharded checkpoint; tests copy them before breaking them."""
  root = tmp_path_factory.mktemp("ckpt")
  model = _random_model(CONFIGS["qwen2"])
  single, sharded = str(root / "single"), str(root / "sharded")
  hf_checkpoint.save_model(model, single)
  hf_checkpoint.save_model(model, sharded, max_shard_bytes=12_000)
  return single, sharded


def _copy(src, tmp_path):
  dst = str(tmp_path / "ckpt")
  shutil.copytree(src, dst)
  return dst


def _edit_config(path, **changes):
  fname = os.path.join(path, "config.json")
  with open(fname) as f:
    d = json.load(f)
  d.update(changes)
  with open(fname, "w") as f:
    json.dump(d, f)


def _rewrite(path, edit):
  """Rewrites model.safetensors with `edit(tensors)` applied (a dict of numpy arrays)."""
  fname = os.path.join(path, "model.safetensors")
  tensors = {k: np.array(v) for k, v in safetensors_io.load(fname).items()}
  edit(tensors)
  safetensors_io.save(fname, tensors, {"format": "pt"})


def test_copied_checkpoint_loads(saved_dirs, tmp_path):
  """Control for the error tests: an unbroken copy of each directory loads."""
  for src in saved_dirs:
    model = hf_checkpoint.load_model(_copy(src, tmp_path / os.path.basename(src)))
    assert model.cfg == CONFIGS["qwen2"]


def test_missing_directory(tmp_path):
  missing = str(tmp_path / "no_such_model")
  with pytest.raises(FileNotFoundError, match="no_such_model"):
    hf_checkpoint.load_model(missing)


def test_missing_config_json(saved_dirs, tmp_path):
  path = _copy(saved_dirs[0], tmp_path)
  os.remove(os.path.join(path, "config.json"))
  with pytest.raises(FileNotFoundError, match="config.json") as e:
    hf_checkpoint.load_model(path)
  assert path in str(e.value)


def test_unsupported_model_type(saved_dirs, tmp_path):
  path = _copy(saved_dirs[0], tmp_path)
  _edit_config(path, model_type="gpt2")
  with pytest.raises(ConfigError, match="gpt2") as e:
    hf_checkpoint.load_model(path)
  assert "config.json" in str(e.value)


def test_missing_required_config_field(saved_dirs, tmp_path):
  path = _copy(saved_dirs[0], tmp_path)
  _edit_config(path, vocab_size=None)
  with pytest.raises(ConfigError, match="vocab_size") as e:
    hf_checkpoint.load_model(path)
  assert "config.json" in str(e.value)


def test_missing_tensor(saved_dirs, tmp_path):
  path = _copy(saved_dirs[0], tmp_path)
  name = "model.layers.1.mlp.up_proj.weight"
  _rewrite(path, lambda t: t.pop(name))
  with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
    hf_checkpoint.load_model(path)


def test_misshaped_tensor(saved_dirs, tmp_path):
  path = _copy(saved_dirs[0], tmp_path)
  name = "model.layers.0.self_attn.k_proj.weight"  # HF layout [kv_heads*head_dim, hidden] = (16, 32).
  _rewrite(path, lambda t: t.__setitem__(name, np.zeros((24, 32), np.float32)))
  with pytest.raises(CheckpointError) as e:
    hf_checkpoint.load_model(path)
  msg = str(e.value)
  assert name in msg and "(24, 32)" in msg and "(16, 32)" in msg


def test_unsupported_config_dtype(saved_dirs, tmp_path):
  path = _copy(saved_dirs[0], tmp_path)
  _edit_config(path, dtype="float8")
  with pytest.raises(ConfigError, match="float8"):
    hf_checkpoint.load_model(path)
  with pytest.raises(ConfigError, match="float8"):
    hf_checkpoint.load_model(saved_dirs[0], dtype="float8")


def test_integer_tensor_rejected(saved_dirs, tmp_path):
  path = _copy(saved_dirs[0], tmp_path)
  name = "model.norm.weight"
  _rewrite(path, lambda t: t.__setitem__(name, np.ones(t[name].shape, np.int32)))
  with pytest.raises(CheckpointError) as e:
    hf_checkpoint.load_model(path)
  assert name in str(e.value) and "int32" in str(e.value)


def test_missing_shard_file(saved_dirs, tmp_path):
  path = _copy(saved_dirs[1], tmp_path)
  with open(os.path.join(path, "model.safetensors.index.json")) as f:
    shards = sorted(set(json.load(f)["weight_map"].values()))
  assert len(shards) > 1
  os.remove(os.path.join(path, shards[-1]))
  with pytest.raises(CheckpointError, match=shards[-1].replace(".", r"\.")):
    hf_checkpoint.load_model(path)


def test_no_weights_at_all(saved_dirs, tmp_path):
  path = _copy(saved_dirs[0], tmp_path)
  os.remove(os.path.join(path, "model.safetensors"))
  with pytest.raises(CheckpointError, match="model.safetensors"):
    hf_checkpoint.load_model(path)
  open(os.path.join(path, "pytorch_model.bin"), "wb").close()
  with pytest.raises(CheckpointError, match=r"\.bin"):
    hf_checkpoint.load_model(path)


def test_sharded_load_reads_only_each_devices_shards(saved_dirs, monkeypatch):
  """With shardings, every weight lands on its mesh placement as it is read, each device's
  callback asks only for its own slice (never a whole split tensor), and the values and logits
  equal an ordinary load."""
  from ppow_jax.models.transformer import LOGICAL_AXES
  from ppow_jax.parallel import sharding

  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  reads = []
  real_read = hf_checkpoint._Leaf.read

  def spy(self, index=()):
    out = real_read(self, index)
    reads.append((self.shape, out.shape))
    return out

  monkeypatch.setattr(hf_checkpoint._Leaf, "read", spy)
  want = hf_checkpoint.load_model(saved_dirs[1])  # the multi-shard directory
  reads.clear()
  shard_fn = lambda abstract: sharding.tree_shardings(abstract, LOGICAL_AXES, mesh)
  got = hf_checkpoint.load_model(saved_dirs[1], shardings=shard_fn)
  gp, wp = got.params(), want.params()
  expect_sh = shard_fn(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), wp))
  split = 0
  for (path, g), w, sh in zip(jax.tree.flatten_with_path(gp)[0], jax.tree.leaves(wp),
                              jax.tree.leaves(expect_sh)):
    assert g.sharding.is_equivalent_to(sh, g.ndim), jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    split += any(s is not None for s in sh.spec)
  assert split >= 5  # the mesh really splits most weights (embed, q/k/v/o, MLP, ...)
  # 8 devices each reading whole tensors would read 8x the model; split weights are read in
  # quarters (fsdp x tensor) and only norms / biases whole.
  total = sum(int(np.prod(g.shape)) for g in jax.tree.leaves(gp))
  assert sum(int(np.prod(o)) for _, o in reads) <= 0.5 * len(mesh.devices.flat) * total
  assert any(int(np.prod(o)) < int(np.prod(f)) for f, o in reads)
  tokens = jnp.array([[1, 5, 9, 3, 7]], jnp.int32)
  np.testing.assert_allclose(_fwd(got.cfg, gp, tokens).logits, _fwd(want.cfg, wp, tokens).logits,
                             atol=1e-5)
