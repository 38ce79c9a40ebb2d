"""Architecture hyperparameters of a decoder-only LM, read from a Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from ppow_jax.user_errors import UserError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def rope_parameters(rope_theta: float, rope_llama3, rope_linear_factor) -> dict[str, Any]:
  """config.json's `rope_parameters` (transformers' RoPE description) of a target or drafter."""
  rope: dict[str, Any] = {"rope_theta": rope_theta, "rope_type": "default"}
  if rope_llama3:
    f, lo, hi, orig = rope_llama3
    rope.update(rope_type="llama3", factor=f, low_freq_factor=lo, high_freq_factor=hi,
                original_max_position_embeddings=orig)
  elif rope_linear_factor:
    rope.update(rope_type="linear", factor=rope_linear_factor)
  return rope


class ConfigError(UserError, ValueError):
  """A model configuration that ppow_jax cannot run, with the offending file and field."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static architecture description; hashable so it can be a static jit argument."""

  model_type: str = "llama"
  vocab_size: int = 512
  hidden_size: int = 64
  intermediate_size: int = 172
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2
  head_dim: int = 16
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  # Llama-3 style RoPE scaling as a hashable tuple:
  # (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings), or None.
  rope_llama3: tuple[float, float, float, int] | None = None
  rope_linear_factor: float | None = None
  attention_bias: bool = False  # Qwen2/2.5: biases on q/k/v projections.
  qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before RoPE.
  sliding_window: int | None = None  # Mistral.
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 2048
  dtype: str = "float32"
  bos_token_id: int | None = None
  eos_token_id: int | tuple[int, ...] | None = None

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ConfigError(
          f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if self.dtype not in SUPPORTED_DTYPES:
      raise ConfigError(f"unsupported dtype {self.dtype!r}; supported: {', '.join(SUPPORTED_DTYPES)}")
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(
          f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")

  @property
  def jnp_dtype(self):
    return SUPPORTED_DTYPES[self.dtype]

  @property
  def eos_ids(self) -> tuple[int, ...]:
    if self.eos_token_id is None:
      return ()
    if isinstance(self.eos_token_id, int):
      return (self.eos_token_id,)
    return tuple(self.eos_token_id)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    h, i, hd = self.hidden_size, self.intermediate_size, self.head_dim
    attn = h * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
    if self.attention_bias:
      attn += hd * (self.num_heads + 2 * self.num_kv_heads)
    per_layer = attn + 3 * h * i + 2 * h + (2 * hd if self.qk_norm else 0)
    head = 0 if self.tie_word_embeddings else self.vocab_size * h
    return self.vocab_size * h + self.num_layers * per_layer + h + head

  # --- Hugging Face config.json <-> ModelConfig -------------------------------------------

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], *, source: str = "config.json",
                   dtype: str | None = None) -> "ModelConfig":
    """Builds a config from a HF `config.json` dict; errors name `source` and the field."""

    def need(key):
      if key not in d or d[key] is None:
        raise ConfigError(f"{source}: missing required field {key!r}")
      return d[key]

    model_type = d.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
      raise ConfigError(f"{source}: unsupported model_type {model_type!r}; "
                        f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if d.get("hidden_act", "silu") != "silu":
      raise ConfigError(f"{source}: unsupported hidden_act {d['hidden_act']!r}; only 'silu'")
    if d.get("mlp_bias"):
      raise ConfigError(f"{source}: mlp_bias=true is not supported")
    hidden, heads = need("hidden_size"), need("num_attention_heads")
    head_dim = d.get("head_dim") or hidden // heads

    # transformers>=5 writes rope_parameters; older files use rope_theta + rope_scaling.
    rope = dict(d.get("rope_parameters") or {})
    if d.get("rope_scaling"):
      rope = {**d["rope_scaling"], **rope}
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    llama3 = linear = None
    if rope_type == "llama3":
      try:
        llama3 = (float(rope["factor"]), float(rope["low_freq_factor"]),
                  float(rope["high_freq_factor"]), int(rope["original_max_position_embeddings"]))
      except KeyError as e:
        raise ConfigError(f"{source}: rope_scaling of type llama3 lacks field {e.args[0]!r}") from None
    elif rope_type == "linear":
      linear = float(rope["factor"])
    elif rope_type != "default":
      raise ConfigError(f"{source}: unsupported rope type {rope_type!r}; supported: default, linear, llama3")

    sliding = None
    if model_type == "mistral":
      sliding = d.get("sliding_window")
    elif d.get("use_sliding_window"):
      raise ConfigError(f"{source}: use_sliding_window=true is not supported for {model_type}")

    if dtype is None:
      dtype = d.get("dtype") or d.get("torch_dtype") or "float32"
      if dtype == "float16":  # Computed in bfloat16: same range as float32, no overflow.
        dtype = "bfloat16"
    if dtype not in SUPPORTED_DTYPES:
      raise ConfigError(f"{source}: unsupported dtype {dtype!r}; supported: {', '.join(SUPPORTED_DTYPES)}")

    return cls(
        model_type=model_type,
        vocab_size=need("vocab_size"),
        hidden_size=hidden,
        intermediate_size=need("intermediate_size"),
        num_layers=need("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        rope_llama3=llama3,
        rope_linear_factor=linear,
        attention_bias=bool(d.get("attention_bias", model_type == "qwen2")),
        qk_norm=model_type == "qwen3",
        sliding_window=sliding,
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        dtype=dtype,
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=(tuple(d["eos_token_id"]) if isinstance(d.get("eos_token_id"), list)
                      else d.get("eos_token_id")),
    )

  @classmethod
  def from_hf_dir(cls, path: str, *, dtype: str | None = None) -> "ModelConfig":
    fname = os.path.join(path, "config.json")
    if not os.path.isdir(path):
      raise FileNotFoundError(f"model directory not found: {path}")
    if not os.path.exists(fname):
      raise FileNotFoundError(f"no config.json in model directory {path}")
    with open(fname) as f:
      try:
        d = json.load(f)
      except json.JSONDecodeError as e:
        raise ConfigError(f"{fname}: invalid JSON ({e})") from None
    return cls.from_hf_dict(d, source=fname, dtype=dtype)

  def to_hf_dict(self) -> dict[str, Any]:
    """The `config.json` transformers reads back into the same architecture."""
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[self.model_type]
    rope = rope_parameters(self.rope_theta, self.rope_llama3, self.rope_linear_factor)
    d = {
        "architectures": [arch], "model_type": self.model_type, "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
        "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim,
        "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta, "rope_parameters": rope,
        "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu",
        "max_position_embeddings": self.max_position_embeddings, "dtype": self.dtype,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
    }
    if self.model_type in ("llama", "qwen2"):
      d["attention_bias"] = self.attention_bias
    if self.model_type == "mistral":
      d["sliding_window"] = self.sliding_window
    return d
