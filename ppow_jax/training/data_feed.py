"""The training data of a drafter run: prompts (files, Magpie synthesis) or conversations
answered by the target once and cached (self-distillation), split into train and held-out
records; and, with data.features=cached, the target's features fed with each batch.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from ppow_jax import run_files
from ppow_jax.data import conversations, datasets, features, magpie
from ppow_jax.data import prompts as prompt_files
from ppow_jax.data import selfdistill
from ppow_jax.models import registry
from ppow_jax.training.startup import Target
from ppow_jax.user_errors import ConfigValueError


def data_dir(config, workdir: str) -> str:
  """Where the run's data is cached: data.dir, else WORKDIR/data."""
  return config.data.dir or os.path.join(workdir, "data")


def data_seed(config) -> int:
  """The seed the prompts and answers are sampled with: data.seed, or the run's seed if < 0."""
  seed = config.data.get("seed", -1)
  return config.seed if seed is None or seed < 0 else int(seed)


def split_paths(value) -> list[str]:
  """The paths of a comma-separated config field, stripped, blanks dropped."""
  return [x.strip() for x in str(value or "").split(",") if x.strip()]


def training_prompts(config, target: Target, out: str) -> list[prompt_files.Prompt]:
  """The prompts the target answers: `data.prompts` files plus, with `data.synthesize` > 0,
  prompts the target writes itself (Magpie, cached in out/synthesized_prompts.jsonl); read
  through the `datasets.Prompts` tfds dataset, which drops duplicates and any prompt sharing an
  8-word n-gram with an evaluation file of `data.exclude`."""
  d = config.data
  files, exclude = split_paths(d.prompts), split_paths(d.get("exclude", ""))
  if d.get("synthesize", 0):
    synth = os.path.join(out, "synthesized_prompts.jsonl")
    if not os.path.exists(synth):
      s = d.synthesis
      settings = magpie.MagpieSettings(
          num_prompts=d.synthesize, max_tokens=s.max_tokens, temperature=s.temperature,
          top_p=s.top_p, min_chars=s.min_chars, batch_size=d.gen_batch_size,
          seed=data_seed(config), openings=tuple(s.get("openings", ())))
      guard = magpie.Decontaminator.from_files(exclude) if exclude else None
      texts, stats = magpie.synthesize(target.cfg, target.params(), target.tokenizer, settings,
                                       decontaminator=guard)
      print(f"prompt synthesis: kept {stats.kept} of {stats.sampled} samples (runaway "
            f"{stats.runaway}, short {stats.too_short}, duplicate {stats.duplicate}, "
            f"evaluation overlap {stats.contaminated})")
      run_files.write_jsonl(synth, [{"id": f"synth/{i}", "category": "synthesized", "prompt": t}
                                    for i, t in enumerate(texts)])
    files.append(synth)
  builder = datasets.Prompts(files=files, exclude=exclude, data_dir=out)
  if builder.is_prepared():
    have = builder.info.metadata
    want = {"files": [os.path.abspath(f) for f in files],
            "exclude": [os.path.abspath(f) for f in exclude]}
    stale = [k for k in want if list(have.get(k, [])) != want[k]]
    if stale:
      logging.warning("%s: reusing cached prompts made from %s; this config asks for %s (use "
                      "another data.dir to rebuild)", builder.data_dir,
                      {k: have.get(k) for k in stale}, {k: want[k] for k in stale})
  else:
    builder.download_and_prepare()
  src = builder.as_data_source()["train"]
  return [prompt_files.Prompt(str(r["id"]), str(r["category"]), (str(r["text"]),))
          for r in (src[i] for i in range(len(src)))]


def conversation_files(config) -> list[str]:
  """The files of `data.conversations`; registry names (e.g. "sharegpt") are fetched first."""
  return [registry.fetch_data(registry.KNOWN_DATA[f]) if f in registry.KNOWN_DATA else f
          for f in split_paths(config.data.get("conversations", ""))]


def training_conversations(config) -> list[prompt_files.Conversation]:
  """The first `data.num_samples` conversations of `data.conversations`, without duplicates
  (normalised first user turn) and without any whose user turns share an 8-word n-gram with an
  evaluation file of `data.exclude`."""
  d = config.data
  exclude = split_paths(d.get("exclude", ""))
  guard = magpie.Decontaminator.from_files(exclude) if exclude else None
  out, seen, dup, overlap = [], set(), 0, 0
  for path in conversation_files(config):
    convs, stats = prompt_files.load_conversations(path)
    for c in convs:
      if d.num_samples and len(out) >= d.num_samples:
        break
      key = magpie.normalize(c.user_turns[0])
      if key in seen:
        dup += 1
      elif guard is not None and any(guard.contaminated(u) for u in c.user_turns):
        overlap += 1
      else:
        seen.add(key)
        out.append(c)
    print(f"conversations from {path}: {stats.kept} of {stats.records} records have a user and "
          f"an assistant turn; using {len(out)} (duplicate {dup}, evaluation overlap {overlap})",
          flush=True)
  return out


def _prepare_conversations(config, target: Target, out: str):
  """Train / held-out records of `data.conversations` (conversations.prepare); the
  conversation file is read only when the dataset is not cached yet."""
  d = config.data
  seed = data_seed(config)
  answers = {"train": (d.get("answers", "regenerate"), d.get("mix_ratio", 0.5), seed),
             # Held-out conversations give evaluation prompts (their first user turn) only:
             # their own answers are kept, nothing is generated for them.
             "heldout": ("given", 0.0, seed + 7919)}

  def specs():
    convs = training_conversations(config)
    if len(convs) <= d.num_heldout:
      raise ConfigValueError(f"config.data.conversations: {len(convs)} usable conversations, "
                             f"not more than config.data.num_heldout={d.num_heldout}")
    n = len(convs) - d.num_heldout
    return {name: conversations.SplitSpec(part, *answers[name])
            for name, part in (("train", convs[:n]), ("heldout", convs[n:]))}

  # What a cached dataset is checked against without reading the file again.
  source = {name: {"conversations": d.conversations, "exclude": d.get("exclude", ""),
                   "num_samples": d.num_samples, "num_heldout": d.num_heldout, "answers": a,
                   "mix_ratio": float(r), "seed": s} for name, (a, r, s) in answers.items()}
  records = conversations.prepare(target.cfg, target.params(), target.tokenizer, out, specs,
                                  seq_len=d.seq_len, max_new_tokens=d.max_new_tokens,
                                  temperature=d.temperature, batch_size=d.gen_batch_size,
                                  source=source)
  return records["train"], records["heldout"]


def prepare_data(config, target: Target, workdir: str):
  """Generates (once, cached) and reads the train / held-out self-distillation records.

  With prompt files (`data.prompts`) or prompt synthesis (`data.synthesize`) the target answers
  those prompts (the last `data.num_heldout` are held out); without, a base LM samples
  `data.num_samples` sequences from BOS. With `data.conversations` the records are whole
  conversations (data/conversations.py) with their given or regenerated answers.
  """
  d = config.data
  out = data_dir(config, workdir)
  os.makedirs(out, exist_ok=True)
  if d.get("conversations"):
    return _prepare_conversations(config, target, out)
  if d.prompts or d.get("synthesize", 0):
    prompts = training_prompts(config, target, out)[:d.num_samples or None]
    ids = prompt_files.encode_prompts(target.tokenizer, prompts, d.max_prompt_len)
  else:
    bos = target.cfg.bos_token_id
    if bos is None:
      raise ConfigValueError("config.data.prompts is empty and the target has no bos_token_id to "
                             "sample from: give a prompt file")
    ids = [[bos]] * d.num_samples
  if len(ids) <= d.num_heldout:
    raise ConfigValueError(f"config.data.prompts: {len(ids)} prompts, not more than "
                           f"config.data.num_heldout={d.num_heldout} (the rest is the training "
                           "data)")
  # Held-out sequences use their own temperature (default 1): sampled at a low data temperature
  # they would mostly repeat training openings and flatter the drafter.
  specs = {
      "train": selfdistill.SplitSpec(ids[:len(ids) - d.num_heldout], d.max_new_tokens,
                                     d.temperature, data_seed(config)),
      "heldout": selfdistill.SplitSpec(ids[len(ids) - d.num_heldout:], d.max_new_tokens,
                                       d.get("heldout_temperature", d.temperature),
                                       data_seed(config) + 7919)}
  records = selfdistill.prepare(target.cfg, target.params(), out, specs,
                                batch_size=d.gen_batch_size)
  return records["train"], records["heldout"]


def with_cached_features(config, target: Target, workdir: str, train_records, data, dcfg):
  """get_batch for data.features=cached: builds the target's feature cache of the training
  records once (`data.features`), then adds each batch's rows of it as `features`."""
  path = features.cache_path(data_dir(config, workdir), "train", dcfg.aux_layers,
                             config.data.seq_len)
  features.build(target.cfg, target.params(), train_records, path, aux_layers=dcfg.aux_layers,
                 seq_len=config.data.seq_len, batch_size=config.data.get("feature_batch_size", 8))
  cache = features.load(path)
  if cache.shape[0] != len(train_records):
    raise ValueError(f"{path}: holds {cache.shape[0]} sequences, the training data "
                     f"{len(train_records)}; delete it to rebuild")

  def get_batch(step):
    batch = data.batch(step)
    rows = data.rows(step)
    order = np.argsort(rows)  # memory-mapped reads in file order
    got = np.empty((len(rows), *cache.shape[1:]), cache.dtype)
    got[order] = cache[np.asarray(rows)[order]]
    batch["features"] = got
    return batch

  return get_batch
