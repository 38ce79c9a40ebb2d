"""Training prompts written by the instruct target itself (Magpie, Xu et al. 2024, arXiv 2406.08464).

An aligned chat model, given only its chat template's opening up to the start of a user turn
(the "pre-query template"), continues with a plausible user query and closes the turn with its
end-of-turn token. Sampling that continuation many times yields diverse prompts in the target's
own domain without any dataset download. Each sample is kept only if it ended its turn within
the token budget (runaway samples are dropped), is neither empty nor a fragment, carries no
template markers, is not a duplicate of an earlier one (normalised text), and shares no long
word n-gram with any evaluation prompt (so Spec-Bench / HumanEval / GSM8K never leak into
training data).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

from ppow_jax.data import prompts as prompt_files

SENTINEL = "\x00PPOW_USER_TURN\x00"


@dataclasses.dataclass(frozen=True)
class MagpieSettings:
  num_prompts: int = 2048  # kept prompts wanted
  max_tokens: int = 96  # a user turn longer than this is "runaway" and dropped
  temperature: float = 1.0  # Magpie samples instructions at temperature 1
  top_p: float = 1.0
  min_chars: int = 12
  batch_size: int = 32
  seed: int = 0
  max_rounds: int = 8  # sampling rounds of `num_prompts` candidates at most
  # Task openings: sample j's user turn starts with openings[j % len] and the target writes the
  # rest (Magpie's pre-query template plus a task cue), steering prompts towards task kinds an
  # unconditioned small model rarely asks for (summaries, translations, code). () = none.
  openings: tuple[str, ...] = ()


def pre_query_ids(tokenizer) -> list[int]:
  """Token ids of the chat template up to where a user's message begins.

  Rendered from the template itself (a one-message conversation with a sentinel as its content,
  cut at the sentinel), so any template with a default system prompt (SmolLM2's) keeps it.
  """
  if not getattr(tokenizer, "chat_template", None):
    raise ValueError("prompt synthesis needs a chat template; this tokenizer has none (give "
                     "data.prompts=FILE instead)")
  text = tokenizer.apply_chat_template([{"role": "user", "content": SENTINEL}], tokenize=False,
                                       add_generation_prompt=False)
  if SENTINEL not in text:
    raise ValueError("the chat template does not render the user's message verbatim; cannot "
                     "find where a user turn begins")
  prefix = text[:text.index(SENTINEL)]
  return list(tokenizer(prefix, add_special_tokens=False)["input_ids"])


def normalize(text: str) -> str:
  """Lower case, words only, single spaces: the key for duplicate and overlap checks."""
  return " ".join(re.findall(r"\w+", text.lower()))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
  words = normalize(text).split()
  return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class Decontaminator:
  """Rejects text equal to, or sharing an n-gram of `n` words with, any evaluation prompt."""

  def __init__(self, eval_texts: Iterable[str], n: int = 8):
    self.n = n
    self.exact: set[str] = set()
    self.grams: set[tuple[str, ...]] = set()
    for t in eval_texts:
      self.exact.add(normalize(t))
      self.grams |= ngrams(t, n)

  @classmethod
  def from_files(cls, paths: Sequence[str], n: int = 8) -> "Decontaminator":
    texts = [turn for path in paths for p in prompt_files.load_prompts(path) for turn in p.turns]
    return cls(texts, n)

  def __len__(self):
    return len(self.exact)

  def contaminated(self, text: str) -> bool:
    key = normalize(text)
    return key in self.exact or bool(ngrams(text, self.n) & self.grams)


@dataclasses.dataclass
class FilterStats:
  sampled: int = 0
  runaway: int = 0
  too_short: int = 0
  template_marker: int = 0
  duplicate: int = 0
  contaminated: int = 0
  kept: int = 0


def filter_samples(samples: Iterable[tuple[str, bool]], *, min_chars: int, seen: set[str],
                   decontaminator: Decontaminator | None, markers: Sequence[str],
                   stats: FilterStats) -> list[str]:
  """Keeps the (text, ended_turn) samples that pass every filter; updates `seen` and `stats`."""
  kept = []
  for text, ended in samples:
    stats.sampled += 1
    text = text.strip()
    if not ended:
      stats.runaway += 1
    elif len(text) < min_chars or len(normalize(text).split()) < 3:
      stats.too_short += 1
    elif any(m and m in text for m in markers):
      stats.template_marker += 1
    elif normalize(text) in seen:
      stats.duplicate += 1
    elif decontaminator is not None and decontaminator.contaminated(text):
      stats.contaminated += 1
    else:
      seen.add(normalize(text))
      kept.append(text)
      stats.kept += 1
  return kept


def synthesize(target_cfg, target_params, tokenizer, settings: MagpieSettings, *,
               decontaminator: Decontaminator | None = None, progress: bool = True
               ) -> tuple[list[str], FilterStats]:
  """Samples user turns from the target until `num_prompts` pass the filters (or max_rounds)."""
  from ppow_jax.decoding import continuous, sampling  # Deferred: jax-heavy.
  prefix = pre_query_ids(tokenizer)
  eot = set(target_cfg.eos_ids)
  if not eot:
    raise ValueError("prompt synthesis needs the target's end-of-turn id (eos_token_id)")
  markers = [t for t in (getattr(tokenizer, "all_special_tokens", None) or []) if len(t) > 1]
  openings = [list(tokenizer(o, add_special_tokens=False)["input_ids"])
              for o in settings.openings]
  stats, seen, kept = FilterStats(), set(), []
  for rnd in range(settings.max_rounds):
    want = settings.num_prompts - len(kept)
    if want <= 0:
      break
    # Oversample by the running keep rate so a round usually finishes the job.
    rate = stats.kept / stats.sampled if stats.sampled else 0.75  # SmolLM2: 0.79
    n = min(max(want, int(want / max(rate, 0.05) * 1.1)), 8 * settings.num_prompts)
    n = -(-n // settings.batch_size) * settings.batch_size
    ds = continuous.StreamSettings(
        max_new_tokens=settings.max_tokens, batch_size=settings.batch_size,
        seed=settings.seed * 1000 + rnd,
        sp=sampling.SamplingParams(temperature=settings.temperature, top_p=settings.top_p))
    heads = [openings[(stats.sampled + j) % len(openings)] if openings else []
             for j in range(n)]
    results = continuous.generate(target_cfg, target_params, [prefix + h for h in heads], ds,
                                  desc=f"prompt synthesis, round {rnd + 1}", progress=progress)
    samples = []
    for head, ids in zip(heads, results):
      ended = bool(ids) and ids[-1] in eot
      samples.append((tokenizer.decode(head + (ids[:-1] if ended else ids),
                                       skip_special_tokens=False), ended))
    kept += filter_samples(samples, min_chars=settings.min_chars, seen=seen,
                           decontaminator=decontaminator, markers=markers, stats=stats)
  return kept[:settings.num_prompts], stats
