"""The end of a drafter run: the trained weights put back into the drafter, its export, the
greedy tau on held-out prompts (eval.json) and the one-line stage summary printed.
"""

from __future__ import annotations

import flax.nnx as nnx
import jax
from jax.experimental import multihost_utils

from ppow_jax.data import prompts as prompt_files
from ppow_jax.decoding import runner
from ppow_jax.eagle3 import model as e3
from ppow_jax.eagle3.checkpoint import save_eagle3
from ppow_jax.eagle3.engine_adapter import Eagle3EngineDrafter
from ppow_jax.training.startup import Target


def with_params(drafter: e3.Eagle3Drafter, params) -> e3.Eagle3Drafter:
  """The drafter module carrying trained `params`."""
  state = nnx.state(drafter, nnx.Param)
  # Arrays sharded across hosts are gathered first (a collective: every process calls this).
  params = jax.tree.map(lambda x: x if getattr(x, "is_fully_addressable", True)
                        else multihost_utils.process_allgather(x, tiled=True), params)
  nnx.replace_by_pure_dict(state, jax.device_get(params))
  nnx.update(drafter, state)
  return drafter


def export(drafter: e3.Eagle3Drafter, path: str):
  """Writes the EAGLE-3 layout vLLM / SGLang load (and `--config.drafter.path` reads)."""
  save_eagle3(drafter, path)


def eval_prompts(config, target: Target, heldout) -> list[list[int]]:
  """Evaluation prompts: a prompt file if `eval.prompts` is set, else held-out prefixes."""
  e = config.eval
  if e.prompts:
    prompts = prompt_files.load_prompts(e.prompts, limit=e.num_prompts or None)
    return prompt_files.encode_prompts(target.tokenizer, prompts, config.data.max_prompt_len)
  # Prefixes of held-out sequences: never trained on, drawn from the target's own distribution.
  return [r[1:1 + max(int(r[0]), e.prompt_len)].tolist() for r in heldout[:e.num_prompts]]


def measure_tau(target: Target, drafter: e3.Eagle3Drafter, prompt_ids, *, windows, max_new_tokens,
                batch_size, seed=0) -> dict:
  """Greedy tau (tokens per verification step, bonus included) for each window size."""
  dr = Eagle3EngineDrafter(drafter.cfg)
  dp = Eagle3EngineDrafter.bind(drafter, target.params())
  out = {}
  for k in windows:
    s = runner.DecodeSettings(window=k, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              seed=seed)
    res = runner.decode(target.cfg, target.params(), prompt_ids, s, drafter=dr, drafter_params=dp,
                        desc=f"tau K={k}")
    out[f"tau_k{k}"] = runner.summarize(res, ["all"] * len(res))["mean_accept_length"]
  return out


def stage_summary(desc: str, result: dict, export_dir: str) -> str:
  """'sft: 300 steps; greedy tau K=6 2.12, K=10 2.34 -> DIR': eval.json as one short line."""
  taus = ", ".join(f"K={k[len('tau_k'):]} {v:.2f}" for k, v in result.items()
                   if k.startswith("tau_k"))
  return (f"{desc}: {result['num_steps']} steps" + (f"; greedy tau {taus}" if taus else "")
          + f" -> {export_dir}")
