"""GGUF (llama.cpp) files -> Hugging Face checkpoint directories, without torch.

Weights are read and dequantized by the `gguf` package (llama.cpp's own Python reader), renamed
by a table to the HF layout, and written as safetensors in float32 or bfloat16; the tokenizer is
rebuilt by transformers' GGUF tokenizer conversion and saved with its chat template. The result
loads with `hf_checkpoint.load_model` like any other local checkpoint.

llama.cpp's converter permutes the rows of LLaMA's q/k projections from HF's half-split rotary
layout to its interleaved one (`convert_hf_to_gguf.py`, `LlamaModel.permute`): within each
head, rows [2, pair] (first halves, then second halves) become [pair, 2]. The inverse is applied here for `llama` files; Qwen2/3
files are written unpermuted (llama.cpp runs them with NeoX rotation).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from ppow_jax.models import safetensors_io
from ppow_jax.user_errors import UserError

# GGUF architecture -> (HF model_type, HF architecture, q/k rows permuted by llama.cpp?).
ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM", True),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", False),
    "qwen3": ("qwen3", "Qwen3ForCausalLM", False),
}
# Per-layer GGUF tensor (after "blk.{i}.") -> HF name (after "model.layers.{i}.").
LAYER_TABLE = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_TABLE = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
DTYPES = ("float32", "bfloat16")


class GGUFError(UserError, ValueError):
  """A GGUF file that cannot be converted; the message names the file and the field or tensor."""


def _open(path: str):
  import gguf  # Deferred: only conversion needs it.
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file not found: {path}")

  class SizeCheckedReader(gguf.GGUFReader):
    """Checks that the file holds every tensor's bytes before viewing them: the reader's own
    views of a cut-off data section fail with a bare "cannot reshape array"."""

    def _build_tensors(self, start_offs, fields):
      need = start_offs
      for field in fields:
        dims, raw_dtype, offset = field.parts[3], field.parts[4], field.parts[5]
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(raw_dtype[0]))]
        n_bytes = int(np.prod(dims.astype(np.int64))) * type_size // block
        need = max(need, start_offs + int(offset[0]) + n_bytes)
      if need > len(self.data):
        raise GGUFError(f"{path}: truncated GGUF file: {len(self.data)} bytes, its tensors need "
                        f"{need} (a partial download or copy? fetch it again)")
      super()._build_tensors(start_offs, fields)

  try:
    return SizeCheckedReader(path)
  except GGUFError:
    raise
  except Exception as e:  # The reader raises ValueError / struct errors / IndexError on bad bytes.
    raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def _field(reader, path: str, key: str, default=None, required=False):
  f = reader.fields.get(key)
  if f is None:
    if required:
      raise GGUFError(f"{path}: missing metadata field {key!r}")
    return default
  value = f.contents()
  return value


def hf_config(reader, path: str) -> dict:
  """The HF `config.json` dict the file's metadata describes; errors name the field."""
  arch = _field(reader, path, "general.architecture", required=True)
  if arch not in ARCHITECTURES:
    raise GGUFError(f"{path}: general.architecture={arch!r} is not supported; supported: "
                    f"{', '.join(ARCHITECTURES)}")
  model_type, hf_arch, _ = ARCHITECTURES[arch]
  need = lambda k: _field(reader, path, f"{arch}.{k}", required=True)
  if _field(reader, path, f"{arch}.rope.scaling.type") not in (None, "none"):
    raise GGUFError(f"{path}: {arch}.rope.scaling.type="
                    f"{_field(reader, path, f'{arch}.rope.scaling.type')!r} is not supported")
  names = {t.name for t in reader.tensors}
  if "rope_freqs.weight" in names:
    raise GGUFError(f"{path}: tensor 'rope_freqs.weight' (llama.cpp's per-frequency RoPE "
                    "factors, e.g. Llama-3.1 scaling) is not supported")
  hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
  kv_heads = _field(reader, path, f"{arch}.attention.head_count_kv", heads)
  if not isinstance(kv_heads, (int, np.integer)):
    raise GGUFError(f"{path}: {arch}.attention.head_count_kv={kv_heads!r}: per-layer head counts "
                    "are not supported")
  head_dim = int(_field(reader, path, f"{arch}.attention.key_length", hidden // heads))
  rope_dim = _field(reader, path, f"{arch}.rope.dimension_count", head_dim)
  if int(rope_dim) != head_dim:
    raise GGUFError(f"{path}: {arch}.rope.dimension_count={rope_dim} differs from head_dim "
                    f"{head_dim} (partial rotary embeddings are not supported)")
  tokens = _field(reader, path, "tokenizer.ggml.tokens")
  vocab = _field(reader, path, f"{arch}.vocab_size") or (len(tokens) if tokens else None)
  if vocab is None:
    raise GGUFError(f"{path}: neither {arch}.vocab_size nor tokenizer.ggml.tokens gives the "
                    "vocabulary size")
  theta = float(_field(reader, path, f"{arch}.rope.freq_base", 10000.0))
  cfg = {
      "architectures": [hf_arch], "model_type": model_type, "vocab_size": int(vocab),
      "hidden_size": hidden, "intermediate_size": int(need("feed_forward_length")),
      "num_hidden_layers": int(need("block_count")), "num_attention_heads": heads,
      "num_key_value_heads": int(kv_heads), "head_dim": head_dim,
      "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
      "rope_theta": theta, "rope_parameters": {"rope_theta": theta, "rope_type": "default"},
      "max_position_embeddings": int(_field(reader, path, f"{arch}.context_length", 2048)),
      "tie_word_embeddings": "output.weight" not in names, "hidden_act": "silu",
      "bos_token_id": _field(reader, path, "tokenizer.ggml.bos_token_id"),
      "eos_token_id": _field(reader, path, "tokenizer.ggml.eos_token_id"),
  }
  if model_type in ("llama", "qwen2"):
    cfg["attention_bias"] = "blk.0.attn_q.bias" in names
  return cfg


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row permutation: per head, rows [pair, 2] -> [2, pair]."""
  half = w.shape[0] // n_heads // 2
  return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
  """llama.cpp's permutation (the inverse of `unpermute_qk`), for writing test files."""
  half = w.shape[0] // n_heads // 2
  return w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str, num_layers: int) -> str | None:
  if gguf_name in TOP_TABLE:
    return TOP_TABLE[gguf_name]
  if gguf_name.startswith("blk."):
    _, i, rest = gguf_name.split(".", 2)
    if rest in LAYER_TABLE and i.isdigit() and int(i) < num_layers:
      return f"model.layers.{i}.{LAYER_TABLE[rest]}"
  return None


def _dequantize(t, path: str) -> np.ndarray:
  """One tensor as float32 in HF's [out, in] layout (gguf lists shapes innermost-first)."""
  import gguf
  try:
    w = gguf.quants.dequantize(t.data, t.tensor_type)
  except NotImplementedError:
    raise GGUFError(f"{path}: tensor {t.name!r} has quantization type {t.tensor_type.name}, which "
                    "the gguf package cannot dequantize") from None
  except (ValueError, TypeError, IndexError) as e:  # Truncated data, wrong block sizes.
    raise GGUFError(f"{path}: tensor {t.name!r} ({t.tensor_type.name}) is malformed: {e}") from None
  shape = tuple(int(x) for x in reversed(t.shape))
  if w.size != int(np.prod(shape)):
    raise GGUFError(f"{path}: tensor {t.name!r} holds {w.size} values, shape {shape} needs "
                    f"{int(np.prod(shape))}")
  return np.asarray(w, np.float32).reshape(shape)


def convert_weights(reader, path: str, cfg: dict, dtype: str = "float32",
                    progress: Callable | None = None) -> dict[str, np.ndarray]:
  """HF-named tensors (float32 or bfloat16) of every weight the architecture uses."""
  if dtype not in DTYPES:
    raise GGUFError(f"dtype={dtype!r}: expected one of {DTYPES}")
  arch = _field(reader, path, "general.architecture")
  permuted = ARCHITECTURES[arch][2]
  out_dtype = np.float32
  if dtype == "bfloat16":
    import ml_dtypes
    out_dtype = ml_dtypes.bfloat16
  tensors = {}
  items = list(reader.tensors)
  for t in (progress(items) if progress else items):
    name = _hf_name(t.name, cfg["num_hidden_layers"])
    if name is None:
      continue  # e.g. rope tables some converters add; nothing the HF model reads.
    w = _dequantize(t, path)
    if permuted and name.endswith("q_proj.weight"):
      w = unpermute_qk(w, cfg["num_attention_heads"])
    elif permuted and name.endswith("k_proj.weight"):
      w = unpermute_qk(w, cfg["num_key_value_heads"])
    tensors[name] = np.ascontiguousarray(w.astype(out_dtype))
  expected = set(TOP_TABLE.values()) - ({"lm_head.weight"} if cfg["tie_word_embeddings"] else set())
  for i in range(cfg["num_hidden_layers"]):
    expected |= {f"model.layers.{i}.{LAYER_TABLE[k]}" for k in (
        "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
        "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
        "ffn_down.weight")}
  missing = sorted(expected - set(tensors))
  if missing:
    gguf_names = {v: k for k, v in TOP_TABLE.items()}
    first = missing[0]
    raise GGUFError(f"{path}: missing tensor for {first!r}"
                    + (f" (GGUF name {gguf_names[first]!r})" if first in gguf_names else "")
                    + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
  return tensors


def tokenizer_metadata(reader, path: str) -> tuple[str, dict, dict]:
  """(architecture, tokenizer fields, tokenizer_config fields) under transformers' names.

  Read with the gguf package's reader: transformers' own GGUF metadata reader imports torch,
  which ppow_jax never needs at run time. The key table is transformers' (so the conversion
  below sees what `AutoTokenizer.from_pretrained(gguf_file=...)` would).
  """
  from transformers.integrations.gguf import gguf_tokenizer_mapping as tm
  values = {k: f.contents() for k, f in reader.fields.items() if f.types}
  groups = {group: {name: values[f"tokenizer.{key}"] for key, name in renames.items()
                    if f"tokenizer.{key}" in values}
            for group, renames in tm.GGUF_TOKENIZER_MAPPING.items()}
  tokenizer, config = groups["tokenizer"], groups["tokenizer_config"]
  if "tokens" not in tokenizer:
    raise GGUFError(f"{path}: no tokenizer.ggml.tokens (the file carries no tokenizer)")
  if tokenizer.get("tokenizer_type") == "llama":
    config.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece files
  for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                    ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
    token_id = values.get(f"tokenizer.ggml.{key}")
    config[name] = tokenizer["tokens"][int(token_id)] if token_id is not None else None
  return str(values["general.architecture"]), tokenizer, config


def save_tokenizer(path: str, out_dir: str, reader=None):
  """The GGUF's tokenizer through transformers' GGUF tokenizer conversion (no torch), saved as
  tokenizer.json + tokenizer_config.json (with the chat template)."""
  from transformers import PreTrainedTokenizerFast
  from transformers.integrations.gguf import gguf_tokenizer_mapping as tm
  reader = reader if reader is not None else _open(path)
  arch, tokenizer, config = tokenizer_metadata(reader, path)
  try:
    backend, extra = tm.convert_gguf_tokenizer(arch, tokenizer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)
  except Exception as e:  # transformers raises assorted errors for unknown tokenizer models.
    raise GGUFError(f"{path}: tokenizer metadata (tokenizer.ggml.*) could not be converted "
                    f"({type(e).__name__}: {e})") from None
  tok.save_pretrained(out_dir)
  return tok


def convert(path: str, out_dir: str, *, dtype: str = "float32", progress: Callable | None = None
            ) -> dict:
  """Writes config.json, model.safetensors, tokenizer files into `out_dir`; returns the config.

  The directory is built under a temporary name and renamed into place, so a crash never leaves
  a half-written checkpoint that a later run would take for a finished one.
  """
  reader = _open(path)
  cfg = hf_config(reader, path)
  cfg["dtype"] = dtype
  tensors = convert_weights(reader, path, cfg, dtype, progress)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp{os.getpid()}")
  os.makedirs(tmp, exist_ok=True)
  safetensors_io.save(os.path.join(tmp, "model.safetensors"), tensors, {"format": "pt"})
  save_tokenizer(path, tmp, reader)
  with open(os.path.join(tmp, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
  with open(os.path.join(tmp, "generation_config.json"), "w") as f:
    json.dump({"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}, f)
  if os.path.isdir(out_dir):
    import shutil
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
  return cfg
