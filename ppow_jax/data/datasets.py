"""tensorflow-datasets builders over local files: prompts and self-distillation sequences.

As in the Flax examples, training data is a tfds dataset read through `as_data_source()` (random
access over ArrayRecord files), here built from local files only: no download, no TensorFlow
(tfds writes and reads ArrayRecord without it).

  * `Prompts`: the prompts of local files in any format `prompts.load_prompts` reads
    (features id, category, text = first user turn).
  * `SelfDistillation`: the target's own answers, split `train` / `heldout` (features tokens =
    prompt + response token ids, prompt_len). The builder packs generation chunks written by
    `selfdistill.generate`; the generation settings are kept in the dataset's metadata so a
    reused directory can be checked against the config that reads it.
  * `ConversationData`: whole chat-templated conversations (`conversations`), split `train` /
    `heldout`, with a per-token loss mask (features tokens, prompt_len, loss_mask).
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from ppow_jax import run_files
from ppow_jax.data import prompts as prompt_files


class _QuietBuilder(tfds.core.GeneratorBasedBuilder):
  """A local builder: tfds' download banners and per-split progress bars say nothing useful
  for files already on disk, so preparation prints one line instead."""

  def _log_download_bytes(self):
    print(f"writing the {self.name} dataset to {self.data_dir}", flush=True)

  def _log_download_done(self):
    pass

  def download_and_prepare(self, *args, **kwargs):
    tfds.disable_progress_bar()
    try:
      return super().download_and_prepare(*args, **kwargs)
    finally:
      tfds.enable_progress_bar()


class _NoVariantNotice(logging.Filter):
  """Drops tfds' "Variant folder ... has no dataset_info.json" notice, which it logs for every
  dataset not prepared yet (the normal case on a first run, not a problem)."""

  def filter(self, record):
    return "has no dataset_info.json" not in record.getMessage()


logging.getLogger("absl").addFilter(_NoVariantNotice())


class Prompts(_QuietBuilder):
  """Prompts of local prompt files as one `train` split, in file order, without duplicates
  (normalised text) and without any prompt an evaluation file holds (`exclude`)."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, files: Sequence[str] = (), exclude: Sequence[str] = (), **kwargs):
    self._files = list(files)
    self._exclude = list(exclude)
    super().__init__(file_format="array_record", **kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description="Prompts read from local files by ppow_jax.data.prompts.",
        disable_shuffling=True,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(), "category": tfds.features.Text(),
            "text": tfds.features.Text()}),
        metadata=tfds.core.MetadataDict(files=[os.path.abspath(f) for f in self._files],
                                        exclude=[os.path.abspath(f) for f in self._exclude]))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    from ppow_jax.data import magpie  # the normaliser and n-gram check
    guard = magpie.Decontaminator.from_files(self._exclude) if self._exclude else None
    seen, n, dropped = set(), 0, {"duplicate": 0, "evaluation_overlap": 0}
    for path in self._files:
      for p in prompt_files.load_prompts(path):
        key = magpie.normalize(p.turns[0])
        if key in seen:
          dropped["duplicate"] += 1
          continue
        if guard is not None and guard.contaminated(p.turns[0]):
          dropped["evaluation_overlap"] += 1
          continue
        seen.add(key)
        yield n, {"id": p.id, "category": p.category, "text": p.turns[0]}
        n += 1
    self.info.metadata["dropped"] = dropped


class SelfDistillation(_QuietBuilder):
  """The target's answers to training / held-out prompts, as packed token sequences."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, chunks: dict[str, Callable[[], Sequence[str]]] | None = None,
               settings: dict | None = None, **kwargs):
    self._chunks = chunks or {}
    self._settings = settings or {}
    super().__init__(file_format="array_record", **kwargs)

  DESCRIPTION = "Self-distillation: the target model's own responses (ppow_jax)."

  def _features(self) -> dict:
    """An example's features: the token sequence and its prompt's length."""
    return {"tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "prompt_len": np.int32}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION, disable_shuffling=True,
        features=tfds.features.FeaturesDict(self._features()),
        metadata=tfds.core.MetadataDict(settings=self._settings))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(list_chunks())
            for split, list_chunks in self._chunks.items()}

  def _generate_examples(self, chunk_files):
    n = 0
    for path in chunk_files:
      for prompt_len, tokens in read_chunk(path):
        yield n, {"tokens": tokens, "prompt_len": prompt_len}
        n += 1


class ConversationData(SelfDistillation):
  """Chat-templated conversations as token sequences with a loss mask on the assistant turns."""

  VERSION = tfds.core.Version("1.0.0")
  DESCRIPTION = "Conversations through the target's chat template, loss on assistant turns."

  def _features(self) -> dict:
    return {**super()._features(),
            "loss_mask": tfds.features.Tensor(shape=(None,), dtype=np.bool_)}

  def _generate_examples(self, chunk_files):
    n = 0
    for path in chunk_files:
      for (prompt_len, tokens), mask in zip(read_chunk(path), read_masks(path)):
        yield n, {"tokens": tokens, "prompt_len": prompt_len, "loss_mask": mask}
        n += 1


def write_chunk(path: str, records: Sequence[tuple[int, np.ndarray]],
                masks: Sequence[np.ndarray] | None = None):
  """A generation chunk: (prompt_len, tokens) pairs (and per-token loss masks), written
  atomically."""
  lens = np.asarray([len(t) for _, t in records], np.int64)
  tokens = (np.concatenate([np.asarray(t, np.int32) for _, t in records]) if records
            else np.zeros((0,), np.int32))
  extra = {}
  if masks is not None:
    extra["loss_masks"] = (np.concatenate([np.asarray(m, bool) for m in masks]) if records
                           else np.zeros((0,), bool))
  with run_files.atomic_open(path, "wb") as f:
    np.savez(f, prompt_lens=np.asarray([p for p, _ in records], np.int32), lengths=lens,
             tokens=tokens, **extra)


def read_chunk(path: str) -> list[tuple[int, np.ndarray]]:
  with np.load(path) as z:
    ends = np.cumsum(z["lengths"])
    starts = ends - z["lengths"]
    tokens = z["tokens"]
    return [(int(p), tokens[s:e]) for p, s, e in zip(z["prompt_lens"], starts, ends)]


def read_masks(path: str) -> list[np.ndarray]:
  """The per-token loss masks of a chunk written with `masks`."""
  with np.load(path) as z:
    ends = np.cumsum(z["lengths"])
    masks = z["loss_masks"]
    return [masks[e - n:e] for n, e in zip(z["lengths"], ends)]


class Records:
  """Random-access view of a SelfDistillation split as packed arrays [prompt_len, tokens...]
  (the layout `selfdistill.SequenceData` and the evaluation prompts read)."""

  def __init__(self, source):
    self._source = source

  def __len__(self):
    return len(self._source)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    ex = self._source[int(i)]
    return np.concatenate([[np.int32(ex["prompt_len"])], np.asarray(ex["tokens"], np.int32)])

  def __iter__(self):
    return (self[i] for i in range(len(self)))


class MaskedRecords(Records):
  """Records of a ConversationData split, with each sequence's loss mask (`loss_mask(i)`)."""

  def loss_mask(self, i) -> np.ndarray:
    return np.asarray(self._source[int(i)]["loss_mask"], bool)


def warn_if_stale(builder, want: dict[str, dict], what: str, remedy: str):
  """Logs, for each split of `want` ({split: {field: value}}), the fields that the cached
  dataset of `builder` was made with other values of: it is reused as it is, so say so."""
  have = dict(builder.info.metadata.get("settings", {}))
  for name, fields in want.items():
    stale = {f: (have.get(name, {}).get(f), v) for f, v in fields.items()
             if f in have.get(name, {}) and have[name][f] != v}
    if stale:
      absl_logging.warning("%s: reusing cached %s %s split made with %s; this config asks for %s "
                           "(use another data.dir to %s)", builder.data_dir, what, name,
                           ", ".join(f"{f}={a!r}" for f, (a, _) in stale.items()),
                           ", ".join(f"{f}={b!r}" for f, (_, b) in stale.items()), remedy)
