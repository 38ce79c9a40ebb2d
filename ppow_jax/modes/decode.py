"""Decode mode: speculative (or autoregressive) decoding of a prompt file.

Writes DIR/decode.jsonl (per prompt: id, category, output_token_ids, text, accept_lengths,
seconds) and DIR/summary.json (mean_accept_length, tokens_per_second, num_prompts, per category).
While it runs, each finished batch is appended to DIR/decode.partial.jsonl; rerunning the same
command after an interruption decodes only the batches missing there.
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging

from ppow_jax import run_files
from ppow_jax.data import prompts as prompt_files
from ppow_jax.decoding import runner, sampling
from ppow_jax.decoding import tree as draft_tree
from ppow_jax.decoding.drafter_io import load_drafter
from ppow_jax.models import hf_checkpoint
from ppow_jax.user_errors import ConfigValueError

PARTIAL = "decode.partial.jsonl"  # the batches decoded so far, while a run is unfinished


def settings_from_config(config) -> runner.DecodeSettings:
  d = config.decode
  tree = draft_tree.parse("config.decode.tree", d.get("tree", ""))
  if tree is not None and not config.drafter.path:
    raise ConfigValueError(f"config.decode.tree={d.tree!r} needs a drafter: config.drafter.path "
                           "is empty")
  return runner.DecodeSettings(
      window=d.window, max_new_tokens=d.max_new_tokens, batch_size=d.batch_size, seed=config.seed,
      sp=sampling.SamplingParams(temperature=d.temperature, top_k=d.top_k, top_p=d.top_p),
      tree=tree)


def check_context(target_cfg, longest_prompt: int, max_new_tokens: int, window: int = 0,
                  field: str = "config.decode.window"):
  """A prompt + output that overflows the target's positions is refused before decoding.

  `longest_prompt` is the longest prompt of the run after truncation, so short prompts on a
  short-context model pass whatever data.max_prompt_len says; `window` is the most draft tokens
  a step adds (a tree's depth, named by `field`).
  """
  need = longest_prompt + max_new_tokens + window + 1
  if need > target_cfg.max_position_embeddings:
    draft = f" + {field} ({window})" if window else ""
    raise ConfigValueError(
        f"the longest prompt ({longest_prompt} tokens) + config.decode.max_new_tokens "
        f"({max_new_tokens}){draft} + 1 = {need} exceeds the target's max_position_embeddings "
        f"({target_cfg.max_position_embeddings}); lower one of them (prompts are cut to "
        "config.data.max_prompt_len)")


def run(config, workdir: str):
  if not config.target.path:
    raise ConfigValueError("config.target.path is empty: give a Hugging Face checkpoint directory")
  prompts = prompt_files.load_prompts(config.data.prompts, limit=config.data.limit or None)
  target = hf_checkpoint.load_model(config.target.path, dtype=config.target.dtype or None)
  tokenizer = hf_checkpoint.load_tokenizer(config.target.path)
  settings = settings_from_config(config)
  drafter = drafter_params = None
  if config.drafter.path:
    drafter, drafter_params = load_drafter(config.drafter.path, target.cfg, target.params())
  ids = prompt_files.encode_prompts(tokenizer, prompts, config.data.max_prompt_len,
                                    config.data.truncation)
  if drafter is None:
    check_context(target.cfg, max(map(len, ids)), settings.max_new_tokens)
  elif settings.tree is not None:
    check_context(target.cfg, max(map(len, ids)), settings.max_new_tokens, settings.tree.depth,
                  "the depth of config.decode.tree")
  else:
    check_context(target.cfg, max(map(len, ids)), settings.max_new_tokens, settings.window)
  run_files.record_config(workdir, config)
  logging.info("decoding %d prompts (drafter: %s, %s)", len(ids), config.drafter.path or "none",
               f"tree {settings.tree}" if settings.tree else f"window {settings.window}")

  def record(p, r):
    return {"id": p.id, "category": p.category, "output_token_ids": r.output_token_ids,
            "text": tokenizer.decode(r.output_token_ids, skip_special_tokens=True),
            "accept_lengths": r.accept_lengths, "seconds": r.seconds}

  # Each finished batch goes to decode.partial.jsonl at once; a rerun with the same settings and
  # prompts (Ctrl-C, a lost machine) decodes only the batches it lacks.
  batches = runner.batches_of(len(ids), settings.batch_size)
  log = run_files.BatchLog(os.path.join(workdir, PARTIAL), {
      "target": os.path.abspath(config.target.path), "dtype": config.target.dtype,
      "drafter": os.path.abspath(config.drafter.path) if config.drafter.path else None,
      "settings": repr(dataclasses.replace(settings, tree=str(settings.tree))),
      "prompts": run_files.fingerprint([[p.id for p in prompts], ids])})
  done = {}
  for entry in log.entries:
    done[entry["batch"]] = [runner.DecodeResult(
        r["output_token_ids"], r["accept_lengths"], r["seconds"], len(entry["records"]))
        for r in entry["records"]]
  if done:
    print(f"resuming: {len(done)} of {len(batches)} batches decoded before, from "
          f"{log.path}", flush=True)
  results = runner.decode(
      target.cfg, target.params(), ids, settings, drafter=drafter, drafter_params=drafter_params,
      done=done, on_batch=lambda bi, rs: log.append({"batch": bi, "records": [
          record(prompts[i], r) for i, r in zip(batches[bi], rs)]}))
  records = [record(p, r) for p, r in zip(prompts, results)]
  run_files.write_jsonl(os.path.join(workdir, "decode.jsonl"), records)
  summary = runner.summarize(results, [p.category for p in prompts])
  summary.update(window=settings.window if drafter is not None and not settings.tree else 0,
                 tree=str(settings.tree) if settings.tree else None,
                 temperature=settings.sp.temperature, drafter=config.drafter.path or None,
                 target=config.target.path)
  run_files.write_json(os.path.join(workdir, "summary.json"), summary)
  log.remove()
  print(f"{len(records)} prompts: tau={summary['mean_accept_length']:.3f} "
        f"tokens/s={summary['tokens_per_second']:.1f} -> {workdir}/summary.json")
  return summary
