"""Loading a drafter for the engine from a directory: a small HF LM, or an EAGLE-3 export."""

from __future__ import annotations

import json
import os

from ppow_jax.decoding.drafter import LMDrafter
from ppow_jax.models import hf_checkpoint
from ppow_jax.models.config import ModelConfig
from ppow_jax.user_errors import UserError


class DrafterMismatchError(UserError, ValueError):
  """A drafter that cannot serve this target (vocabulary or hidden sizes differ)."""


def _is_model_dir(path: str) -> bool:
  """A checkpoint's config.json (not the resolved run config `main` writes into a workdir)."""
  fname = os.path.join(path, "config.json")
  if not os.path.exists(fname):
    return False
  try:
    with open(fname) as f:
      d = json.load(f)
  except (OSError, json.JSONDecodeError):
    return True  # let the loader report the bad file
  return isinstance(d, dict) and ("architectures" in d or "model_type" in d)


def resolve_drafter_dir(path: str) -> str:
  """Accepts an export directory, or a run directory holding one under `export/`."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"drafter directory not found: {path}")
  if _is_model_dir(path):
    return path
  sub = os.path.join(path, "export")
  if _is_model_dir(sub):
    return sub
  raise FileNotFoundError(f"{path}: no checkpoint config.json (nor export/config.json) for a "
                          "drafter")


def is_eagle3_dir(path: str) -> bool:
  with open(os.path.join(path, "config.json")) as f:
    d = json.load(f)
  return any("Eagle3" in a for a in d.get("architectures") or [])


def load_drafter(path: str, target_cfg: ModelConfig, target_params: dict):
  """Returns (drafter, params) for the engine; refuses a drafter whose vocabulary differs."""
  path = resolve_drafter_dir(path)
  if is_eagle3_dir(path):
    from ppow_jax.eagle3 import engine_adapter  # Only EAGLE-3 users pay for the import.
    return engine_adapter.load_for_engine(path, target_cfg, target_params)
  model = hf_checkpoint.load_model(path, dtype=target_cfg.dtype)
  if model.cfg.vocab_size != target_cfg.vocab_size:
    raise DrafterMismatchError(
        f"drafter {path} has vocab_size {model.cfg.vocab_size} but the target has "
        f"{target_cfg.vocab_size}; a drafter must share the target's vocabulary")
  return LMDrafter(model.cfg), model.params()
