"""The toy target: a small LLaMA LM trained locally on Python source, with no download.

Stage 1 of the toy pipeline (`configs/default.py:toy`), for quick offline runs and tests. It
trains a byte-level BPE tokenizer and a tiny LLaMA on the interpreter's standard library
(`corpus.stdlib_corpus`) within a few CPU minutes, and writes a Hugging Face directory
(`config.json`, `model.safetensors`, `tokenizer.json`, ...) that both ppow_jax and transformers
read. The directory is built under a temporary name and renamed into place once complete, and
its `DONE` file (a JSON summary) is written last, so `ensure_target` skips finished work and a
killed run never leaves a half target.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import NamedTuple, Sequence

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ppow_jax import run_files
from ppow_jax.models import hf_checkpoint, transformer
from ppow_jax.models.config import ModelConfig
from ppow_jax.toy_target import corpus
from ppow_jax.progress import Progress

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD_ID = UNK_ID  # Byte-level BPE never emits <unk>, so it doubles as padding (masked in the loss).
DONE_FILE = "DONE"
METRICS_FILE = "metrics.jsonl"


@dataclasses.dataclass(frozen=True)
class TargetLMSettings:
  """Everything that determines the target LM; defaults fit ~3-4 minutes on 2 CPU cores."""

  # Corpus.
  corpus_bytes: int = 3_000_000
  corpus_seed: int = 0
  holdout_fraction: float = 0.05
  # Tokenizer and architecture.
  vocab_size: int = 2048
  hidden_size: int = 128
  intermediate_size: int = 384
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 2
  max_position_embeddings: int = 256  # = seq_len: positions the model was trained on.
  # Optimisation.
  seq_len: int = 256  # Longest training sequence (rows are seq_len + 1 tokens).
  batch_size: int = 4  # Rows of seq_len per step.
  # Fraction of the steps trained on each row cut in two halves (2*batch_size rows of seq_len/2):
  # as many tokens per step, ~30% faster on CPU; the rest teaches positions up to seq_len.
  short_seq_fraction: float = 0.75
  # A step budget, so the target (and every figure after it) is the same on an idle and on a
  # busy machine: 1500 steps are what 2 idle cores reached in the former 3-minute budget.
  # time_budget_s > 0 also stops when the training loop has used that much wall-clock, with the
  # cosine schedule fitted to whichever comes first; the result then depends on machine load.
  steps: int = 1500
  time_budget_s: float = 0.0
  learning_rate: float = 3e-3
  min_lr_ratio: float = 0.1
  warmup_steps: int = 50
  weight_decay: float = 0.1
  grad_clip: float = 1.0
  b1: float = 0.9
  b2: float = 0.95
  seed: int = 0
  # Logging and evaluation.
  log_every: int = 10
  eval_rows: int = 192  # Held-out rows (and as many sampled train rows) for the final losses.
  sample_prompts: tuple[str, ...] = ("def ", "import os\n", "class ")
  sample_tokens: int = 48

  def __post_init__(self):
    for name in ("corpus_bytes", "vocab_size", "hidden_size", "intermediate_size", "num_layers",
                 "num_heads", "num_kv_heads", "seq_len", "batch_size", "steps", "log_every",
                 "eval_rows"):
      if getattr(self, name) <= 0:
        raise ValueError(f"TargetLMSettings.{name} must be positive, got {getattr(self, name)}")
    for name in ("time_budget_s", "learning_rate", "warmup_steps", "weight_decay", "grad_clip"):
      if not getattr(self, name) >= 0:
        raise ValueError(f"TargetLMSettings.{name} must be >= 0, got {getattr(self, name)}")
    if not 0.0 < self.holdout_fraction < 1.0:
      raise ValueError(f"TargetLMSettings.holdout_fraction={self.holdout_fraction} is outside "
                       "(0, 1)")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"TargetLMSettings.hidden_size={self.hidden_size} is not a multiple of "
                       f"num_heads={self.num_heads}")
    if self.vocab_size < 260:
      raise ValueError(f"TargetLMSettings.vocab_size={self.vocab_size} is below 260: a byte-level "
                       "BPE needs 256 byte tokens + 3 specials")
    if not 0.0 <= self.short_seq_fraction <= 1.0:
      raise ValueError(f"TargetLMSettings.short_seq_fraction={self.short_seq_fraction} is "
                       "outside [0, 1]")
    if self.short_seq_fraction > 0 and self.seq_len % 2:
      raise ValueError(f"TargetLMSettings.seq_len={self.seq_len} must be even when "
                       f"short_seq_fraction={self.short_seq_fraction} > 0 (rows are halved)")
    if self.seq_len > self.max_position_embeddings:
      raise ValueError(f"TargetLMSettings.seq_len={self.seq_len} exceeds max_position_embeddings="
                       f"{self.max_position_embeddings}")

  def model_config(self) -> ModelConfig:
    return ModelConfig(
        model_type="llama", vocab_size=self.vocab_size, hidden_size=self.hidden_size,
        intermediate_size=self.intermediate_size, num_layers=self.num_layers,
        num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
        head_dim=self.hidden_size // self.num_heads, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=True, max_position_embeddings=self.max_position_embeddings,
        dtype="float32", bos_token_id=BOS_ID, eos_token_id=EOS_ID)


class TrainedTarget(NamedTuple):
  path: str
  summary: dict
  params: dict | None  # The trained weights; None when `ensure_target` found the stage done.


# --- Tokenizer -----------------------------------------------------------------------------------


def train_tokenizer(docs: Sequence[str], vocab_size: int, out_dir: str, *,
                    model_max_length: int = 1 << 20):
  """Trains a byte-level BPE on `docs` and saves it in `out_dir` for `AutoTokenizer`.

  Ids 0/1/2 are `<unk>`/`<s>`/`</s>` as in LLaMA; encoding prepends `<s>` and decoding with
  `skip_special_tokens=True` restores the text exactly (byte-level, no normalisation, no
  clean-up of spaces). Returns the `tokenizers.Tokenizer`.
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  if vocab_size < 260:
    raise ValueError(f"vocab_size={vocab_size} is below 260 (256 bytes + 3 special tokens)")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, min_frequency=2, show_progress=False,
      special_tokens=[UNK, BOS, EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(docs, trainer)
  if tok.token_to_id(BOS) != BOS_ID or tok.token_to_id(EOS) != EOS_ID:
    raise RuntimeError(f"special token ids came out as {BOS}={tok.token_to_id(BOS)}, "
                       f"{EOS}={tok.token_to_id(EOS)}; expected {BOS_ID}, {EOS_ID}")
  tok.post_processor = processors.TemplateProcessing(
      single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)])
  os.makedirs(out_dir, exist_ok=True)
  tok.save(os.path.join(out_dir, "tokenizer.json"))
  specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK}
  run_files.write_json(os.path.join(out_dir, "tokenizer_config.json"), {
      "tokenizer_class": "PreTrainedTokenizerFast", **specials, "add_bos_token": True,
      "add_eos_token": False, "clean_up_tokenization_spaces": False,
      "model_max_length": model_max_length})
  run_files.write_json(os.path.join(out_dir, "special_tokens_map.json"), specials)
  return tok


def check_tokenizer_roundtrip(path: str, text: str = "import os\n\ndef f(x):\n    return x  + 1\n"):
  """Loads `path` with `AutoTokenizer` and checks it adds `<s>` and decodes back to `text`."""
  tok = hf_checkpoint.load_tokenizer(path)
  ids = tok(text)["input_ids"]
  if not ids or ids[0] != BOS_ID:
    raise RuntimeError(f"{path}: AutoTokenizer did not prepend {BOS} (id {BOS_ID}): {ids[:8]}")
  back = tok.decode(ids, skip_special_tokens=True)
  if back != text:
    raise RuntimeError(f"{path}: AutoTokenizer round trip changed {text!r} into {back!r}")


# --- Data ----------------------------------------------------------------------------------------


def pack_sequences(token_lists: Sequence[Sequence[int]], seq_len: int, *, bos_id: int = BOS_ID,
                   eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> np.ndarray:
  """Packs documents as `<s> doc </s>` back to back into int32 rows [N, seq_len].

  The stream is cut every `seq_len` tokens (long documents continue on the next row); the last
  row is filled with `pad_id`. The loss masks targets equal to `pad_id`.
  """
  if seq_len < 2:
    raise ValueError(f"seq_len must be at least 2, got {seq_len}")
  pieces = []
  for ids in token_lists:
    pieces.append(np.asarray([bos_id, *ids, eos_id], np.int32))
  if not pieces:
    raise ValueError("pack_sequences got no documents")
  stream = np.concatenate(pieces)
  rows = -(-len(stream) // seq_len)
  out = np.full(rows * seq_len, pad_id, np.int32)
  out[:len(stream)] = stream
  return out.reshape(rows, seq_len)


def split_rows(batch: np.ndarray) -> np.ndarray:
  """[B, T+1] rows -> [2B, T/2+1] half rows covering the same next-token targets.

  Row r = tokens[0:T+1] becomes tokens[0:T/2+1] and tokens[T/2:T+1]: shorter sequences train
  faster per token on CPU (attention and activations fit in cache).
  """
  b, t1 = batch.shape
  half = (t1 - 1) // 2
  if (t1 - 1) % 2:
    raise ValueError(f"split_rows needs an even sequence length, got rows of {t1} = T+1 tokens")
  return np.stack([batch[:, :half + 1], batch[:, half:]], axis=1).reshape(2 * b, half + 1)


class _BatchSampler:
  """Epochs of shuffled rows, `batch_size` at a time (wrapping and repeating on tiny data)."""

  def __init__(self, rows: np.ndarray, batch_size: int, seed: int):
    self.rows, self.batch_size = rows, batch_size
    self.rng = np.random.default_rng(seed)
    self.order, self.pos = self.rng.permutation(len(rows)), 0

  def next(self) -> np.ndarray:
    idx = []
    while len(idx) < self.batch_size:
      if self.pos == len(self.order):
        self.order, self.pos = self.rng.permutation(len(self.rows)), 0
      take = min(self.batch_size - len(idx), len(self.order) - self.pos)
      idx.extend(self.order[self.pos:self.pos + take])
      self.pos += take
    return self.rows[np.asarray(idx)]


def tokenize_documents(tok, docs: Sequence[str]) -> list[list[int]]:
  """Token ids of each document, without the `<s>` the post-processor adds."""
  return [e.ids for e in tok.encode_batch(list(docs), add_special_tokens=False)]


# --- Training ------------------------------------------------------------------------------------


def lm_loss(cfg: ModelConfig, params: dict, tokens: jax.Array, pad_id: int = PAD_ID):
  """Mean next-token cross-entropy over non-pad targets; returns (loss, number of targets)."""
  logits = transformer.forward(cfg, params, tokens[:, :-1]).logits
  targets = tokens[:, 1:]
  mask = (targets != pad_id).astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  count = mask.sum()
  return (nll * mask).sum() / jnp.maximum(count, 1.0), count


def make_optimizer(s: TargetLMSettings) -> optax.GradientTransformation:
  """AdamW direction (gradient clipping, Adam, decoupled weight decay) without the -lr scale.

  The learning rate is applied in the train step from a traced scalar, so a wall-clock budget
  can set the schedule's length after measuring the step time without recompiling.
  """
  def decay_mask(params):  # No decay on norm gains.
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not str(getattr(path[-1], "key", "")).endswith("norm"), params)
  return optax.chain(
      optax.clip_by_global_norm(s.grad_clip),
      optax.scale_by_adam(b1=s.b1, b2=s.b2),
      optax.add_decayed_weights(s.weight_decay, mask=decay_mask))


def learning_rate(s: TargetLMSettings, step: int, total_steps: int) -> float:
  """Linear warm-up to `learning_rate`, then cosine decay to `min_lr_ratio` of it at the end."""
  warm = min(s.warmup_steps, max(total_steps - 1, 1))
  if step < warm:
    return s.learning_rate * (step + 1) / warm
  frac = min(1.0, (step - warm) / max(total_steps - warm, 1))
  cos = 0.5 * (1.0 + math.cos(math.pi * frac))
  return s.learning_rate * (s.min_lr_ratio + (1.0 - s.min_lr_ratio) * cos)


def make_train_step(cfg: ModelConfig, optimizer: optax.GradientTransformation):
  """Jitted pure step: (params, opt_state, batch [B, T] int32, lr) -> (params, opt_state, metrics).

  No randomness is involved (no dropout), so the step takes no rng.
  """
  def step(params, opt_state, batch, lr):
    (loss, count), grads = jax.value_and_grad(
        lambda p: lm_loss(cfg, p, batch), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p - lr * u, params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "targets": count}
    return params, opt_state, metrics
  return jax.jit(step, donate_argnums=(0, 1))


def make_eval_step(cfg: ModelConfig):
  """Jitted (params, batch) -> (summed nll, number of targets), for exact means over batches."""
  def step(params, batch):
    loss, count = lm_loss(cfg, params, batch)
    return loss * count, count
  return jax.jit(step)


def evaluate(eval_step, params, rows: np.ndarray, max_rows: int, batch_size: int = 16) -> float:
  """Mean token loss over the first `max_rows` rows, in fixed-size batches padded with pad rows."""
  rows = rows[:max_rows]
  pad = -len(rows) % batch_size
  rows = np.concatenate([rows, np.full((pad, rows.shape[1]), PAD_ID, rows.dtype)])
  total = count = 0.0
  for i in range(0, len(rows), batch_size):
    nll, n = eval_step(params, jnp.asarray(rows[i:i + batch_size]))
    total, count = total + float(nll), count + float(n)
  return total / count if count else float("nan")


def greedy_continue(cfg: ModelConfig, params: dict, prompt_ids: Sequence[int],
                    num_new: int) -> list[int]:
  """Greedy continuation of one prompt (full recompute over a fixed-size buffer; one compile)."""
  length = len(prompt_ids) + num_new
  if length > cfg.max_position_embeddings:
    raise ValueError(f"prompt ({len(prompt_ids)}) + num_new ({num_new}) tokens exceed "
                     f"max_position_embeddings={cfg.max_position_embeddings}")

  @jax.jit
  def run(params, buf):
    def body(i, buf):
      logits = transformer.forward(cfg, params, buf).logits
      nxt = jnp.argmax(logits[0, i - 1]).astype(jnp.int32)
      return buf.at[0, i].set(nxt)
    return jax.lax.fori_loop(len(prompt_ids), length, body, buf)

  buf = jnp.zeros((1, length), jnp.int32).at[0, :len(prompt_ids)].set(jnp.asarray(prompt_ids))
  out = [int(t) for t in np.asarray(run(params, buf))[0, len(prompt_ids):]]
  return out[:out.index(EOS_ID) + 1] if EOS_ID in out else out


def _remove_stale_tmp_dirs(out_dir: str):
  """Deletes `<out_dir>.tmp-<pid>` directories whose process is gone (killed earlier runs)."""
  parent, base = os.path.split(os.path.abspath(out_dir))
  if not os.path.isdir(parent):
    return
  for name in os.listdir(parent):
    if not name.startswith(base + ".tmp-"):
      continue
    try:
      pid = int(name.rsplit("-", 1)[1])
      os.kill(pid, 0)
      alive = pid != os.getpid()
    except ValueError:
      continue
    except ProcessLookupError:
      alive = False
    except PermissionError:
      alive = True
    if not alive:
      shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def train_target(settings: TargetLMSettings, out_dir: str, *, progress: bool = True,
                 docs: Sequence[str] | None = None) -> TrainedTarget:
  """Builds the corpus, tokenizer and model, trains, and writes `out_dir` atomically.

  `docs` replaces the standard-library corpus (tests use a tiny one). Refuses to overwrite an
  existing `out_dir`.
  """
  s = settings
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    raise FileExistsError(f"target directory {out_dir} already exists; delete it to retrain "
                          f"(or use ensure_target, which keeps it when it holds {DONE_FILE})")
  _remove_stale_tmp_dirs(out_dir)
  tmp = f"{out_dir}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  t_start = time.time()

  source = "python-stdlib" if docs is None else "given"
  if docs is None:
    docs = corpus.stdlib_corpus(s.corpus_bytes, s.corpus_seed)
  train_docs, held_docs = corpus.split_documents(list(docs), s.holdout_fraction, s.corpus_seed)
  tok = train_tokenizer(train_docs, s.vocab_size, tmp,
                        model_max_length=s.max_position_embeddings)
  check_tokenizer_roundtrip(tmp)
  train_rows = pack_sequences(tokenize_documents(tok, train_docs), s.seq_len + 1)
  held_rows = pack_sequences(tokenize_documents(tok, held_docs), s.seq_len + 1)
  t_data = time.time() - t_start

  # The model's vocabulary is the configured size even if BPE found fewer merges (ids < size).
  cfg = s.model_config()
  model = transformer.Transformer(cfg, rngs=nnx.Rngs(s.seed))
  params = model.params()
  optimizer = make_optimizer(s)
  opt_state = optimizer.init(params)
  train_step = make_train_step(cfg, optimizer)
  eval_step = make_eval_step(cfg)
  batches = _BatchSampler(train_rows, s.batch_size, s.seed)

  metrics_f = open(os.path.join(tmp, METRICS_FILE), "w")

  def log(record):
    metrics_f.write(json.dumps(record) + "\n")
    metrics_f.flush()

  total_steps, step = s.steps, 0
  loss_sum, loss_n, logged = jnp.float32(0.0), 0, []
  marks = [(0, 0.0)]  # (step, seconds) at log points, for the recent step rate.
  compile_s, t_loop, cpu0 = 0.0, time.time(), time.process_time()
  bar = Progress(total_steps, "target LM", enabled=progress)
  while step < total_steps:
    lr = learning_rate(s, step, total_steps)
    batch = batches.next()
    if step < s.short_seq_fraction * total_steps:
      batch = split_rows(batch)
    t0 = time.time()
    params, opt_state, m = train_step(params, opt_state, batch, jnp.float32(lr))
    if step == 0:  # The first call compiles; the budget clock starts after it.
      m["loss"].block_until_ready()
      compile_s = time.time() - t0
      t_loop, cpu0 = time.time(), time.process_time()
    loss_sum, loss_n = loss_sum + m["loss"], loss_n + 1
    step += 1
    if step % s.log_every == 0 or step == total_steps:
      loss = float(loss_sum) / loss_n  # Mean since the last log; syncs only here.
      loss_sum, loss_n = jnp.float32(0.0), 0
      logged.append(loss)
      elapsed = time.time() - t_loop
      marks.append((step, elapsed))
      log({"step": step, "loss": loss, "grad_norm": float(m["grad_norm"]), "lr": lr,
           "seq_len": int(batch.shape[1]) - 1, "elapsed_s": round(elapsed, 2),
           "cpu_s": round(time.process_time() - cpu0, 2),
           "tokens_per_s": round(step * s.batch_size * s.seq_len / max(elapsed, 1e-9))})
      bar.set_postfix(f"loss={loss:.3f} lr={lr:.2e}")
      if s.time_budget_s > 0 and len(marks) > 2:
        # Fit the schedule to the budget from the recent step rate (either way, up to `steps`),
        # so the cosine ends as the time runs out even when the machine is shared.
        prev_step, prev_s = marks[max(1, len(marks) - 6)]
        per_step = (elapsed - prev_s) / max(step - prev_step, 1)
        fit = step + int(max(s.time_budget_s - elapsed, 0.0) / max(per_step, 1e-9))
        total_steps = max(step, min(s.steps, fit))
        bar.total = total_steps
    bar.update(1)
  bar.close()
  train_s = time.time() - t_loop

  heldout_loss = evaluate(eval_step, params, held_rows, s.eval_rows)
  sample = np.random.default_rng(s.seed + 1).permutation(len(train_rows))[:s.eval_rows]
  train_eval_loss = evaluate(eval_step, params, train_rows[np.sort(sample)], s.eval_rows)
  final_train_loss = float(np.mean(logged[-3:]))
  # Bits per byte compare tokenizers of different vocabulary sizes (exact up to the first token
  # of each row, which is never a target, when eval_rows covers the held-out rows).
  held_targets = int((held_rows[:, 1:] != PAD_ID).sum())
  heldout_bpb = heldout_loss * held_targets / sum(len(d.encode()) for d in held_docs) / math.log(2)
  log({"step": step, "heldout_loss": heldout_loss, "heldout_bits_per_byte": heldout_bpb,
       "train_eval_loss": train_eval_loss})
  metrics_f.close()

  samples = {}
  for prompt in s.sample_prompts:
    ids = tok.encode(prompt).ids  # Starts with <s>.
    n = min(s.sample_tokens, cfg.max_position_embeddings - len(ids))
    samples[prompt] = tok.decode(greedy_continue(cfg, params, ids, n), skip_special_tokens=True)

  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  hf_checkpoint.save_model(model, tmp)
  summary = {
      "settings": dataclasses.asdict(s), "num_params": cfg.num_params(),
      "corpus": {"source": source, "documents": len(docs), "train_documents": len(train_docs),
                 "heldout_documents": len(held_docs), "bytes": sum(len(d.encode()) for d in docs),
                 "train_tokens": int(train_rows.size), "heldout_tokens": int(held_rows.size)},
      "steps": step, "final_train_loss": final_train_loss, "train_eval_loss": train_eval_loss,
      "heldout_loss": heldout_loss, "heldout_bits_per_byte": heldout_bpb,
      "data_s": round(t_data, 2), "compile_s": round(compile_s, 2),
      "train_s": round(train_s, 2), "train_cpu_s": round(time.process_time() - cpu0, 2),
      "total_s": round(time.time() - t_start, 2),
      "samples": samples,
  }
  # Last file: marks the directory complete.
  run_files.write_json(os.path.join(tmp, DONE_FILE), summary)
  try:
    os.rename(tmp, out_dir)
  except OSError:
    if not is_done(out_dir):
      raise
    shutil.rmtree(tmp, ignore_errors=True)  # A concurrent run finished first; keep its target.
    return TrainedTarget(out_dir, read_summary(out_dir), None)
  return TrainedTarget(out_dir, summary, params)


def is_done(out_dir: str) -> bool:
  return os.path.exists(os.path.join(out_dir, DONE_FILE))


def read_summary(out_dir: str) -> dict:
  with open(os.path.join(out_dir, DONE_FILE)) as f:
    return json.load(f)


def ensure_target(out_dir: str, settings: TargetLMSettings | None = None,
                  **kw) -> TrainedTarget:
  """Trains the target into `out_dir` unless a finished one (with `DONE`) is already there."""
  if is_done(out_dir):
    return TrainedTarget(os.path.abspath(out_dir), read_summary(out_dir), None)
  return train_target(settings or TargetLMSettings(), out_dir, **kw)
