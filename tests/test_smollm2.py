"""SmolLM2-135M-Instruct (the real target, converted from its PyPI GGUF): ppow_jax's greedy
decoding equals transformers' greedy `generate()` token for token, batch 1 and 4, with and
without a drafter, in float32."""

import flax.nnx as nnx
import numpy as np
import pytest

from ppow_jax.data import prompts as prompt_files
from ppow_jax.decoding import runner
from ppow_jax.decoding.drafter import LMDrafter
from ppow_jax.eagle3 import model as e3
from ppow_jax.eagle3.engine_adapter import Eagle3EngineDrafter
from ppow_jax.models import hf_checkpoint

NEW = 24
pytestmark = pytest.mark.slow  # a 135M-parameter target, against transformers
QUESTIONS = [
    "What is the capital of France?", "Write a haiku about rain.",
    "Give me three tips for better sleep.", "What is 17 times 3?",
    "Translate 'good morning' into Spanish.", "Explain what a black hole is in one sentence.",
    "Name a famous painting by Leonardo da Vinci.", "Write a Python function that adds two numbers.",
]


@pytest.fixture(scope="module")
def smol(smollm2_path):
  model = hf_checkpoint.load_model(smollm2_path)
  tok = hf_checkpoint.load_tokenizer(smollm2_path)
  ids = [prompt_files.encode_prompt(tok, prompt_files.Prompt(str(i), "q", (q,)))
         for i, q in enumerate(QUESTIONS)]
  return model, tok, ids


@pytest.fixture(scope="module")
def hf_greedy(smollm2_path, smol):
  import torch
  from transformers import AutoModelForCausalLM
  _, tok, ids = smol
  ref = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
  out = []
  with torch.no_grad():
    for x in ids:
      g = ref.generate(torch.tensor([x]), max_new_tokens=NEW, do_sample=False,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
      out.append(g[0, len(x):].tolist())
  return out


def _decode(model, ids, batch_size, drafter=None, dparams=None, window=4):
  s = runner.DecodeSettings(window=window, max_new_tokens=NEW, batch_size=batch_size)
  return runner.decode(model.cfg, model.params(), ids, s, drafter=drafter, drafter_params=dparams,
                       progress=False)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_autoregressive_equals_transformers_greedy(smol, hf_greedy, batch_size):
  model, tok, ids = smol
  res = _decode(model, ids, batch_size)
  assert [r.output_token_ids for r in res] == hf_greedy
  assert "Paris" in tok.decode(res[0].output_token_ids)


def test_speculative_equals_transformers_greedy(smol, hf_greedy):
  """Self-draft (every window accepted) and a random EAGLE-3 drafter (almost nothing
  accepted), batch 4: output identical to transformers' greedy either way."""
  model, _, ids = smol
  # The stacked layers (a scan) as the drafter: the same forward, a fraction of the compile time.
  res = _decode(model, ids, 4, LMDrafter(model.cfg), model.params())
  assert [r.output_token_ids for r in res] == hf_greedy
  steps = sum(len(r.accept_lengths) for r in res)
  assert sum(len(r.output_token_ids) for r in res) / steps > 3.5  # ~K+1 = 5 per step
  cfg = e3.Eagle3Config.from_target(model.cfg, draft_vocab_size=4096)
  d = e3.Eagle3Drafter(cfg, rngs=nnx.Rngs(0))
  res = _decode(model, ids, 4, Eagle3EngineDrafter(cfg), Eagle3EngineDrafter.bind(d, model.params()))
  assert [r.output_token_ids for r in res] == hf_greedy
  assert np.mean([a for r in res for a in r.accept_lengths]) < 1.5
