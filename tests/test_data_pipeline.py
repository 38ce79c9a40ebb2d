"""Data for a chat target without a dataset download: continuous-batching generation, prompt
synthesis filters and decontamination, the tfds datasets, and the cached target features."""

import itertools
import json
import os

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from scipy import stats

from ppow_jax import assets
from ppow_jax.data import datasets, features, magpie, selfdistill
from ppow_jax.decoding import continuous, runner, sampling
from ppow_jax.models import hf_checkpoint, transformer
from ppow_jax.models.config import ModelConfig
from ppow_jax.models.transformer import Transformer

TINY = ModelConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_layers=2,
                   num_heads=2, num_kv_heads=1, head_dim=8, eos_token_id=3)


# --- continuous batching -------------------------------------------------------------------------

@pytest.mark.slow
def test_continuous_greedy_equals_engine_per_prompt():
  """Rows finish at different steps (EOS) and are refilled mid-run; every prompt's greedy
  continuation equals the engine's, batch 1."""
  params = jax.tree.map(lambda x: 4 * x, Transformer(TINY, rngs=nnx.Rngs(0)).params())
  rng = np.random.default_rng(0)
  prompts = [rng.integers(4, 16, size=rng.integers(1, 9)).tolist() for _ in range(19)]
  s = continuous.StreamSettings(max_new_tokens=12, batch_size=5, refill_rows=2, segment=3,
                                sp=sampling.SamplingParams())
  got = continuous.generate(TINY, params, prompts, s, progress=False)
  ref = runner.decode(TINY, params, prompts, runner.DecodeSettings(window=0, max_new_tokens=12,
                                                                   batch_size=1), progress=False)
  assert got == [r.output_token_ids for r in ref]
  lengths = [len(g) for g in got]
  assert min(lengths) < 12 == max(lengths), lengths  # some rows did stop early at EOS


@pytest.mark.slow
def test_continuous_sampling_follows_the_target_distribution():
  """At temperature 1, the first two sampled tokens of one prompt repeated 1500 times follow the
  model's exact joint (chi-square), and different prompts draw independent streams."""
  cfg = TINY.replace(vocab_size=6, eos_token_id=None)
  params = jax.tree.map(lambda x: 3 * x, Transformer(cfg, rngs=nnx.Rngs(2)).params())
  prompt = [1, 4]
  n = 1500
  s = continuous.StreamSettings(max_new_tokens=2, batch_size=64, refill_rows=16, segment=2,
                                sp=sampling.SamplingParams(temperature=1.0), seed=3)
  out = np.asarray(continuous.generate(cfg, params, [prompt] * n, s, progress=False))
  seqs = np.asarray([prompt + [a] for a in range(6)])
  logits = transformer.forward(cfg, params, jnp.asarray(seqs)).logits
  p1 = np.asarray(jax.nn.softmax(logits[0, 1]), np.float64)
  p2 = np.asarray(jax.nn.softmax(logits[:, 2]), np.float64)
  joint = (p1[:, None] * p2).reshape(-1)
  counts = np.bincount(out[:, 0] * 6 + out[:, 1], minlength=36)
  keep = joint * n >= 5
  expected = joint[keep] / joint[keep].sum() * counts[keep].sum()
  assert stats.chisquare(counts[keep], expected).pvalue > 1e-3


# --- prompt synthesis ----------------------------------------------------------------------------

def test_pre_query_template_is_the_chat_opening_up_to_the_user_turn(smollm2_path):
  tok = hf_checkpoint.load_tokenizer(smollm2_path)
  text = tok.decode(magpie.pre_query_ids(tok))
  assert text.endswith("<|im_start|>user\n")
  assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_filters_drop_runaway_short_marked_duplicate_and_evaluation_prompts():
  guard = magpie.Decontaminator(["Natalia sold clips to 48 of her friends in April, and then "
                                 "she sold half as many clips in May."])
  stats_ = magpie.FilterStats()
  samples = [
      ("How do I bake sourdough bread at home?", True),
      ("how do I   bake sourdough bread at home", True),  # duplicate after normalising
      ("Tell me about", False),  # no end of turn within the budget: runaway
      ("Hi", True),  # too short
      ("What is <|im_start|> for?", True),  # a template marker
      ("Natalia sold clips to 48 of her friends in April. How many in May?", True),  # 8-gram
      ("Natalia sold 48 clips; explain the arithmetic of halving.", True),  # no 8-gram: kept
  ]
  kept = magpie.filter_samples(samples, min_chars=12, seen=set(), decontaminator=guard,
                               markers=["<|im_start|>"], stats=stats_)
  assert kept == ["How do I bake sourdough bread at home?",
                  "Natalia sold 48 clips; explain the arithmetic of halving."]
  assert (stats_.duplicate, stats_.runaway, stats_.too_short, stats_.template_marker,
          stats_.contaminated, stats_.kept) == (1, 1, 1, 1, 1, 2)


def test_openings_start_the_sampled_user_turns_in_turn(smollm2_path, monkeypatch):
  """Sample j's user turn begins with openings[j % len] (cycled across rounds), the target
  continues it, and the kept prompt is the opening plus the continuation."""
  tok = hf_checkpoint.load_tokenizer(smollm2_path)
  cfg = ModelConfig.from_hf_dir(smollm2_path)
  eot = cfg.eos_ids[0]
  prefix = magpie.pre_query_ids(tok)
  seen_prompts = []

  def fake_generate(target_cfg, params, prompts, settings, **kw):
    start = len(seen_prompts)
    seen_prompts.extend(prompts)
    # Samples 2-5 run away (no end of turn): round 1 keeps 3 of 7, round 2 resumes the cycle.
    return [tok(f" number {start + j} of the test", add_special_tokens=False)["input_ids"]
            + ([] if 2 <= start + j <= 5 else [eot]) for j in range(len(prompts))]

  monkeypatch.setattr(continuous, "generate", fake_generate)
  openings = ("", "Summarize the following", "Translate")
  settings = magpie.MagpieSettings(num_prompts=5, batch_size=1, openings=openings)
  texts, st = magpie.synthesize(cfg, None, tok, settings, progress=False)
  assert st.runaway == 4 and len(seen_prompts) > 7  # two rounds
  for j, p in enumerate(seen_prompts):
    head = tok(openings[j % 3], add_special_tokens=False)["input_ids"] if openings[j % 3] else []
    assert p == prefix + head, f"sample {j}"
  kept_j = [j for j in range(len(seen_prompts)) if not 2 <= j <= 5][:5]
  assert texts == [f"{openings[j % 3]} number {j} of the test".strip() for j in kept_j]


def test_evaluation_sets_never_enter_the_prompt_dataset(tmp_path):
  """The tfds Prompts dataset drops duplicates and prompts overlapping evaluation files."""
  gsm8k = assets.GSM8K
  with open(gsm8k) as f:
    leaked = json.loads(f.readline())["question"]
  user = tmp_path / "user.jsonl"
  user.write_text("\n".join(json.dumps(r) for r in [
      {"prompt": "Plan a three-day trip to Kyoto."},
      {"instruction": "Plan a three-day trip to  kyoto"},  # duplicate
      {"prompt": "Please solve: " + leaked},  # a GSM8K test question
      {"messages": [{"role": "user", "content": "Write a limerick about tea."}]}]))
  b = datasets.Prompts(files=[str(user)], exclude=[gsm8k], data_dir=str(tmp_path / "d"))
  b.download_and_prepare()
  src = datasets.Prompts(data_dir=str(tmp_path / "d")).as_data_source()["train"]
  assert [src[i]["text"].decode() if isinstance(src[i]["text"], bytes) else src[i]["text"]
          for i in range(len(src))] == ["Plan a three-day trip to Kyoto.",
                                        "Write a limerick about tea."]


# --- self-distillation dataset and cached features -------------------------------------------------

@pytest.mark.slow
def test_selfdistill_dataset_resumes_by_chunk_and_is_a_tfds_dataset(tmp_path, monkeypatch):
  params = jax.tree.map(lambda x: 4 * x, Transformer(TINY, rngs=nnx.Rngs(0)).params())
  prompts = [[1, 5 + i % 7] for i in range(10)]
  monkeypatch.setattr(selfdistill, "CHUNK", 4)
  specs = {"train": selfdistill.SplitSpec(prompts[:8], 6, 0.0, 0),
           "heldout": selfdistill.SplitSpec(prompts[8:], 6, 1.0, 1)}
  calls = []
  real = continuous.generate
  monkeypatch.setattr(continuous, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
  d = str(tmp_path / "data")
  selfdistill.generate_split(TINY, params, specs["train"], d, "train", batch_size=4,
                             progress=False)
  os.remove(os.path.join(d, "generation", "train-00001.npz"))  # as if killed in chunk 2
  calls.clear()
  recs = selfdistill.prepare(TINY, params, d, specs, batch_size=4, progress=False)
  assert len(calls) == 2  # train chunk 2 again, then the held-out chunk; not chunk 1
  assert len(recs["train"]) == 8 and len(recs["heldout"]) == 2
  ref = runner.decode(TINY, params, prompts[:8], runner.DecodeSettings(
      window=0, max_new_tokens=6, batch_size=1), progress=False)
  for r, want, p in zip(recs["train"], ref, prompts):
    assert int(r[0]) == len(p) and r[1:].tolist() == p + want.output_token_ids
  meta = datasets.SelfDistillation(data_dir=d).info.metadata["settings"]
  assert meta["heldout"]["temperature"] == 1.0 and meta["train"]["num_records"] == 8


@pytest.mark.slow
def test_feature_cache_equals_the_target_forward_and_resumes(tmp_path, monkeypatch):
  params = Transformer(TINY, rngs=nnx.Rngs(1)).params()
  rng = np.random.default_rng(0)
  recs = [np.asarray([2, *rng.integers(0, 16, rng.integers(3, 12))], np.int32) for _ in range(7)]
  path = features.cache_path(str(tmp_path), "train", (1, 1, 2), 12)
  # Interrupt after the first block of 2 rows, then resume.
  real_replace = os.replace
  monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
  with pytest.raises(KeyboardInterrupt):
    features.build(TINY, params, recs, path, aux_layers=(1, 1, 2), seq_len=12, batch_size=2,
                   progress=False)
  monkeypatch.setattr(os, "replace", real_replace)
  assert not os.path.exists(path) and os.path.exists(path + ".partial")
  features.build(TINY, params, recs, path, aux_layers=(1, 1, 2), seq_len=12, batch_size=2,
                 progress=False)
  cache = features.load(path)
  assert cache.shape == (7, 12, 64) and cache.dtype == ml_dtypes.bfloat16
  for i, r in enumerate(recs):
    toks = np.zeros((1, 12), np.int32)
    toks[0, :len(r) - 1] = r[1:]
    valid = toks * 0 + (np.arange(12) < len(r) - 1)
    out = transformer.forward(TINY, params, jnp.asarray(toks), key_valid=jnp.asarray(valid > 0),
                              hidden_layers=(1, 1, 2), return_logits=False)
    want = np.concatenate([*map(np.asarray, out.hidden), np.asarray(out.last_hidden)], -1)
    n = len(r) - 1
    np.testing.assert_array_equal(np.asarray(cache[i, :n], np.float32),
                                  want[0, :n].astype(ml_dtypes.bfloat16).astype(np.float32))


def test_loss_on_prompt_extends_the_loss_mask_over_the_prompt():
  """Records are [prompt_len, *tokens]: the loss covers the response only, or with
  loss_on_prompt every valid token from slot 1 on (ttt_loss supervises slot j by the target's
  distribution at slot j+1, so slot 0's is never read); padding is never in the loss."""
  recs = [np.asarray([3, 2, 5, 6, 7, 8], np.int32), np.asarray([2, 2, 9, 4], np.int32)]
  plain = selfdistill.SequenceData(recs, seq_len=8, batch_size=2, seed=0)
  wide = selfdistill.SequenceData(recs, seq_len=8, batch_size=2, seed=0, loss_on_prompt=True)
  for step in range(3):
    a, b = plain.batch(step), wide.batch(step)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    for row, i in enumerate(plain.rows(step)):
      plen, n = int(recs[i][0]), len(recs[i]) - 1
      want = np.arange(8)
      np.testing.assert_array_equal(a["loss_mask"][row], (want >= plen) & (want < n))
      np.testing.assert_array_equal(b["loss_mask"][row], (want >= 1) & (want < n))
      assert not (b["loss_mask"][row] & ~b["valid"][row]).any()
