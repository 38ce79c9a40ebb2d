"""The toy target (ppow_jax.toy_target): stdlib corpus, BPE tokenizer, packing, training, and the target directory."""

import json
import os
import time

import flax.nnx as nnx
import jax.numpy as jnp
import numpy as np
import pytest

import configs
from ppow_jax.models import hf_checkpoint, transformer
from ppow_jax.toy_target import corpus
from ppow_jax.toy_target import target_lm as tl


def _load_default_config():
  return configs.load("default", "toy")  # the embedded toy target is the variant `:toy`


@pytest.fixture(scope="module")
def small_docs():
  return corpus.stdlib_corpus(60_000, seed=0)


def test_stdlib_corpus_deterministic_capped_and_without_tests():
  a = corpus.stdlib_corpus(200_000, seed=3)
  assert a == corpus.stdlib_corpus(200_000, seed=3)
  assert a and all(isinstance(d, str) and d for d in a)
  total = sum(len(d.encode("utf-8")) for d in a)
  assert 150_000 < total <= 200_000  # Fills the cap, never exceeds it.
  assert corpus.stdlib_corpus(200_000, seed=4) != a
  assert any("def " in d for d in a)
  files = corpus.stdlib_files()
  assert files == sorted(files) and len(files) > 100
  for f in files:
    parts = f.split(os.sep)
    assert not {"test", "tests", "site-packages", "__pycache__"} & set(parts), f
    assert f.endswith(".py")
  with pytest.raises(ValueError, match="max_bytes"):
    corpus.stdlib_corpus(0, seed=0)


def test_split_documents_deterministic_disjoint_complete():
  docs = [f"doc {i}" for i in range(40)]
  train, held = corpus.split_documents(docs, 0.1, seed=1)
  assert (train, held) == corpus.split_documents(docs, 0.1, seed=1)
  assert len(held) == 4 and sorted(train + held) == sorted(docs)
  assert held == [d for d in docs if d in held]  # Input order kept.
  assert corpus.split_documents(docs, 0.1, seed=2)[1] != held
  assert len(corpus.split_documents(docs[:3], 0.01, seed=0)[1]) == 1  # At least one held out.
  with pytest.raises(ValueError, match="holdout_fraction"):
    corpus.split_documents(docs, 1.0, seed=0)


def test_tokenizer_round_trips_through_autotokenizer(small_docs, tmp_path):
  tok = tl.train_tokenizer(small_docs, 320, str(tmp_path))
  assert tok.get_vocab_size() == 320
  hf = hf_checkpoint.load_tokenizer(str(tmp_path))
  assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id) == (0, 1, 2)
  text = "import os\n\ndef f(x):\n\treturn x  +  1  # caf\u00e9 \u65e5\u672c \n\n"
  ids = hf(text)["input_ids"]
  assert ids[0] == tl.BOS_ID and tl.BOS_ID not in ids[1:]
  assert hf.decode(ids, skip_special_tokens=True) == text
  # The raw tokenizers object agrees with transformers, minus the <s>.
  assert tl.tokenize_documents(tok, [text])[0] == ids[1:]
  tl.check_tokenizer_roundtrip(str(tmp_path), text)


def test_pack_sequences_places_bos_eos_and_pads():
  rows = tl.pack_sequences([[5, 6, 7], [8]], 4)
  assert rows.dtype == np.int32
  np.testing.assert_array_equal(rows, [[1, 5, 6, 7], [2, 1, 8, 2]])
  rows = tl.pack_sequences([[5, 6, 7], [8]], 3)
  np.testing.assert_array_equal(rows, [[1, 5, 6], [7, 2, 1], [8, 2, tl.PAD_ID]])
  with pytest.raises(ValueError, match="no documents"):
    tl.pack_sequences([], 4)


def test_split_rows_keeps_every_target():
  batch = np.arange(2 * 9).reshape(2, 9)  # T = 8.
  halves = tl.split_rows(batch)
  assert halves.shape == (4, 5)
  np.testing.assert_array_equal(halves[0], [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(halves[1], [4, 5, 6, 7, 8])
  pairs = lambda b: {(int(x), int(y)) for r in b for x, y in zip(r[:-1], r[1:])}
  assert pairs(halves) == pairs(batch)


def test_learning_rate_schedule():
  s = tl.TargetLMSettings(learning_rate=1e-3, warmup_steps=10, min_lr_ratio=0.1)
  assert tl.learning_rate(s, 0, 100) == pytest.approx(1e-4)
  assert tl.learning_rate(s, 10, 100) == pytest.approx(1e-3)
  assert tl.learning_rate(s, 55, 100) == pytest.approx(0.55e-3)
  assert tl.learning_rate(s, 100, 100) == pytest.approx(1e-4)
  with pytest.raises(ValueError, match="seq_len=7"):
    tl.TargetLMSettings(seq_len=7)


def _tiny_settings(**kw):
  base = dict(corpus_bytes=60_000, vocab_size=300, hidden_size=32, intermediate_size=64,
              num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=32, seq_len=16,
              batch_size=2, steps=40, learning_rate=1e-2, warmup_steps=2,
              log_every=2, eval_rows=8, sample_prompts=("def ",), sample_tokens=4)
  return tl.TargetLMSettings(**{**base, **kw})


@pytest.mark.slow
def test_train_step_lowers_loss_on_fixed_batch():
  s = _tiny_settings(weight_decay=0.0)
  cfg = s.model_config()
  params = transformer.Transformer(cfg, rngs=nnx.Rngs(0)).params()
  opt = tl.make_optimizer(s)
  opt_state = opt.init(params)
  step = tl.make_train_step(cfg, opt)
  batch = jnp.asarray(np.random.default_rng(0).integers(3, 300, (2, 17)), jnp.int32)
  batch = batch.at[1, 12:].set(tl.PAD_ID)  # Padded targets must not count.
  losses = []
  for _ in range(15):
    params, opt_state, m = step(params, opt_state, batch, jnp.float32(1e-2))
    losses.append(float(m["loss"]))
  assert float(m["targets"]) == 2 * 16 - 5
  assert losses[0] == pytest.approx(np.log(300), abs=0.3)  # Near-uniform at init.
  assert losses[-1] < 0.5 * losses[0]

  # Greedy continuation: each new token is the argmax after the tokens before it (causal, so
  # one forward over the result checks every step).
  prompt = [int(t) for t in batch[0, :5]]
  got = tl.greedy_continue(cfg, params, prompt, 4)
  assert len(got) == 4
  logits = transformer.forward(cfg, params, jnp.asarray(prompt + got)[None]).logits
  assert [int(t) for t in jnp.argmax(logits[0, 4:-1], axis=-1)] == got


@pytest.mark.slow
def test_train_target_writes_loadable_dir_and_rerun_skips(small_docs, tmp_path, monkeypatch):
  out = str(tmp_path / "target")
  stale = str(tmp_path / "target.tmp-999999999")  # A killed run's leftovers (no such pid).
  os.makedirs(stale)
  s = _tiny_settings()
  res = tl.ensure_target(out, s, progress=False, docs=small_docs)

  assert res.path == out and res.params is not None
  assert sorted(os.listdir(tmp_path)) == ["target"]  # Temp dirs renamed or cleaned up.
  files = set(os.listdir(out))
  assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "metrics.jsonl", tl.DONE_FILE} <= files
  summary = tl.read_summary(out)
  assert summary["steps"] == 40 and summary["settings"]["hidden_size"] == 32
  assert np.isfinite(summary["heldout_loss"]) and summary["final_train_loss"] < np.log(300)
  assert set(summary["samples"]) == {"def "}
  records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
  train_recs = [r for r in records if "loss" in r]
  assert [r["step"] for r in train_recs] == list(range(2, 41, 2))
  assert {r["seq_len"] for r in train_recs} == {8, 16}  # Short-row phase, then full rows.
  assert train_recs[-1]["loss"] < train_recs[0]["loss"]
  assert "heldout_loss" in records[-1]

  model = hf_checkpoint.load_model(out)
  cfg = model.cfg
  assert (cfg.vocab_size, cfg.num_layers, cfg.bos_token_id, cfg.eos_token_id) == (300, 2, 1, 2)
  assert cfg.tie_word_embeddings and cfg.max_position_embeddings == 32
  tok = hf_checkpoint.load_tokenizer(out)
  tokens = jnp.asarray(tok("def main():\n    pass\n")["input_ids"][:12])[None]
  assert tokens[0, 0] == tl.BOS_ID
  want = transformer.forward(cfg, res.params, tokens).logits
  got = model(tokens).logits
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  init = transformer.Transformer(cfg, rngs=nnx.Rngs(s.seed)).params()
  assert not np.allclose(np.asarray(model.params()["embed"]), np.asarray(init["embed"]))

  # A rerun finds DONE and returns without training.
  monkeypatch.setattr(tl, "train_target", lambda *a, **k: pytest.fail("retrained"))
  again = tl.ensure_target(out, s)
  assert again.params is None and again.summary == summary
  monkeypatch.undo()
  with pytest.raises(FileExistsError, match="already exists"):
    tl.train_target(s, out, progress=False, docs=small_docs)


@pytest.mark.slow
def test_time_budget_shortens_the_run(small_docs, tmp_path):
  s = _tiny_settings(steps=1000, time_budget_s=1e-6, short_seq_fraction=0.0, num_layers=1)
  res = tl.train_target(s, str(tmp_path / "t"), progress=False, docs=small_docs)
  # Budget checks start at the second log point (step 4); no time left ends the run there.
  assert res.summary["steps"] == 4


class _BusyClock:
  """target_lm's `time` module as a heavily loaded machine sees it: every reading of the wall
  clock is 100 s after the previous one."""

  def __init__(self):
    self.now = time.time()

  def time(self):
    self.now += 100.0
    return self.now

  def process_time(self):
    return time.process_time()


@pytest.mark.slow
def test_step_budget_does_not_depend_on_load(small_docs, tmp_path, monkeypatch):
  """The default pipeline's target stage trains a fixed number of steps: the same target (step
  count, losses) on an idle and on a busy machine."""
  defaults = tl.TargetLMSettings()
  assert defaults.time_budget_s == 0 and defaults.steps == 1500
  cfg = _load_default_config()
  assert (cfg.target_lm.steps, cfg.target_lm.time_budget_s) == (1500, 0.0)
  s = _tiny_settings(steps=12, time_budget_s=defaults.time_budget_s, num_layers=1,
                     short_seq_fraction=0.0, sample_prompts=())
  idle = tl.train_target(s, str(tmp_path / "idle"), progress=False, docs=small_docs).summary
  monkeypatch.setattr(tl, "time", _BusyClock())
  busy = tl.train_target(s, str(tmp_path / "busy"), progress=False, docs=small_docs).summary
  assert busy["train_s"] > 1000  # the clock did read as a slow machine
  assert idle["steps"] == busy["steps"] == 12
  assert busy["heldout_loss"] == idle["heldout_loss"]
  assert busy["final_train_loss"] == idle["final_train_loss"]
