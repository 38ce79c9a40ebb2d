"""The whole PPOW pipeline on an embedded default: no download, about 15 minutes on 2 CPU cores.

  python -m ppow_jax.main --config configs/default.py

Stages (cached in the workdir, default runs/default): a small LLaMA target trained on the
interpreter's standard library, self-distillation data, the token-level EAGLE-3 drafter, PPOW
fine-tuning, and the evaluation report (autoregressive vs token-level vs PPOW: tau and speedup).
Any local Hugging Face checkpoint runs the same pipeline:

  python -m ppow_jax.main --config configs/default.py --workdir runs/stories \
    --config.target.path=../shared/models/stories260k

Sub-stage settings are the full configs of configs/{sft,ppow,eval}.py, overridable as e.g.
--config.sft.train.num_steps=100 or --config.ppow.ppow.window=8.
"""

import dataclasses
import importlib.util
import os

import ml_collections

from ppow_jax.pipeline import target_lm


def _load(name):
  spec = importlib.util.spec_from_file_location(
      f"ppow_configs_{name}", os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "pipeline"
  c.workdir = "runs/default"
  c.seed = 0
  c.target = ml_collections.ConfigDict(dict(path=""))  # "" = train the embedded target (stage 1)
  # Stage 1: every field of ppow_jax.pipeline.target_lm.TargetLMSettings (a 1500-step budget).
  c.target_lm = ml_collections.ConfigDict(dataclasses.asdict(target_lm.TargetLMSettings()))
  # Prompts cut from the target's training text (self-distillation) and held-out files (eval).
  c.prompts = ml_collections.ConfigDict(dict(num_train=512, num_eval=24, prompt_chars=160))

  sft = _load("sft")
  sft.data.update(dict(num_samples=512, num_heldout=16, max_new_tokens=96, seq_len=160,
                       temperature=0.7, max_prompt_len=64))
  sft.train.update(dict(num_steps=300, batch_size=16, checkpoint_every=50))
  sft.optim.update(dict(learning_rate=3e-3, warmup_steps=50))
  sft.eval.update(dict(num_prompts=16, windows=(6,), max_new_tokens=64))
  c.sft = sft

  ppow = _load("ppow")
  ppow.data = sft.data.copy_and_resolve_references()
  ppow.train.update(dict(num_steps=80, batch_size=8, checkpoint_every=20))
  ppow.ppow.update(dict(window=6, windowing_start=10))
  ppow.eval = sft.eval.copy_and_resolve_references()
  c.ppow = ppow

  ev = _load("eval")
  ev.eval.update(dict(temperatures="0,1", window=6, windows="2,4,6", max_new_tokens=64,
                      batch_size=4, progress=True))
  ev.data.update(dict(max_prompt_len=64))
  c.eval = ev
  return c
