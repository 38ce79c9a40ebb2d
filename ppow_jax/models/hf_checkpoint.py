"""Hugging Face checkpoint directories <-> Flax parameters, by a table of tensor names.

Reads `config.json` plus `model.safetensors` or shards listed in `model.safetensors.index.json`;
never touches the network and never imports torch.
"""

from __future__ import annotations

import json
import os

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from ppow_jax import run_files
from ppow_jax.models import safetensors_io
from ppow_jax.models.config import ConfigError, ModelConfig
from ppow_jax.models.transformer import Transformer, layer_param_shapes
from ppow_jax.user_errors import UserError

# HF tensor name (per layer, after "model.layers.{i}.") -> (our stacked name, transpose?).
# HF Linear weights are [out, in]; ours are [in, out] so that x @ W.
LAYER_TABLE = {
    "input_layernorm.weight": ("attn_norm", False),
    "self_attn.q_proj.weight": ("q_proj", True),
    "self_attn.k_proj.weight": ("k_proj", True),
    "self_attn.v_proj.weight": ("v_proj", True),
    "self_attn.o_proj.weight": ("o_proj", True),
    "self_attn.q_proj.bias": ("q_bias", False),
    "self_attn.k_proj.bias": ("k_bias", False),
    "self_attn.v_proj.bias": ("v_bias", False),
    "self_attn.q_norm.weight": ("q_norm", False),
    "self_attn.k_norm.weight": ("k_norm", False),
    "post_attention_layernorm.weight": ("mlp_norm", False),
    "mlp.gate_proj.weight": ("gate_proj", True),
    "mlp.up_proj.weight": ("up_proj", True),
    "mlp.down_proj.weight": ("down_proj", True),
}
TOP_TABLE = {
    "model.embed_tokens.weight": ("embed", False),
    "model.norm.weight": ("final_norm", False),
    "lm_head.weight": ("lm_head", True),
}


class CheckpointError(UserError, ValueError):
  """A checkpoint directory that cannot be loaded; the message names the file and tensor."""


def _tensor_index(path: str) -> dict[str, str]:
  """Maps each tensor name to the safetensors file that holds it."""
  index = os.path.join(path, "model.safetensors.index.json")
  single = os.path.join(path, "model.safetensors")
  if os.path.exists(index):
    with open(index) as f:
      try:
        weight_map = json.load(f)["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index}: unreadable shard index ({e!r})") from None
    return {k: os.path.join(path, v) for k, v in weight_map.items()}
  if os.path.exists(single):
    header, _ = safetensors_io.read_header(single)
    return {k: single for k in header}
  if any(f.endswith((".bin", ".pt", ".pth")) for f in os.listdir(path)):
    raise CheckpointError(f"{path}: only PyTorch .bin weights found; ppow_jax reads safetensors "
                          "(convert with transformers' save_pretrained(safe_serialization=True))")
  raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


class TensorReader:
  """The one reader of a checkpoint directory's safetensors (single file or shards with their
  index), for targets and EAGLE-3 drafters alike: each shard opened (memory-mapped) once, a
  missing shard or tensor named in the error."""

  def __init__(self, path):
    self.path = path
    self.where = _tensor_index(path)  # tensor name -> the file that holds it
    self._open: dict[str, dict] = {}

  def has(self, name):
    return name in self.where

  def tensor(self, name) -> np.ndarray:
    """The tensor as stored (a memory-mapped view: nothing is read yet)."""
    if name not in self.where:
      raise CheckpointError(f"{self.path}: missing tensor {name!r}")
    fname = self.where[name]
    if fname not in self._open:
      if not os.path.exists(fname):
        raise CheckpointError(f"{self.path}: shard file {os.path.basename(fname)} listed in the "
                              "index does not exist")
      self._open[fname] = safetensors_io.load(fname)
    if name not in self._open[fname]:
      raise CheckpointError(f"{fname}: missing tensor {name!r}")
    return self._open[fname][name]

  def view(self, name, shape, transpose):
    """The tensor as a memory-mapped view in our layout (nothing is read yet), checked."""
    arr = self.tensor(name)
    fname = self.where[name]
    if arr.dtype.kind not in "f" and arr.dtype.name != "bfloat16":
      raise CheckpointError(f"{fname}: tensor {name!r} has unsupported dtype {arr.dtype}")
    if transpose:
      arr = arr.T
    if tuple(arr.shape) != tuple(shape):
      got = arr.T.shape if transpose else arr.shape
      want = tuple(reversed(shape)) if transpose else tuple(shape)
      raise CheckpointError(f"{fname}: tensor {name!r} has shape {tuple(got)}, expected {want}")
    return arr


class _Leaf:
  """One params leaf, read lazily: a single view, or per-layer views stacked on axis 0."""

  def __init__(self, views, stacked: bool, dtype):
    self.views, self.stacked, self.dtype = views, stacked, dtype
    self.shape = ((len(views),) if stacked else ()) + tuple(views[0].shape)

  def read(self, index=()) -> np.ndarray:
    """The slice `index` (a tuple of slices, as jax.make_array_from_callback passes) as dtype."""
    index = tuple(index) + (slice(None),) * (len(self.shape) - len(tuple(index)))
    if not self.stacked:
      return np.asarray(self.views[0][index], dtype=self.dtype)
    rows = range(len(self.views))[index[0]]
    return np.stack([np.asarray(self.views[i][index[1:]], dtype=self.dtype) for i in rows])


def _leaves(path: str, cfg: ModelConfig) -> dict:
  reader = TensorReader(path)
  dtype = np.dtype(cfg.jnp_dtype)
  h, v = cfg.hidden_size, cfg.vocab_size
  leaf = lambda name, shape, transpose: _Leaf([reader.view(name, shape, transpose)], False, dtype)
  params = {
      "embed": leaf("model.embed_tokens.weight", (v, h), False),
      "final_norm": leaf("model.norm.weight", (h,), False),
  }
  if not cfg.tie_word_embeddings:
    params["lm_head"] = leaf("lm_head.weight", (h, v), True)
  shapes = layer_param_shapes(cfg)
  layers = {}
  for hf_suffix, (name, transpose) in LAYER_TABLE.items():
    if name not in shapes:
      continue
    layers[name] = _Leaf([reader.view(f"model.layers.{i}.{hf_suffix}", shapes[name], transpose)
                          for i in range(cfg.num_layers)], True, dtype)
  params["layers"] = layers
  return params


def load_params(path: str, cfg: ModelConfig, shardings=None) -> dict:
  """Reads the weights of `cfg`'s architecture from a HF directory as a params pytree.

  Without `shardings`: numpy arrays on the host. With a pytree of jax Shardings matching the
  params: jax Arrays assembled shard by shard from the memory-mapped files, so each host reads
  only what its devices hold and no device ever holds a whole tensor it does not own (a 70B
  target never has to fit on one chip or one host).
  """
  leaves = _leaves(path, cfg)
  is_leaf = lambda x: isinstance(x, _Leaf)
  if shardings is None:
    return jax.tree.map(lambda l: l.read(), leaves, is_leaf=is_leaf)
  return jax.tree.map(lambda l, sh: jax.make_array_from_callback(l.shape, sh, l.read),
                      leaves, shardings, is_leaf=is_leaf)


def load_model(path: str, *, dtype: str | None = None, shardings=None) -> Transformer:
  """Loads a local HF checkpoint directory into a `Transformer` (no network, no torch).

  `shardings`: optional callable, abstract params pytree -> pytree of Shardings, or None to
  load onto the default device; with Shardings the weights are placed shard by shard as they
  are read (see load_params).
  """
  cfg = ModelConfig.from_hf_dir(path, dtype=dtype)
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Param)
  placed = shardings(nnx.to_pure_dict(state)) if shardings else None
  if placed is None:
    params = jax.tree.map(jnp.asarray, load_params(path, cfg))
  else:
    params = load_params(path, cfg, placed)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model


def hf_tensors(model: Transformer) -> dict[str, np.ndarray]:
  """The model's weights under HF names and layouts."""
  cfg, params = model.cfg, jax.device_get(model.params())
  out = {}
  for hf, (name, transpose) in TOP_TABLE.items():
    if name in params:
      out[hf] = params[name].T if transpose else params[name]
  for hf_suffix, (name, transpose) in LAYER_TABLE.items():
    if name in params["layers"]:
      for i in range(cfg.num_layers):
        w = params["layers"][name][i]
        out[f"model.layers.{i}.{hf_suffix}"] = w.T if transpose else w
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_model(model: Transformer, path: str, *, max_shard_bytes: int | None = None):
  """Writes a HF checkpoint directory (config.json + safetensors, sharded above max_shard_bytes)."""
  os.makedirs(path, exist_ok=True)
  tensors = hf_tensors(model)
  if max_shard_bytes is None:
    safetensors_io.save(os.path.join(path, "model.safetensors"), tensors, {"format": "pt"})
  else:
    shards, cur, size = [], {}, 0
    for k, v in tensors.items():
      if cur and size + v.nbytes > max_shard_bytes:
        shards.append(cur)
        cur, size = {}, 0
      cur[k], size = v, size + v.nbytes
    shards.append(cur)
    weight_map = {}
    for j, shard in enumerate(shards):
      fname = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
      safetensors_io.save(os.path.join(path, fname), shard, {"format": "pt"})
      weight_map.update({k: fname for k in shard})
    total = sum(v.nbytes for v in tensors.values())
    run_files.write_json(os.path.join(path, "model.safetensors.index.json"),
                         {"metadata": {"total_size": total}, "weight_map": weight_map})
  run_files.write_json(os.path.join(path, "config.json"), model.cfg.to_hf_dict())


def load_tokenizer(path: str):
  """The checkpoint's tokenizer via `transformers.AutoTokenizer`, strictly from local files."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  from transformers import AutoTokenizer  # Deferred: importing transformers is slow.
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer directory not found: {path}")
  try:
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
  except (OSError, ValueError, ImportError, KeyError) as e:  # missing or unreadable files
    reason = " ".join(str(e).split())[:300]
    raise ConfigError(f"{path}: its tokenizer cannot be loaded (tokenizer.json missing or "
                      f"unreadable?): {reason}") from None
