"""Decoder-only transformer LMs (LLaMA, Qwen2/2.5, Qwen3, Mistral) with a static KV cache."""

from ppow_jax.models.config import ModelConfig
from ppow_jax.models.kv_cache import KVCache
from ppow_jax.models.transformer import ModelOutput, Transformer

__all__ = ["ModelConfig", "KVCache", "ModelOutput", "Transformer"]
