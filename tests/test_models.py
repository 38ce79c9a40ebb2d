"""The model layer against transformers' PyTorch implementation, and the KV cache against full forwards.

Every family is checked on a tiny random checkpoint written by transformers' `save_pretrained` and
read by `ppow_jax.models.hf_checkpoint.load_model`, so the test covers loading and the math at once.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ppow_jax.models import hf_checkpoint, transformer  # noqa: E402
from ppow_jax.models.kv_cache import KVCache  # noqa: E402

TOL = 1e-4
VOCAB = 128
SEQ = 16

_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
               rms_norm_eps=1e-5, initializer_range=0.2, bos_token_id=1, eos_token_id=2)

# name -> (HF config class name, overrides, save_pretrained max_shard_size or None)
FAMILIES = {
    "llama": ("LlamaConfig", {}, None),
    # Scaling only matters for wavelengths above original_max / high = 2 positions: most of them.
    "llama3_rope": ("LlamaConfig", dict(rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=8)), "16KB"),
    "llama_tied": ("LlamaConfig", dict(tie_word_embeddings=True, num_key_value_heads=4), None),
    "qwen2": ("Qwen2Config", {}, None),
    "qwen3": ("Qwen3Config", dict(head_dim=16), None),
    "mistral": ("MistralConfig", dict(sliding_window=5, head_dim=8), None),
}

_fwd = jax.jit(transformer.forward, static_argnums=0,
               static_argnames=("hidden_layers", "return_logits"))


def _build_hf(name, tmp_root):
  """A random HF model of family `name` with non-trivial norms/biases, saved and reloaded by us."""
  cls_name, overrides, shard = FAMILIES[name]
  torch.manual_seed(0)
  hf_cfg = getattr(transformers, cls_name)(**{**_COMMON, **overrides})
  tm = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32).eval()
  with torch.no_grad():
    for pname, p in tm.named_parameters():
      if "norm" in pname:
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      elif pname.endswith(".bias"):
        p.copy_(0.5 * torch.randn_like(p))
  path = os.path.join(tmp_root, name)
  if shard:
    tm.save_pretrained(path, max_shard_size=shard)
  else:
    tm.save_pretrained(path)
  return tm, path, hf_checkpoint.load_model(path)


@pytest.fixture(scope="module")
def hf_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("hf"))


_BUILT = {}


@pytest.fixture(scope="module")
def build(hf_root):
  """Builds each family once per module (several tests share a checkpoint)."""

  def get(name):
    if name not in _BUILT:
      _BUILT[name] = _build_hf(name, hf_root)
    return _BUILT[name]

  yield get
  _BUILT.clear()


def _tokens(batch, length, seed=0):
  return np.random.RandomState(seed).randint(3, VOCAB, size=(batch, length)).astype(np.int32)


def _hf_logits(tm, tokens, **kw):
  with torch.no_grad():
    return tm(torch.as_tensor(np.asarray(tokens, np.int64)), **kw)


def _full(model, tokens):
  return np.asarray(_fwd(model.cfg, model.params(), jnp.asarray(tokens)).logits)


# --- 1. parity with transformers --------------------------------------------------------------


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logits_and_hidden_match_transformers(build, name):
  tm, path, model = build(name)
  cfg = model.cfg
  assert cfg.model_type == tm.config.model_type
  tokens = _tokens(2, SEQ)
  layers = tuple(range(cfg.num_layers))
  out = _fwd(cfg, model.params(), jnp.asarray(tokens), hidden_layers=layers)
  ref = _hf_logits(tm, tokens, output_hidden_states=True)
  ref_logits = ref.logits.numpy()
  assert ref_logits.std() > 0.3, "test model too close to zero to discriminate"
  np.testing.assert_allclose(np.asarray(out.logits), ref_logits, atol=TOL, rtol=0)
  for i in layers:
    np.testing.assert_allclose(np.asarray(out.hidden[i]), ref.hidden_states[i].numpy(), atol=TOL,
                               rtol=0, err_msg=f"hidden state {i}")


def test_family_features_are_loaded(build):
  """Each family's distinguishing feature reached the config, and the checkpoint is as asked."""
  assert build("llama3_rope")[2].cfg.rope_llama3 == (8.0, 1.0, 4.0, 8)
  assert build("llama_tied")[2].cfg.tie_word_embeddings
  assert "lm_head" not in build("llama_tied")[2].params()
  q2 = build("qwen2")[2]
  assert q2.cfg.attention_bias and np.abs(q2.params()["layers"]["k_bias"]).min() > 0
  q3 = build("qwen3")[2].cfg
  assert q3.qk_norm and q3.head_dim == 16 != q3.hidden_size // q3.num_heads
  assert build("mistral")[2].cfg.sliding_window == 5 < SEQ
  for name in ("llama", "llama3_rope", "qwen2", "qwen3", "mistral"):
    cfg = build(name)[2].cfg
    assert cfg.num_kv_heads < cfg.num_heads, name
  path = build("llama3_rope")[1]
  shards = [f for f in os.listdir(path) if f.endswith(".safetensors")]
  assert os.path.exists(os.path.join(path, "model.safetensors.index.json")) and len(shards) > 1


@pytest.mark.parametrize("name,field,value", [("llama3_rope", "rope_llama3", None),
                                              ("mistral", "sliding_window", None)])
def test_feature_changes_logits(build, name, field, value):
  """Rope scaling and the sliding window actually matter at this sequence length (so the
  parity test above exercises them)."""
  _, _, model = build(name)
  tokens = _tokens(2, SEQ)
  with_it = _full(model, tokens)
  without = np.asarray(_fwd(model.cfg.replace(**{field: value}), model.params(),
                            jnp.asarray(tokens)).logits)
  assert np.abs(with_it - without).max() > 100 * TOL


@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_padded_batch_matches_unpadded_rows(build, name):
  """Left-padded rows (key_valid + shifted positions) and right-padded rows equal each row alone."""
  tm, _, model = build(name)
  cfg, params = model.cfg, model.params()
  lengths = [SEQ, 9, 4]
  rows = [_tokens(1, n, seed=10 + j)[0] for j, n in enumerate(lengths)]
  left = np.zeros((3, SEQ), np.int32)
  right = np.zeros((3, SEQ), np.int32)
  valid_left = np.zeros((3, SEQ), bool)
  for j, r in enumerate(rows):
    left[j, SEQ - len(r):], valid_left[j, SEQ - len(r):] = r, True
    right[j, :len(r)] = r
  positions = np.maximum(np.cumsum(valid_left, axis=1) - 1, 0).astype(np.int32)
  out_left = np.asarray(_fwd(cfg, params, jnp.asarray(left), positions=jnp.asarray(positions),
                             key_valid=jnp.asarray(valid_left)).logits)
  out_right = np.asarray(_fwd(cfg, params, jnp.asarray(right),
                              key_valid=jnp.asarray(valid_left[:, ::-1].copy())).logits)
  for j, r in enumerate(rows):
    ref = _hf_logits(tm, r[None]).logits.numpy()[0]
    n = len(r)
    np.testing.assert_allclose(out_left[j, SEQ - n:], ref, atol=TOL, rtol=0, err_msg=f"left row {j}")
    np.testing.assert_allclose(out_right[j, :n], ref, atol=TOL, rtol=0, err_msg=f"right row {j}")


# --- 2. cached decoding == one full forward ---------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "mistral"])
@pytest.mark.parametrize("step", [1, 3])
def test_prefill_then_steps_equals_full_forward(build, name, step):
  _, _, model = build(name)
  cfg, params = model.cfg, model.params()
  tokens = _tokens(2, SEQ, seed=1)
  full = _full(model, tokens)
  prefill = 4  # (SEQ - prefill) is a multiple of both steps.
  cache = KVCache.init(cfg, 2, SEQ + 4)
  out = _fwd(cfg, params, jnp.asarray(tokens[:, :prefill]), cache=cache)
  got = [np.asarray(out.logits)]
  cache = out.cache
  for s in range(prefill, SEQ, step):
    out = _fwd(cfg, params, jnp.asarray(tokens[:, s:s + step]), cache=cache)
    cache = out.cache
    got.append(np.asarray(out.logits))
  np.testing.assert_array_equal(np.asarray(cache.lengths), [SEQ, SEQ])
  np.testing.assert_allclose(np.concatenate(got, axis=1), full, atol=TOL, rtol=0)


def test_bucketed_prefill_with_different_lengths_then_steps(build):
  """Rows of different prompt lengths right-padded into one bucket, rolled to their true lengths,
  then decoded together: each row equals its own full forward."""
  _, _, model = build("qwen2")
  cfg, params = model.cfg, model.params()
  bucket, steps = 8, 5
  lengths = np.array([3, 8, 5], np.int32)
  seqs = [_tokens(1, n + steps, seed=20 + j)[0] for j, n in enumerate(lengths)]
  padded = np.zeros((3, bucket), np.int32)
  for j, n in enumerate(lengths):
    padded[j, :n] = seqs[j][:n]
  cache = KVCache.init(cfg, 3, bucket + steps)
  out = _fwd(cfg, params, jnp.asarray(padded), cache=cache)
  logits = np.asarray(out.logits)
  cache = out.cache.with_lengths(lengths)
  step_logits = []
  for s in range(steps):
    tok = np.array([[seqs[j][n + s]] for j, n in enumerate(lengths)], np.int32)
    out = _fwd(cfg, params, jnp.asarray(tok), cache=cache)
    cache = out.cache
    step_logits.append(np.asarray(out.logits[:, 0]))
  step_logits = np.stack(step_logits, axis=1)
  np.testing.assert_array_equal(np.asarray(cache.lengths), lengths + steps)
  for j, n in enumerate(lengths):
    ref = _full(model, seqs[j][None])[0]
    np.testing.assert_allclose(logits[j, :n], ref[:n], atol=TOL, rtol=0, err_msg=f"prefill row {j}")
    np.testing.assert_allclose(step_logits[j], ref[n:], atol=TOL, rtol=0, err_msg=f"steps row {j}")


@pytest.mark.parametrize("name", ["qwen3", "mistral"])
def test_rollback_then_rewrite_equals_full_forward(build, name):
  """Write a 3-token window, keep a different prefix of it per row, write a new window: the new
  logits equal a full forward of the final sequence (stale slots are never attended)."""
  _, _, model = build(name)
  cfg, params = model.cfg, model.params()
  prompt = _tokens(2, 6, seed=3)
  window_a = _tokens(2, 3, seed=4)
  window_b = _tokens(2, 3, seed=5)
  keep = np.array([1, 0], np.int32)  # Accepted tokens of window A per row.
  cache = KVCache.init(cfg, 2, 16)
  cache = _fwd(cfg, params, jnp.asarray(prompt), cache=cache).cache
  cache = _fwd(cfg, params, jnp.asarray(window_a), cache=cache).cache
  cache = cache.with_lengths(6 + keep)
  out = _fwd(cfg, params, jnp.asarray(window_b), cache=cache)
  np.testing.assert_array_equal(np.asarray(out.cache.lengths), 6 + keep + 3)
  for j in range(2):
    seq = np.concatenate([prompt[j], window_a[j, :keep[j]], window_b[j]])
    ref = _full(model, seq[None])[0, -3:]
    np.testing.assert_allclose(np.asarray(out.logits[j]), ref, atol=TOL, rtol=0, err_msg=f"row {j}")
  # Without the rollback the same window sees window A's stale tokens and must differ.
  stale = _fwd(cfg, params, jnp.asarray(window_b), cache=cache.with_lengths(np.array([9, 9])))
  assert np.abs(np.asarray(stale.logits) - np.asarray(out.logits)).max() > 100 * TOL


# --- 3. one compilation for all true lengths in a bucket ----------------------------------------


def test_bucketed_prefill_compiles_once(build):
  _, _, model = build("llama")
  cfg, params = model.cfg, model.params()
  bucket = 8
  traces = []

  @jax.jit
  def prefill(params, tokens, lengths):
    traces.append(tokens.shape)
    cache = KVCache.init(cfg, tokens.shape[0], 16)
    out = transformer.forward(cfg, params, tokens, cache=cache)
    last = jnp.take_along_axis(out.logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    return last, out.cache.with_lengths(lengths)

  for n in (2, 5, 8):
    seq = _tokens(1, n, seed=n)
    padded = np.zeros((1, bucket), np.int32)
    padded[0, :n] = seq[0]
    last, cache = prefill(params, jnp.asarray(padded), jnp.asarray([n], jnp.int32))
    np.testing.assert_allclose(np.asarray(last[0]), _full(model, seq)[0, -1], atol=TOL, rtol=0)
    assert int(cache.lengths[0]) == n
  assert len(traces) == 1
  assert prefill._cache_size() == 1


# --- 4. bfloat16 ----------------------------------------------------------------------------------


def test_bfloat16_load_close_to_float32(build):
  _, path, model32 = build("qwen2")
  model16 = hf_checkpoint.load_model(path, dtype="bfloat16")
  assert model16.cfg.dtype == "bfloat16"
  dtypes = {x.dtype for x in jax.tree.leaves(model16.params())}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}
  tokens = _tokens(2, SEQ, seed=7)
  ref = _full(model32, tokens)
  out = _fwd(model16.cfg, model16.params(), jnp.asarray(tokens))
  assert out.logits.dtype == jnp.float32
  got = np.asarray(out.logits)
  assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
  assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.85
  # The cache follows the model's dtype and decoding in bfloat16 still tracks the full forward.
  cache = KVCache.init(model16.cfg, 2, SEQ)
  assert cache.k.dtype == jnp.bfloat16
  step = _fwd(model16.cfg, model16.params(), jnp.asarray(tokens), cache=cache)
  np.testing.assert_allclose(np.asarray(step.logits), got, atol=0.05 * np.abs(ref).max())


# --- 5. the real stories260k model: greedy generation equals transformers ------------------------


def test_stories260k_greedy_generation_matches_transformers(stories_path):
  model = hf_checkpoint.load_model(stories_path)
  tok = hf_checkpoint.load_tokenizer(stories_path)
  cfg, params = model.cfg, model.params()
  assert (cfg.vocab_size, cfg.num_layers, cfg.tie_word_embeddings) == (512, 5, True)
  ids = tok("Once upon a time")["input_ids"]
  assert ids[0] == cfg.bos_token_id == 1
  new = 64

  tm = transformers.AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32).eval()
  with torch.no_grad():
    ref = tm.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=new)[0, len(ids):]
  ref = ref.numpy()

  bucket = 16
  n = len(ids)
  padded = np.zeros((1, bucket), np.int32)
  padded[0, :n] = ids

  @jax.jit
  def prefill(params, tokens, length):
    out = transformer.forward(cfg, params, tokens, cache=KVCache.init(cfg, 1, bucket + new))
    nxt = jnp.argmax(out.logits[0, length - 1]).astype(jnp.int32)
    return nxt, out.cache.with_lengths(jnp.full((1,), length, jnp.int32))

  @jax.jit
  def step(params, token, cache):
    out = transformer.forward(cfg, params, token.reshape(1, 1), cache=cache)
    return jnp.argmax(out.logits[0, -1]).astype(jnp.int32), out.cache

  nxt, cache = prefill(params, jnp.asarray(padded), n)
  got = [int(nxt)]
  for _ in range(new - 1):
    nxt, cache = step(params, nxt, cache)
    got.append(int(nxt))
  got = np.array(got)
  assert len(ref) == new, f"generate() stopped early: {tok.decode(ref)!r}"
  np.testing.assert_array_equal(got, ref, err_msg=tok.decode(got))
