"""Prompt files for the toy pipeline, cut from the toy target's own training / held-out text."""

from __future__ import annotations

import random

from ppow_jax import run_files


def write_prompt_file(path: str, docs, *, num_prompts: int, prompt_chars: int, seed: int,
                      category: str):
  """`{"id","category","prompt"}` lines: a random line-aligned window of `prompt_chars` of a doc."""
  rng = random.Random(seed)
  docs = [d for d in docs if len(d) > 2 * prompt_chars]
  if not docs:
    raise ValueError(f"no document longer than {2 * prompt_chars} characters to cut prompts from")
  records = []
  for i in range(num_prompts):
    doc = docs[rng.randrange(len(docs))]
    start = doc.rfind("\n", 0, rng.randrange(len(doc) - prompt_chars)) + 1
    records.append({"id": f"{category}/{i}", "category": category,
                    "prompt": doc[start:start + prompt_chars]})
  run_files.write_jsonl(path, records)
  return path
