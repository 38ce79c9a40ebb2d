"""Conversations as training sequences: whole chats through the target's chat template, loss on
the assistant's turns only.

A conversation (`prompts.Conversation`) becomes one token sequence exactly as the tokenizer's
`apply_chat_template` renders it (with the template's own default system prompt where it has
one); its loss mask is 1 on the tokens of each assistant turn, the end-of-turn token included,
and 0 on system and user turns and on the template's role headers. A sequence longer than
`seq_len` keeps its first whole exchanges (user turn + answer) that fit; a first exchange
longer than that is cut at `seq_len`.

The answers come from one of three sources (`data.answers`):
  * "given": the file's own answers (no generation: the target supplies features and labels).
  * "regenerate": the target answers every real user turn, turn by turn on its own earlier
    answers, with the continuous-batching engine; each round (turn) is written in chunks as it
    goes, so an interrupted run resumes at its last finished chunk.
  * "mix": a seeded `mix_ratio` share of the conversations regenerated, the rest as given.
The sequences are stored as the `datasets.ConversationData` tfds dataset, split train / heldout;
records read as `[prompt_len, tokens...]` (prompt_len = the first assistant token) with a
per-token loss mask beside them.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Callable, Sequence

import numpy as np

from ppow_jax import run_files
from ppow_jax.data import datasets
from ppow_jax.data.prompts import Conversation, PromptFileError, _as_id_list

ANSWERS = ("given", "regenerate", "mix")
CHUNK = 512  # conversations per generation chunk (the unit of resumption)


@dataclasses.dataclass(frozen=True)
class Encoded:
  """A chat-templated conversation: token ids, loss mask, and the token count after each whole
  exchange (user turn + assistant answer, template closing tokens included)."""
  ids: np.ndarray  # int32 [T]
  loss_mask: np.ndarray  # bool [T]
  exchange_ends: tuple[int, ...]


def _render(tokenizer, messages, add_generation_prompt: bool) -> str:
  return tokenizer.apply_chat_template(messages, tokenize=False,
                                       add_generation_prompt=add_generation_prompt)


def encode_conversation(tokenizer, messages: Sequence[dict], *,
                        add_generation_prompt: bool = False) -> Encoded:
  """Tokenizes `messages` as `apply_chat_template` does, marking the assistant turns for loss.

  An assistant turn spans from the end of the template's generation prompt before it to the end
  of its closing (the end-of-turn token; trailing whitespace such as ChatML's newline is not
  part of it). Needs a chat template that renders a conversation's prefix as a prefix of it,
  and a fast tokenizer (character offsets).
  """
  if not getattr(tokenizer, "chat_template", None):
    raise PromptFileError("the target's tokenizer has no chat template: conversations need one "
                          "(use data.prompts for plain prompts)")
  messages = list(messages)
  text = _render(tokenizer, messages, add_generation_prompt)
  spans, ends = [], []
  for i, m in enumerate(messages):
    if m["role"] != "assistant":
      continue
    before = _render(tokenizer, messages[:i], True)
    upto = _render(tokenizer, messages[:i + 1], False)
    if not (upto.startswith(before) and text.startswith(upto)):
      raise PromptFileError("the target's chat template does not render a conversation's "
                            "beginning as the beginning of the whole conversation; cannot mark "
                            "its assistant turns")
    spans.append((len(before), len(upto.rstrip())))
    ends.append(len(upto))
  enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
  starts = np.asarray([a for a, _ in enc["offset_mapping"]], np.int64)
  mask = np.zeros(len(starts), bool)
  for a, b in spans:
    mask |= (starts >= a) & (starts < b)
  return Encoded(np.asarray(_as_id_list(enc["input_ids"]), np.int32), mask,
                 tuple(int(np.searchsorted(starts, e)) for e in ends))


def truncate(enc: Encoded, seq_len: int) -> tuple[np.ndarray, np.ndarray] | None:
  """(ids, loss_mask) at most `seq_len` long: the whole exchanges that fit, else the first one
  cut at `seq_len`; None if no assistant token would be left."""
  n = len(enc.ids)
  if n > seq_len:
    fit = [e for e in enc.exchange_ends if e <= seq_len]
    n = fit[-1] if fit else seq_len
  ids, mask = enc.ids[:n], enc.loss_mask[:n]
  return (ids, mask) if mask[1:].any() else None


@dataclasses.dataclass
class BuildStats:
  conversations: int = 0
  sequences: int = 0
  too_long: int = 0  # the first user turn leaves no room for an answer within seq_len
  regenerated: int = 0
  loss_tokens: int = 0


def given_sequences(tokenizer, convs: Sequence[Conversation], seq_len: int,
                    stats: BuildStats | None = None) -> list[tuple[np.ndarray, np.ndarray] | None]:
  """Each conversation with its own answers as (ids, loss_mask), or None if it does not fit."""
  out = []
  for c in convs:
    msgs = c.as_messages()
    while msgs and msgs[-1]["role"] != "assistant":  # a trailing question has no answer
      msgs.pop()
    out.append(truncate(encode_conversation(tokenizer, msgs), seq_len))
    if stats is not None and out[-1] is None:
      stats.too_long += 1
  return out


def _round_files(out_dir: str, split: str, r: int) -> str:
  return os.path.join(out_dir, f"{split}-r{r:02d}-*.npz")


def _write_outputs(path: str, index: Sequence[int], outs: Sequence[Sequence[int]]):
  with run_files.atomic_open(path, "wb") as f:
    np.savez(f, index=np.asarray(index, np.int64),
             lengths=np.asarray([len(o) for o in outs], np.int64),
             tokens=np.concatenate([np.asarray(o, np.int32) for o in outs]) if outs
             else np.zeros((0,), np.int32))


def _read_outputs(path: str) -> dict[int, np.ndarray]:
  with np.load(path) as z:
    ends = np.cumsum(z["lengths"])
    return {int(i): z["tokens"][e - n:e] for i, n, e in zip(z["index"], z["lengths"], ends)}


def regenerated_sequences(target_cfg, target_params, tokenizer, convs: Sequence[Conversation], *,
                          out_dir: str, split: str, seq_len: int, max_new_tokens: int,
                          temperature: float, top_p: float, seed: int, batch_size: int,
                          progress: bool = True, stats: BuildStats | None = None
                          ) -> list[tuple[np.ndarray, np.ndarray] | None]:
  """Each conversation answered by the target, turn by turn on its own earlier answers.

  Round r answers user turn r of every conversation whose round r-1 answer ended with an
  end-of-sequence token and whose history plus that turn leaves room within `seq_len`; its
  outputs are written to `out_dir` in chunks (resumed when present). The sequence is the last
  round's prompt (earlier answers re-rendered through the template) plus its answer as sampled.
  """
  from ppow_jax.decoding import continuous, sampling  # Deferred: jax-heavy.
  os.makedirs(out_dir, exist_ok=True)
  eos = set(target_cfg.eos_ids or ())
  heads = [[m for m in c.as_messages() if m["role"] == "system"] for c in convs]
  users = [c.user_turns for c in convs]
  answers: list[list[str]] = [[] for _ in convs]
  last: dict[int, tuple[Encoded, np.ndarray]] = {}
  live = list(range(len(convs)))
  for r in range(max(len(u) for u in users)):
    prompts = {}
    for i in live:
      if r >= len(users[i]):
        continue
      msgs = list(heads[i])
      for q, a in zip(users[i][:r], answers[i]):
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
      msgs.append({"role": "user", "content": users[i][r]})
      enc = encode_conversation(tokenizer, msgs, add_generation_prompt=True)
      if len(enc.ids) < seq_len:
        prompts[i] = enc
      elif r == 0 and stats is not None:
        stats.too_long += 1
    if not prompts:
      break
    index = sorted(prompts)
    settings = continuous.StreamSettings(
        max_new_tokens=max_new_tokens, batch_size=batch_size,
        sp=sampling.SamplingParams(temperature=temperature, top_p=top_p),
        prompt_bucket=continuous.bucket(max(len(prompts[i].ids) for i in index), 64))
    n_chunks = -(-len(index) // CHUNK)
    outs: dict[int, np.ndarray] = {}
    for c in range(n_chunks):
      path = os.path.join(out_dir, f"{split}-r{r:02d}-{c:05d}.npz")
      chunk = index[c * CHUNK:(c + 1) * CHUNK]
      if not os.path.exists(path):
        got = continuous.generate(
            target_cfg, target_params, [prompts[i].ids.tolist() for i in chunk],
            dataclasses.replace(settings, seed=(seed * 100003 + c) * 101 + r),
            desc=f"regenerate {split} turn {r + 1} {c + 1}/{n_chunks}", progress=progress)
        _write_outputs(path, chunk, got)
      outs.update(_read_outputs(path))
    live = []
    for i in index:
      out = outs[i]
      last[i] = (prompts[i], out)
      if len(out) and int(out[-1]) in eos:
        answers[i].append(tokenizer.decode(out.tolist(), skip_special_tokens=True))
        live.append(i)
  result = []
  for i in range(len(convs)):
    if i not in last:
      result.append(None)
      continue
    enc, out = last[i]
    ids = np.concatenate([enc.ids, out]).astype(np.int32)
    mask = np.concatenate([enc.loss_mask, np.ones(len(out), bool)])
    result.append(truncate(Encoded(ids, mask, (*enc.exchange_ends, len(ids))), seq_len))
    if stats is not None and result[-1] is not None:
      stats.regenerated += 1
  return result


def regenerate_mask(n: int, answers: str, mix_ratio: float, seed: int) -> np.ndarray:
  """Which of `n` conversations the target answers: none, all, or a seeded share."""
  if answers not in ANSWERS:
    raise ValueError(f"unknown answers {answers!r}; expected one of {ANSWERS}")
  if answers == "given":
    return np.zeros(n, bool)
  if answers == "regenerate":
    return np.ones(n, bool)
  return np.random.default_rng([seed, 25]).random(n) < mix_ratio


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  """One split: its conversations and where their answers come from."""
  conversations: Sequence[Conversation]
  answers: str
  mix_ratio: float
  seed: int

  def settings(self) -> dict:
    return {"num_conversations": len(self.conversations), "answers": self.answers,
            "mix_ratio": float(self.mix_ratio), "seed": self.seed}


def build_split(target_cfg, target_params, tokenizer, spec: SplitSpec, data_dir: str, split: str,
                *, seq_len: int, max_new_tokens: int, temperature: float, top_p: float = 1.0,
                batch_size: int = 64, progress: bool = True) -> BuildStats:
  """Writes the split's sequences as a chunk file (data_dir/conversations/{split}-00000.npz)."""
  convs = list(spec.conversations)
  stats = BuildStats(conversations=len(convs))
  regen = regenerate_mask(len(convs), spec.answers, spec.mix_ratio, spec.seed)
  seqs: list = [None] * len(convs)
  given_idx = [i for i in range(len(convs)) if not regen[i]]
  for i, s in zip(given_idx, given_sequences(tokenizer, [convs[i] for i in given_idx], seq_len,
                                             stats)):
    seqs[i] = s
  regen_idx = [i for i in range(len(convs)) if regen[i]]
  if regen_idx:
    got = regenerated_sequences(
        target_cfg, target_params, tokenizer, [convs[i] for i in regen_idx],
        out_dir=os.path.join(data_dir, "regeneration"), split=split, seq_len=seq_len,
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=spec.seed,
        batch_size=batch_size, progress=progress, stats=stats)
    for i, s in zip(regen_idx, got):
      seqs[i] = s
  kept = [s for s in seqs if s is not None]
  stats.sequences = len(kept)
  stats.loss_tokens = int(sum(m.sum() for _, m in kept))
  gen = os.path.join(data_dir, "conversations")
  os.makedirs(gen, exist_ok=True)
  datasets.write_chunk(os.path.join(gen, f"{split}-00000.npz"),
                       [(int(np.argmax(m)), ids) for ids, m in kept], masks=[m for _, m in kept])
  return stats


def prepare(target_cfg, target_params, tokenizer, data_dir: str,
            specs: dict[str, SplitSpec] | Callable[[], dict[str, SplitSpec]], *,
            seq_len: int, max_new_tokens: int, temperature: float, batch_size: int,
            source: dict[str, dict] | None = None, progress: bool = True
            ) -> dict[str, datasets.Records]:
  """The splits of the conversation dataset in `data_dir`, built on first use (a dataset
  already there is reused, with a warning naming the fields when `specs` ask for another).

  `specs` may be a function that makes them, called only when the dataset is built: reading a
  large conversation file costs seconds that a cached dataset does not need. `source`
  ({split: {field: value}}, e.g. the file and how many conversations) is stored with each split
  and is what a cached dataset is checked against when `specs` are not made.
  """
  source = source or {}
  if callable(specs) and not source:
    raise ValueError("prepare: made-on-demand specs need `source`, which names the splits")
  names = list(specs) if isinstance(specs, dict) else list(source)
  builder = datasets.ConversationData(data_dir=data_dir)
  if not builder.is_prepared():
    specs = specs() if callable(specs) else specs
    settings = {}
    for name, spec in specs.items():
      st = build_split(target_cfg, target_params, tokenizer, spec, data_dir, name,
                       seq_len=seq_len, max_new_tokens=max_new_tokens, temperature=temperature,
                       batch_size=batch_size, progress=progress)
      if not st.sequences:
        raise PromptFileError(f"no {name} conversation fits data.seq_len={seq_len} (each first "
                              "user turn leaves no room for an answer)")
      print(f"conversations {name}: {st.sequences} sequences of {st.conversations} "
            f"conversations ({st.regenerated} answered by the target, {st.too_long} too long "
            f"for seq_len {seq_len}), {st.loss_tokens} assistant tokens", flush=True)
      settings[name] = {**source.get(name, {}), **spec.settings(), "seq_len": seq_len,
                        "num_sequences": st.sequences, "num_loss_tokens": st.loss_tokens}
    chunks = {name: (lambda name=name: sorted(glob.glob(
        os.path.join(data_dir, "conversations", f"{name}-*.npz")))) for name in specs}
    datasets.ConversationData(data_dir=data_dir, chunks=chunks,
                              settings=settings).download_and_prepare()
    builder = datasets.ConversationData(data_dir=data_dir)
  made = specs if isinstance(specs, dict) else {}  # not made for a cached dataset
  want = {name: {**source.get(name, {}), "seq_len": seq_len,
                 **(made[name].settings() if name in made else {})} for name in names}
  datasets.warn_if_stale(builder, want, "conversation", "rebuild")
  splits = builder.as_data_source()
  return {name: datasets.MaskedRecords(splits[name]) for name in names}
