"""EAGLE-3 drafter checkpoints in the published layout that vLLM, SGLang, SpecForge and EAGLE load.

A directory with `config.json` (a Llama config with `architectures: ["LlamaForCausalLMEagle3"]`,
`num_hidden_layers: 1`, `draft_vocab_size`, the aux layer ids, optional `target_hidden_size`) and
`model.safetensors` holding, in HF [out, in] layouts:
  fc.weight, midlayer.{input_layernorm,hidden_norm,post_attention_layernorm}.weight,
  midlayer.self_attn.{q,k,v,o}_proj.weight, midlayer.mlp.{gate,up,down}_proj.weight,
  norm.weight, lm_head.weight, and d2t (int64 [Vd]), t2d (bool [V]) only when Vd < V.
Import also reads EAGLE's `pytorch_model.bin` (a torch.save state dict, via `torch_zip`).
What the readers do with each (vLLM 0.33 `llama_eagle3.py` + `llm_base_proposer.py`, SGLang
`llama_eagle3.py` + `llama.py`, SpecForge 0.2 `llama3_eagle.py`, EAGLE `cnets.py`):
  * d2t: vLLM creates its `draft_id_to_target_id` parameter only when draft_vocab_size differs
    from the target's vocabulary, so a full-vocabulary checkpoint carrying d2t fails to load
    there; EAGLE deletes both maps then; SGLang treats a missing d2t as "no hot-token map". So the
    maps are written only for a reduced draft vocabulary; t2d is ignored by vLLM and SGLang.
  * embed_tokens.weight: optional everywhere. Without it vLLM and SGLang share the target's
    embedding; with it vLLM keeps the drafter's own when it differs from the target's, EAGLE
    loads it, SGLang replaces it with the target's (unless the hidden sizes differ). ppow's
    exports share the target's (training uses the target's frozen embedding); on import a
    shipped one is used, as vLLM and EAGLE do.
  * target_hidden_size: vLLM, SGLang and SpecForge read an absent key as hidden_size, but EAGLE's
    cnets skips loading the target's embedding whenever the key is present at all. So it is
    written only when it differs from hidden_size (and then the embedding cannot be shared).
  * norm_output: vLLM (default false: feed back the pre-norm state) and SpecForge (default true:
    normalise before lm_head) give the key opposite meanings; both defaults are ppow's
    computation, so it is never written.

Aux layer ids: two readers use two conventions, so both are written.
  * top-level `eagle_aux_hidden_state_layer_ids` (vLLM `gpu_model_runner`, read first): id i is
    the input of target layer i = the residual stream after i layers -- ppow's index.
  * `eagle_config.eagle_aux_hidden_state_layer_ids` (SpecForge `resolve_eagle_capture_layers`,
    SGLang `set_eagle3_layers_to_capture`, which adds 1): id j is the output of layer j, so
    ppow index - 1. E.g. Qwen3-235B (94 layers) ships [1, 46, 90] = ppow (2, 47, 91).
On load, the top-level key wins; an `eagle_config` id is converted with +1; neither (EAGLE's own
checkpoints) means the target's default (2, L//2, L-3).
"""

from __future__ import annotations

import json
import os

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ppow_jax import run_files
from ppow_jax.eagle3.model import Eagle3Config, Eagle3Drafter, param_shapes
from ppow_jax.models import safetensors_io, torch_zip
from ppow_jax.models.config import ConfigError, ModelConfig, rope_parameters
from ppow_jax.models.hf_checkpoint import CheckpointError, TensorReader

ARCHITECTURE = "LlamaForCausalLMEagle3"
# Names vLLM's registry also accepts for the same drafter.
_ARCHITECTURES = (ARCHITECTURE, "Eagle3LlamaForCausalLM")

# HF tensor name -> (path in ppow params, transpose?). HF Linear weights are [out, in].
TENSOR_TABLE = {
    "fc.weight": (("fc",), True),
    "midlayer.input_layernorm.weight": (("midlayer", "input_layernorm"), False),
    "midlayer.hidden_norm.weight": (("midlayer", "hidden_norm"), False),
    "midlayer.self_attn.q_proj.weight": (("midlayer", "q_proj"), True),
    "midlayer.self_attn.k_proj.weight": (("midlayer", "k_proj"), True),
    "midlayer.self_attn.v_proj.weight": (("midlayer", "v_proj"), True),
    "midlayer.self_attn.o_proj.weight": (("midlayer", "o_proj"), True),
    "midlayer.post_attention_layernorm.weight": (("midlayer", "post_attention_layernorm"), False),
    "midlayer.mlp.gate_proj.weight": (("midlayer", "gate_proj"), True),
    "midlayer.mlp.up_proj.weight": (("midlayer", "up_proj"), True),
    "midlayer.mlp.down_proj.weight": (("midlayer", "down_proj"), True),
    "norm.weight": (("norm",), False),
    "lm_head.weight": (("lm_head",), True),
}
EMBED_TENSOR = "embed_tokens.weight"
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
TORCH_FILE = "pytorch_model.bin"  # EAGLE's published drafters (torch.save), read without torch


# --- config.json <-> Eagle3Config ----------------------------------------------------------

def config_to_hf_dict(cfg: Eagle3Config) -> dict:
  """The drafter's `config.json`."""
  rope = rope_parameters(cfg.rope_theta, cfg.rope_llama3, cfg.rope_linear_factor)
  scaling = None
  if rope["rope_type"] != "default":
    scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
  d = {
      "architectures": [ARCHITECTURE], "model_type": "llama",
      "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
      "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "rope_scaling": scaling,
      "rope_parameters": rope, "max_position_embeddings": cfg.max_position_embeddings,
      "vocab_size": cfg.vocab_size, "draft_vocab_size": cfg.draft_vocab_size,
      "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
      "dtype": cfg.dtype, "torch_dtype": cfg.dtype,
      "norm_before_residual": cfg.norm_before_residual,
      "eagle_aux_hidden_state_layer_ids": list(cfg.aux_layers),
      "eagle_config": {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in cfg.aux_layers],
                       "use_aux_hidden_state": True},
  }
  # Only when it differs: EAGLE's cnets stops sharing the target's embedding on its presence.
  if cfg.target_hidden_size != cfg.hidden_size:
    d["target_hidden_size"] = cfg.target_hidden_size
  if cfg.sliding_window:
    d["sliding_window"] = cfg.sliding_window
  return d


def config_from_hf_dict(d: dict, *, source: str = "config.json", target_cfg: ModelConfig | None = None,
                        dtype: str | None = None) -> Eagle3Config:
  """Parses an EAGLE-3 `config.json` dict; errors name `source` and the field."""
  archs = d.get("architectures") or []
  if not any(a in _ARCHITECTURES for a in archs):
    raise ConfigError(f"{source}: architectures={archs!r} is not an EAGLE-3 drafter "
                      f"(expected {ARCHITECTURE!r})")
  if d.get("num_hidden_layers", 1) != 1:
    raise ConfigError(f"{source}: num_hidden_layers={d['num_hidden_layers']}; only 1 is supported")
  eagle = d.get("eagle_config") or {}
  if not isinstance(eagle, dict):
    raise ConfigError(f"{source}: eagle_config must be an object, got {type(eagle).__name__}")
  if not eagle.get("use_aux_hidden_state", True):
    raise ConfigError(f"{source}: eagle_config.use_aux_hidden_state=false is not supported")
  for key in ("fc_norm", "norm_before_fc", "attention_bias", "qkv_bias"):
    if d.get(key):
      raise ConfigError(f"{source}: {key}=true is not supported")
  if d.get("norm_output", True) is False:  # SpecForge's meaning: no final norm before lm_head
    raise ConfigError(f"{source}: norm_output=false is not supported")
  # The Llama fields (heads, head_dim, RoPE, eps, dtype) parse exactly as a target's would.
  base = ModelConfig.from_hf_dict({**d, "model_type": d.get("model_type") or "llama",
                                   "num_hidden_layers": 1, "attention_bias": False},
                                  source=source, dtype=dtype)
  if base.model_type != "llama":
    raise ConfigError(f"{source}: model_type={base.model_type!r}; EAGLE-3 drafters are 'llama'")

  if d.get("eagle_aux_hidden_state_layer_ids"):
    aux = tuple(int(i) for i in d["eagle_aux_hidden_state_layer_ids"])
  elif eagle.get("eagle_aux_hidden_state_layer_ids"):
    aux = tuple(int(i) + 1 for i in eagle["eagle_aux_hidden_state_layer_ids"])
  elif target_cfg is not None:
    aux = None  # Filled with the target's default below.
  else:
    raise ConfigError(f"{source}: no eagle_aux_hidden_state_layer_ids; pass target_cfg to use the "
                      "default (2, L//2, L-3) capture layers")
  if aux is not None and len(aux) != 3:
    raise ConfigError(f"{source}: eagle_aux_hidden_state_layer_ids={list(aux)} must name 3 layers")

  kw = dict(
      hidden_size=base.hidden_size, num_heads=base.num_heads, num_kv_heads=base.num_kv_heads,
      head_dim=base.head_dim, intermediate_size=base.intermediate_size,
      rms_norm_eps=base.rms_norm_eps, rope_theta=base.rope_theta, rope_llama3=base.rope_llama3,
      rope_linear_factor=base.rope_linear_factor, vocab_size=base.vocab_size,
      draft_vocab_size=d.get("draft_vocab_size") or base.vocab_size,
      target_hidden_size=d.get("target_hidden_size") or base.hidden_size,
      dtype=base.dtype, sliding_window=d.get("sliding_window"),
      norm_before_residual=bool(d.get("norm_before_residual", False)),
      max_position_embeddings=base.max_position_embeddings)
  try:
    if aux is None:
      cfg = Eagle3Config.from_target(target_cfg, **kw)
    else:
      cfg = Eagle3Config(aux_layers=aux, **kw)
  except ConfigError as e:
    raise ConfigError(f"{source}: {e}") from None
  if target_cfg is not None:
    cfg.check_target(target_cfg, source)
  return cfg


def _read_config(path: str) -> tuple[dict, str]:
  if not os.path.isdir(path):
    raise FileNotFoundError(f"EAGLE-3 checkpoint directory not found: {path}")
  fname = os.path.join(path, "config.json")
  if not os.path.exists(fname):
    raise FileNotFoundError(f"no config.json in EAGLE-3 checkpoint directory {path}")
  with open(fname) as f:
    try:
      return json.load(f), fname
    except json.JSONDecodeError as e:
      raise ConfigError(f"{fname}: invalid JSON ({e})") from None


# --- tensors -------------------------------------------------------------------------------

def hf_tensors(drafter: Eagle3Drafter) -> dict[str, np.ndarray]:
  """The drafter's tensors under the published names and HF layouts."""
  params = jax.device_get(drafter.params())
  out = {}
  for name, (keys, transpose) in TENSOR_TABLE.items():
    w = params
    for k in keys:
      w = w[k]
    out[name] = np.ascontiguousarray(w.T if transpose else w)
  if drafter.cfg.draft_vocab_size < drafter.cfg.vocab_size:  # else identity maps: see above
    out["d2t"] = np.asarray(jax.device_get(drafter.d2t[...]), np.int64)
    out["t2d"] = np.asarray(jax.device_get(drafter.t2d[...]), np.bool_)
  return out


def save_eagle3(drafter: Eagle3Drafter, path: str, *, embed_table=None):
  """Writes `config.json` + `model.safetensors` (atomically each) into directory `path`.

  embed_table: optional [V, hidden_size] embedding to ship as `embed_tokens.weight` (needed only
  when the drafter cannot share the target's, e.g. hidden_size != target hidden size).
  """
  cfg = drafter.cfg
  if len(set(cfg.aux_layers)) < len(cfg.aux_layers):
    # vLLM (`_set_aux_hidden_state_layers`) and SGLang capture each target layer once.
    logging.warning("%s: aux_layers=%s name a layer twice (the default below 7 target layers): "
                    "vLLM and SGLang, which capture each layer once, cannot serve it; train with "
                    "three distinct --config.drafter.aux_layers for them", path,
                    list(cfg.aux_layers))
  os.makedirs(path, exist_ok=True)
  tensors = hf_tensors(drafter)
  if embed_table is not None:
    e = np.asarray(jax.device_get(embed_table))
    if e.shape != (cfg.vocab_size, cfg.hidden_size):
      raise ValueError(f"embed_table has shape {e.shape}, expected "
                       f"({cfg.vocab_size}, {cfg.hidden_size})")
    tensors[EMBED_TENSOR] = np.ascontiguousarray(e)
  safetensors_io.save(os.path.join(path, "model.safetensors"), tensors, {"format": "pt"})
  run_files.write_json(os.path.join(path, "config.json"), config_to_hf_dict(cfg))


def _load_tensors(path: str) -> dict[str, tuple[np.ndarray, str]]:
  """{name: (array, file)} over the single file or the shards of the index, or EAGLE's
  `pytorch_model.bin` when there is no safetensors file."""
  torch_file = os.path.join(path, TORCH_FILE)
  if os.path.exists(torch_file) and not any(
      os.path.exists(os.path.join(path, f)) for f in SAFETENSORS_FILES):
    return {k: (v, torch_file) for k, v in torch_zip.load(torch_file).items()}
  reader = TensorReader(path)
  return {name: (reader.tensor(name), fname) for name, fname in reader.where.items()}


def _params_from_tensors(path: str, cfg: Eagle3Config, tensors: dict) -> tuple[dict, np.ndarray,
                                                                                np.ndarray]:
  dtype = np.dtype(cfg.jnp_dtype)
  shapes = param_shapes(cfg)
  files = sorted({f for _, f in tensors.values()})
  where = files[0] if len(files) == 1 else path
  unknown = sorted(set(tensors) - set(TENSOR_TABLE) - {"d2t", "t2d", EMBED_TENSOR})
  if unknown:
    raise CheckpointError(f"{where}: unexpected tensor(s) {', '.join(map(repr, unknown))} for an "
                          "EAGLE-3 drafter")
  if EMBED_TENSOR in tensors:
    arr, fname = tensors[EMBED_TENSOR]
    if tuple(arr.shape) != (cfg.vocab_size, cfg.hidden_size):
      raise CheckpointError(f"{fname}: tensor {EMBED_TENSOR!r} has shape {tuple(arr.shape)}, "
                            f"expected ({cfg.vocab_size}, {cfg.hidden_size})")
  params: dict = {"midlayer": {}}
  for name, (keys, transpose) in TENSOR_TABLE.items():
    if name not in tensors:
      raise CheckpointError(f"{where}: missing tensor {name!r}")
    arr, fname = tensors[name]
    want = shapes[keys[0]] if len(keys) == 1 else shapes[keys[0]][keys[1]]
    hf_want = tuple(reversed(want)) if transpose else tuple(want)
    if tuple(arr.shape) != hf_want:
      raise CheckpointError(f"{fname}: tensor {name!r} has shape {tuple(arr.shape)}, expected "
                            f"{hf_want}")
    if arr.dtype.kind != "f" and arr.dtype.name != "bfloat16":
      raise CheckpointError(f"{fname}: tensor {name!r} has unsupported dtype {arr.dtype}")
    value = np.asarray(arr.T if transpose else arr, dtype=dtype)
    if len(keys) == 1:
      params[keys[0]] = value
    else:
      params[keys[0]][keys[1]] = value

  vd, v = cfg.draft_vocab_size, cfg.vocab_size
  if "d2t" in tensors:
    arr, fname = tensors["d2t"]
    if tuple(arr.shape) != (vd,) or arr.dtype.kind not in "iu":
      raise CheckpointError(f"{fname}: tensor 'd2t' has shape {tuple(arr.shape)} dtype {arr.dtype}, "
                            f"expected ({vd},) integer")
    d2t = np.asarray(arr, np.int64)
    target_ids = np.arange(vd) + d2t
    if np.any(target_ids < 0) or np.any(target_ids >= v):
      raise CheckpointError(f"{fname}: tensor 'd2t' maps draft ids outside the target vocabulary "
                            f"[0, {v})")
  elif vd == v:
    d2t = np.zeros(vd, np.int64)  # vLLM: no d2t means the identity.
  else:
    raise CheckpointError(f"{where}: missing tensor 'd2t' (required when draft_vocab_size={vd} < "
                          f"vocab_size={v})")
  if "t2d" in tensors:
    arr, fname = tensors["t2d"]
    if tuple(arr.shape) != (v,) or arr.dtype.kind not in "biu":
      raise CheckpointError(f"{fname}: tensor 't2d' has shape {tuple(arr.shape)} dtype {arr.dtype}, "
                            f"expected ({v},) bool")
    t2d = np.asarray(arr).astype(bool)
  else:
    t2d = np.zeros(v, bool)
    t2d[np.arange(vd) + d2t] = True
  return params, d2t, t2d


def load_eagle3(path: str, target_cfg: ModelConfig | None = None, *,
                dtype: str | None = None) -> Eagle3Drafter:
  """Loads a drafter directory (no torch, no network), checked against `target_cfg` if given."""
  d, fname = _read_config(path)
  cfg = config_from_hf_dict(d, source=fname, target_cfg=target_cfg, dtype=dtype)
  params, d2t, t2d = _params_from_tensors(path, cfg, _load_tensors(path))
  drafter = nnx.eval_shape(lambda: Eagle3Drafter(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(drafter)
  nnx.replace_by_pure_dict(state, {**jax.tree.map(jnp.asarray, params),
                                   "d2t": jnp.asarray(d2t, jnp.int32),
                                   "t2d": jnp.asarray(t2d, jnp.bool_)})
  nnx.update(drafter, state)
  return drafter


def read_embed_tokens(path: str) -> np.ndarray | None:
  """The checkpoint's own `embed_tokens.weight` [V, H] if it ships one, else None (use the target's)."""
  tensors = _load_tensors(path)
  return np.asarray(tensors[EMBED_TENSOR][0]) if EMBED_TENSOR in tensors else None
