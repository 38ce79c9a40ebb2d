"""EAGLE-3 drafter: layer math vs an independent torch reference, KV-cache equivalence, vocab maps,
and the published checkpoint layout (export/import, safetensors names, validation errors)."""

import json
import os

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppow_jax.eagle3 import (
    NEG_LOGIT, Eagle3Config, Eagle3Drafter, build_vocab_maps, default_aux_layers,
    draft_to_target_logits, forward, fuse, init_cache, load_eagle3, read_embed_tokens, save_eagle3)
from ppow_jax.models import safetensors_io
from ppow_jax.models.config import ConfigError, ModelConfig
from ppow_jax.models.hf_checkpoint import CheckpointError

from conftest import random_eagle3_drafter

V, VD, H, HT = 64, 16, 32, 48


def _cfg(**kw):
  base = dict(hidden_size=H, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=48,
              rms_norm_eps=1e-5, rope_theta=10000.0, vocab_size=V, draft_vocab_size=VD,
              target_hidden_size=HT, aux_layers=(1, 2, 3))
  base.update(kw)
  return Eagle3Config(**base)


# --- layer math against an independent torch re-implementation ----------------------------

def _torch_reference(cfg, hf, emb, aux, norm_before_residual):
  """EAGLE-3 midlayer in torch, written from EAGLE `cnets.py`'s description, on HF [out, in] weights.

  Returns (draft logits, pre-norm hidden) for one uncached pass over positions 0..T-1.
  """
  torch = pytest.importorskip("torch")
  t = {k: torch.tensor(np.asarray(v, np.float64)) for k, v in hf.items()}
  emb, aux = torch.tensor(np.asarray(emb, np.float64)), torch.tensor(np.asarray(aux, np.float64))
  eps = cfg.rms_norm_eps

  def rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

  def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

  b, n, _ = emb.shape
  nh, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  feat = aux @ t["fc.weight"].T
  normed = rms(feat, t["midlayer.hidden_norm.weight"])
  residual = normed if norm_before_residual else feat
  x = torch.cat((rms(emb, t["midlayer.input_layernorm.weight"]), normed), dim=-1)
  q = (x @ t["midlayer.self_attn.q_proj.weight"].T).view(b, n, nh, hd).transpose(1, 2)
  k = (x @ t["midlayer.self_attn.k_proj.weight"].T).view(b, n, nkv, hd).transpose(1, 2)
  v = (x @ t["midlayer.self_attn.v_proj.weight"].T).view(b, n, nkv, hd).transpose(1, 2)
  inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
  ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None]
  cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
  q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
  k = k.repeat_interleave(nh // nkv, dim=1)
  v = v.repeat_interleave(nh // nkv, dim=1)
  scores = q @ k.transpose(2, 3) / hd ** 0.5
  scores = scores + torch.triu(torch.full((n, n), float("-inf"), dtype=torch.float64), 1)
  attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, nh * hd)
  h = residual + attn @ t["midlayer.self_attn.o_proj.weight"].T
  y = rms(h, t["midlayer.post_attention_layernorm.weight"])
  mlp = (torch.nn.functional.silu(y @ t["midlayer.mlp.gate_proj.weight"].T)
         * (y @ t["midlayer.mlp.up_proj.weight"].T)) @ t["midlayer.mlp.down_proj.weight"].T
  h = h + mlp
  logits = rms(h, t["norm.weight"]) @ t["lm_head.weight"].T
  return logits.numpy(), h.numpy()


@pytest.mark.parametrize("norm_before_residual", [False, True])
def test_forward_matches_torch_reference(norm_before_residual):
  from ppow_jax.eagle3.checkpoint import hf_tensors
  cfg = _cfg(norm_before_residual=norm_before_residual)
  d = random_eagle3_drafter(cfg)
  k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
  embed = jax.random.normal(k1, (V, H))
  tokens = jax.random.randint(k2, (2, 6), 0, V)
  aux = jax.random.normal(k3, (2, 6, 3 * HT))
  feat = fuse(d.params(), aux)
  logits, hidden, cache = forward(cfg, d.params(), embed, tokens, feat)
  assert cache is None and logits.dtype == jnp.float32 and logits.shape == (2, 6, VD)
  ref_logits, ref_hidden = _torch_reference(cfg, hf_tensors(d), np.asarray(embed)[tokens], aux,
                                            norm_before_residual)
  np.testing.assert_allclose(hidden, ref_hidden, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(logits, ref_logits, rtol=2e-4, atol=2e-4)


def test_fuse_concatenates_low_mid_high_in_order():
  cfg = _cfg()
  p = random_eagle3_drafter(cfg).params()
  parts = [jax.random.normal(jax.random.key(i), (1, 3, HT)) for i in range(3)]
  want = np.concatenate(parts, -1) @ np.asarray(p["fc"])
  np.testing.assert_allclose(fuse(p, parts), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fuse(p, jnp.concatenate(parts, -1)), want, rtol=1e-5, atol=1e-5)
  swapped = fuse(p, [parts[1], parts[0], parts[2]])
  assert not np.allclose(swapped, want, atol=1e-3)


# --- KV cache ------------------------------------------------------------------------------

def test_cached_forward_equals_uncached():
  cfg = _cfg(num_kv_heads=2)
  d = random_eagle3_drafter(cfg, seed=3)
  p = d.params()
  k1, k2, k3 = jax.random.split(jax.random.key(11), 3)
  embed = jax.random.normal(k1, (V, H))
  tokens = jax.random.randint(k2, (2, 9), 0, V)
  feats = jax.random.normal(k3, (2, 9, H))
  full_logits, full_hidden, _ = forward(cfg, p, embed, tokens, feats)

  step = jax.jit(forward, static_argnums=0)
  cache = init_cache(cfg, 2, 16)
  assert cache.k.shape == (1, 2, cfg.num_kv_heads, 16, cfg.head_dim)  # head-major
  outs = []
  for lo, hi in ((0, 4), (4, 5), (5, 6), (6, 9)):  # prefill, two single steps, a 3-token window
    o = step(cfg, p, embed, tokens[:, lo:hi], feats[:, lo:hi], cache)
    cache = o.cache
    outs.append(o)
  np.testing.assert_array_equal(cache.lengths, [9, 9])
  np.testing.assert_allclose(jnp.concatenate([o.logits for o in outs], 1), full_logits,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jnp.concatenate([o.hidden for o in outs], 1), full_hidden,
                             rtol=1e-5, atol=1e-5)

  # Roll row 1 back to 6 tokens and draft a different window there: row 1 must match an
  # uncached pass over its edited sequence, row 0 (left at 9) continues its own.
  cache = cache.with_lengths(jnp.array([9, 6]))
  new_tok = jax.random.randint(jax.random.key(5), (2, 2), 0, V)
  new_feat = jax.random.normal(jax.random.key(6), (2, 2, H))
  o = step(cfg, p, embed, new_tok, new_feat, cache)
  np.testing.assert_array_equal(o.cache.lengths, [11, 8])
  for row, keep in ((0, 9), (1, 6)):
    seq_t = jnp.concatenate([tokens[row:row + 1, :keep], new_tok[row:row + 1]], 1)
    seq_f = jnp.concatenate([feats[row:row + 1, :keep], new_feat[row:row + 1]], 1)
    ref = forward(cfg, p, embed, seq_t, seq_f)
    np.testing.assert_allclose(o.logits[row], ref.logits[0, keep:], rtol=1e-5, atol=1e-5)


# --- vocab maps ----------------------------------------------------------------------------

def test_build_vocab_maps_hand_example():
  d2t, t2d = build_vocab_maps(np.array([5, 0, 7, 7, 1, 3]), 3)
  # Most frequent: ids 2 and 3 (7 each), then 0 (5) -> draft ids 0,1,2 = target ids 0,2,3.
  assert d2t.dtype == np.int64 and t2d.dtype == np.bool_
  np.testing.assert_array_equal(d2t, [0, 1, 1])
  np.testing.assert_array_equal(t2d, [True, False, True, True, False, False])
  # Ties broken by the lower id.
  d2t, t2d = build_vocab_maps(np.array([1, 2, 2, 2, 0]), 2)
  np.testing.assert_array_equal(np.arange(2) + d2t, [1, 2])
  d2t, t2d = build_vocab_maps(np.array([3, 1, 2]), 3)
  np.testing.assert_array_equal(d2t, [0, 0, 0])
  assert t2d.all()
  with pytest.raises(ValueError, match="draft_vocab_size"):
    build_vocab_maps(np.ones(4), 5)


def test_draft_to_target_logits_places_logits_at_target_ids():
  d2t = jnp.array([0, 1, 1, 3])  # draft ids 0..3 -> target ids 0, 2, 3, 6
  draft = jnp.array([[[1.0, 2.0, 3.0, 4.0]], [[-1.0, 0.5, 9.0, -2.0]]])
  full = draft_to_target_logits(d2t, draft, 8)
  assert full.shape == (2, 1, 8) and full.dtype == jnp.float32
  np.testing.assert_array_equal(full[..., [0, 2, 3, 6]], draft)
  np.testing.assert_array_equal(full[..., [1, 4, 5, 7]], np.float32(NEG_LOGIT))
  probs = jax.nn.softmax(full, -1)
  assert np.isfinite(probs).all()
  np.testing.assert_allclose(probs[..., [0, 2, 3, 6]], jax.nn.softmax(draft, -1), rtol=1e-6)
  np.testing.assert_array_equal(jnp.argmax(full, -1)[:, 0], [6, 3])


# --- config --------------------------------------------------------------------------------

def test_from_target_and_default_aux_layers():
  t = ModelConfig(num_layers=32, hidden_size=64, vocab_size=100, rope_theta=5e5)
  c = Eagle3Config.from_target(t, draft_vocab_size=40)
  assert c.aux_layers == (2, 16, 29)  # vLLM's (2, L//2, L-3)
  assert (c.vocab_size, c.draft_vocab_size, c.target_hidden_size, c.rope_theta) == (100, 40, 64, 5e5)
  assert Eagle3Config.from_target(t).draft_vocab_size == 100
  assert default_aux_layers(2) == (1, 1, 2)  # clamped into [1, L], sorted low..high
  assert default_aux_layers(5) == (2, 2, 2)
  with pytest.raises(ConfigError, match="num_layers"):
    _cfg(num_layers=2)
  with pytest.raises(ConfigError, match="aux_layers"):
    _cfg(aux_layers=(0, 1, 2))


# --- checkpoint layout ---------------------------------------------------------------------

EXPECTED_SHAPES = {
    "fc.weight": (H, 3 * HT),
    "midlayer.input_layernorm.weight": (H,),
    "midlayer.hidden_norm.weight": (H,),
    "midlayer.self_attn.q_proj.weight": (32, 2 * H),
    "midlayer.self_attn.k_proj.weight": (16, 2 * H),
    "midlayer.self_attn.v_proj.weight": (16, 2 * H),
    "midlayer.self_attn.o_proj.weight": (H, 32),
    "midlayer.post_attention_layernorm.weight": (H,),
    "midlayer.mlp.gate_proj.weight": (48, H),
    "midlayer.mlp.up_proj.weight": (48, H),
    "midlayer.mlp.down_proj.weight": (H, 48),
    "norm.weight": (H,),
    "lm_head.weight": (VD, H),
    "d2t": (VD,),
    "t2d": (V,),
}


@pytest.fixture
def saved(tmp_path):
  d = random_eagle3_drafter(_cfg(aux_layers=(2, 3, 5)), seed=1)
  path = str(tmp_path / "drafter")
  save_eagle3(d, path)
  return d, path


def test_export_import_roundtrip_is_exact(saved):
  d, path = saved
  back = load_eagle3(path)
  assert back.cfg == d.cfg
  jax.tree.map(np.testing.assert_array_equal, back.params(), d.params())
  np.testing.assert_array_equal(back.d2t[...], d.d2t[...])
  np.testing.assert_array_equal(back.t2d[...], d.t2d[...])
  assert not bool(jnp.all(d.d2t[...] == 0))  # the map really was non-trivial
  with open(os.path.join(path, "config.json")) as f:
    c = json.load(f)
  assert c["architectures"] == ["LlamaForCausalLMEagle3"] and c["model_type"] == "llama"
  assert (c["num_hidden_layers"], c["draft_vocab_size"], c["vocab_size"]) == (1, VD, V)
  assert c["target_hidden_size"] == HT and c["tie_word_embeddings"] is False
  assert c["eagle_aux_hidden_state_layer_ids"] == [2, 3, 5]  # vLLM: input of layer i
  assert c["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 2, 4]  # SpecForge: output of j
  assert read_embed_tokens(path) is None


def test_export_reads_with_real_safetensors(saved):
  safetensors = pytest.importorskip("safetensors")
  d, path = saved
  with safetensors.safe_open(os.path.join(path, "model.safetensors"), framework="numpy") as f:
    assert set(f.keys()) == set(EXPECTED_SHAPES)
    for name, shape in EXPECTED_SHAPES.items():
      assert f.get_tensor(name).shape == shape, name
    assert f.get_tensor("d2t").dtype == np.int64 and f.get_tensor("t2d").dtype == np.bool_
    np.testing.assert_array_equal(f.get_tensor("lm_head.weight"), np.asarray(d.params()["lm_head"]).T)
    np.testing.assert_array_equal(f.get_tensor("d2t"), d.d2t[...])


def test_aux_ids_from_eagle_config_convention(saved, tmp_path):
  _, path = saved
  fname = os.path.join(path, "config.json")
  with open(fname) as f:
    c = json.load(f)
  del c["eagle_aux_hidden_state_layer_ids"]  # as SpecForge publishes: eagle_config only
  c["eagle_config"]["eagle_aux_hidden_state_layer_ids"] = [0, 3, 4]
  with open(fname, "w") as f:
    json.dump(c, f)
  assert load_eagle3(path).cfg.aux_layers == (1, 4, 5)
  del c["eagle_config"]  # no ids at all: the target's default is needed
  with open(fname, "w") as f:
    json.dump(c, f)
  with pytest.raises(ConfigError, match="target_cfg"):
    load_eagle3(path)
  target = ModelConfig(vocab_size=V, hidden_size=HT, num_layers=8, num_heads=4, num_kv_heads=2,
                       head_dim=12)
  assert load_eagle3(path, target).cfg.aux_layers == (2, 4, 5)


def test_load_refuses_mismatched_vocab_and_missing_dir(saved, tmp_path):
  _, path = saved
  target = ModelConfig(vocab_size=V + 8, hidden_size=HT, num_layers=8, num_heads=4,
                       num_kv_heads=2, head_dim=12)
  with pytest.raises(ConfigError, match=rf"vocab_size={V}\b.*vocab_size={V + 8}"):
    load_eagle3(path, target)
  ok = target.replace(vocab_size=V)
  assert load_eagle3(path, ok).cfg.vocab_size == V
  with pytest.raises(ConfigError, match="aux_layers"):
    load_eagle3(path, ok.replace(num_layers=4))
  with pytest.raises(FileNotFoundError, match="not found"):
    load_eagle3(str(tmp_path / "nope"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_eagle3(str(tmp_path / "empty"))


def _rewrite(path, edit):
  fname = os.path.join(path, "model.safetensors")
  tensors = {k: np.array(v) for k, v in safetensors_io.load(fname).items()}
  edit(tensors)
  safetensors_io.save(fname, tensors)
  return fname


def test_missing_or_misshaped_tensor_is_named(saved):
  _, path = saved
  fname = _rewrite(path, lambda t: t.pop("midlayer.hidden_norm.weight"))
  with pytest.raises(CheckpointError, match=r"model\.safetensors.*'midlayer\.hidden_norm\.weight'"):
    load_eagle3(path)
  _rewrite(path, lambda t: t.update({"midlayer.hidden_norm.weight": np.ones(H, np.float32),
                                     "fc.weight": np.zeros((H, 3 * H), np.float32)}))
  with pytest.raises(CheckpointError, match=rf"'fc\.weight' has shape \({H}, {3 * H}\), "
                                            rf"expected \({H}, {3 * HT}\)"):
    load_eagle3(path)
  assert os.path.basename(fname) == "model.safetensors"


def test_full_vocab_export_omits_vocab_maps_and_reimports(tmp_path):
  """Draft vocabulary = target vocabulary: no d2t/t2d (vLLM creates its d2t parameter only for a
  reduced vocabulary, EAGLE drops both), the config fields the serving readers use, and an exact
  re-import with identity maps."""
  d = random_eagle3_drafter(_cfg(draft_vocab_size=V, target_hidden_size=H))
  embed = np.random.default_rng(0).normal(size=(V, H)).astype(np.float32)
  path = str(tmp_path / "d")
  save_eagle3(d, path, embed_table=embed)
  safetensors = pytest.importorskip("safetensors")
  with safetensors.safe_open(os.path.join(path, "model.safetensors"), framework="numpy") as f:
    assert set(f.keys()) == (set(EXPECTED_SHAPES) - {"d2t", "t2d"}) | {"embed_tokens.weight"}
  with open(os.path.join(path, "config.json")) as f:
    c = json.load(f)
  assert c["draft_vocab_size"] == c["vocab_size"] == V
  assert "target_hidden_size" not in c  # equal to hidden_size: EAGLE would stop sharing embeddings
  assert c["eagle_config"] == {"eagle_aux_hidden_state_layer_ids": [0, 1, 2],
                               "use_aux_hidden_state": True}
  assert c["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3] and "norm_output" not in c
  back = load_eagle3(path)
  assert back.cfg == d.cfg
  jax.tree.map(np.testing.assert_array_equal, back.params(), d.params())
  np.testing.assert_array_equal(back.d2t[...], 0)
  assert bool(back.t2d[...].all())
  np.testing.assert_array_equal(read_embed_tokens(path), embed)
  _rewrite(path, lambda t: t.update({"embed_tokens.weight": np.zeros((V, H + 1), np.float32)}))
  with pytest.raises(CheckpointError, match=rf"'embed_tokens\.weight' has shape \({V}, {H + 1}\)"):
    load_eagle3(path)


# --- with the real target --------------------------------------------------------------------

def test_drafter_on_real_target_features(stories_path):
  from ppow_jax.models.hf_checkpoint import load_model
  from ppow_jax.models.transformer import forward as target_forward
  target = load_model(stories_path)
  cfg = Eagle3Config.from_target(target.cfg, draft_vocab_size=128)
  assert cfg.aux_layers == (2, 2, 2)  # 5 layers: (2, 5//2, 5-3)
  d = Eagle3Drafter(cfg, rngs=nnx.Rngs(0))
  tokens = jnp.array([[1, 40, 80, 120, 7]])
  tp = target.params()
  out = target_forward(target.cfg, tp, tokens, hidden_layers=cfg.aux_layers)
  feat = d.fuse(out.hidden)
  logits, hidden, _ = d(tp["embed"], tokens, feat)
  assert logits.shape == (1, 5, 128) and hidden.shape == (1, 5, target.cfg.hidden_size)
  full = d.to_target_logits(logits)
  assert full.shape == (1, 5, 512) and np.isfinite(full).all()


def test_export_warns_when_aux_layers_repeat(tmp_path, caplog):
  """vLLM and SGLang capture each target layer once: a repeated aux layer is not servable."""
  save_eagle3(random_eagle3_drafter(_cfg(aux_layers=(1, 2, 3))), str(tmp_path / "ok"))
  assert "capture each layer once" not in caplog.text
  save_eagle3(random_eagle3_drafter(_cfg(aux_layers=(2, 2, 3))), str(tmp_path / "repeat"))
  assert "aux_layers=[2, 2, 3] name a layer twice" in caplog.text


def _published_checkpoint(path, target_cfg, *, draft_vocab, embed, style, seed):
  """A drafter directory as EAGLE's repo or SpecForge's HF export writes it (random weights)."""
  from ppow_jax.eagle3.checkpoint import config_to_hf_dict, hf_tensors
  d = random_eagle3_drafter(Eagle3Config.from_target(target_cfg, draft_vocab_size=draft_vocab), seed)
  tensors = hf_tensors(d)
  tensors["d2t"] = np.asarray(d.d2t[...], np.int64)  # both write the maps, even for a full vocab
  tensors["t2d"] = np.asarray(d.t2d[...], np.bool_)
  tensors["embed_tokens.weight"] = embed
  c = config_to_hf_dict(d.cfg)
  del c["eagle_aux_hidden_state_layer_ids"], c["eagle_config"], c["rope_parameters"]
  if style == "eagle":  # no aux layer ids (the target's default), float16, torch-era fields
    c.update(torch_dtype="float16", transformers_version="4.28.1", pad_token_id=0)
    del c["dtype"], c["norm_before_residual"]
    tensors = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in tensors.items()}
  else:  # SpecForge: ids in eagle_config only, output-of-layer convention
    c["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in d.cfg.aux_layers]}
  os.makedirs(path)
  if style == "eagle":  # EAGLE publishes torch.save'd weights
    torch = pytest.importorskip("torch")
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()},
               os.path.join(path, "pytorch_model.bin"))
  else:
    safetensors_io.save(os.path.join(path, "model.safetensors"), tensors, {"format": "pt"})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(c, f)
  return d


@pytest.mark.slow
@pytest.mark.parametrize("style,draft_vocab", [("eagle", 128), ("specforge", None)])
def test_published_layout_with_embed_tokens_imports_and_decodes_losslessly(
    stories_path, tmp_path, style, draft_vocab):
  from ppow_jax.decoding import runner
  from ppow_jax.eagle3.engine_adapter import load_for_engine
  from ppow_jax.models.hf_checkpoint import load_model
  target = load_model(stories_path)
  tp = target.params()
  # EAGLE-style: an embedding of its own; SpecForge-style: the frozen copy of the target's.
  embed = (np.random.default_rng(3).normal(size=np.shape(tp["embed"])).astype(np.float32)
           if style == "eagle" else np.asarray(tp["embed"]))
  path = str(tmp_path / style)
  d = _published_checkpoint(path, target.cfg, draft_vocab=draft_vocab, embed=embed, style=style,
                            seed=5)
  drafter, params = load_for_engine(path, target.cfg, tp)
  assert drafter.cfg.aux_layers == d.cfg.aux_layers == (2, 2, 2)
  assert drafter.cfg.dtype == ("bfloat16" if style == "eagle" else "float32")
  np.testing.assert_allclose(np.asarray(params["embed"], np.float32),
                             np.asarray(embed.astype(np.float16) if style == "eagle" else embed,
                                        np.float32), rtol=1e-2)
  np.testing.assert_array_equal(params["d2t"], d.d2t[...])
  prompts = [[1, 403, 407, 261, 378], [1, 291, 280, 294, 300, 40]]
  s = runner.DecodeSettings(window=4, max_new_tokens=20, batch_size=2)
  ar = runner.decode(target.cfg, tp, prompts, s, progress=False)
  spec = runner.decode(target.cfg, tp, prompts, s, drafter=drafter, drafter_params=params,
                       progress=False)
  assert [r.output_token_ids for r in spec] == [r.output_token_ids for r in ar]
  assert all(len(r.output_token_ids) == 20 for r in ar)
