"""SFT mode: the TTT unroll equals incremental decoding, a train step learns, `run` resumes to the
same result as an uninterrupted run, its export decodes losslessly, and the NaN guard keeps the
last good checkpoint."""

import json
import os

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs
from ppow_jax.data.selfdistill import SequenceData
from ppow_jax.decoding import engine
from ppow_jax.decoding.drafter_io import load_drafter
from ppow_jax.eagle3 import build_vocab_maps, load_eagle3
from ppow_jax.eagle3 import model as e3
from ppow_jax.eagle3 import train_step, ttt
from ppow_jax.eagle3.engine_adapter import Eagle3EngineDrafter
from ppow_jax.models import transformer
from ppow_jax.models.hf_checkpoint import load_model
from ppow_jax.modes import sft
from ppow_jax.training import data_feed, drafter_init, startup
from ppow_jax.training.checkpoints import Checkpointer
from ppow_jax.training.metrics import NonFiniteLossError, read_metrics

from conftest import random_eagle3_drafter

NUM_STEPS = 6


def _sft_config(stories_path, data_dir):
  """configs/sft.py shrunk to a seconds-long run (6 steps, checkpoints at 3 and 6)."""
  c = configs.load("sft")
  c.target.path = stories_path
  c.data.update(dir=data_dir, num_samples=24, num_heldout=4, max_new_tokens=31, seq_len=32,
                gen_batch_size=24)
  c.drafter.draft_vocab_size = 128  # exercise the d2t map in training, export and decoding
  c.ttt.steps = 2
  c.optim.update(learning_rate=1e-2, warmup_steps=2)
  # batch 8: the batch axis is split over the 8 simulated devices.
  c.train.update(num_steps=NUM_STEPS, batch_size=8, log_every=1, checkpoint_every=3,
                 keep_checkpoints=3)
  c.eval.update(windows=(), num_prompts=4, max_new_tokens=16, batch_size=4)
  return c


@pytest.fixture(scope="module")
def target(stories_path):
  return load_model(stories_path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("selfdistill"))


@pytest.fixture(scope="module")
def reference(stories_path, data_dir, tmp_path_factory):
  """An uninterrupted tiny run (it also generates the shared self-distillation data)."""
  workdir = str(tmp_path_factory.mktemp("ref"))
  config = _sft_config(stories_path, data_dir)
  config.eval.windows = (3,)
  result = sft.run(config, workdir)
  return workdir, config, result


def _rows(workdir):
  return [{k: v for k, v in r.items() if k not in ("step_time", "step_cpu_time")} for r in read_metrics(workdir)]


def _restore_params(workdir, config, target_cfg, step):
  """Params of checkpoint `step` (the structure comes from a fresh state of the same run)."""
  drafter = e3.Eagle3Drafter(e3.Eagle3Config.from_target(target_cfg, draft_vocab_size=128),
                             rngs=nnx.Rngs(0))
  opt = drafter_init.make_optimizer(config.optim, config.train.num_steps)
  params = drafter.params()
  state = {"params": params, "opt_state": opt.init(params), "step": jnp.zeros((), jnp.int32)}
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=10)
  try:
    state = ckpt.restore(state, step)
  finally:
    ckpt.close()
  assert int(state["step"]) == step
  return state["params"]


def _assert_trees_close(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


# --- TTT unroll == incremental decoding -----------------------------------------------------

def test_ttt_unroll_equals_incremental_decoding(target):
  """Step i at slot j == prefill pairs 0..j-i, then i single steps on the drafter's own hidden."""
  cfg = e3.Eagle3Config.from_target(target.cfg, draft_vocab_size=96)
  d = random_eagle3_drafter(cfg, seed=4, scale=0.15)
  p, tp = d.params(), target.params()
  b, t, steps = 2, 11, 6
  tokens = jax.random.randint(jax.random.key(3), (b, t), 2, cfg.vocab_size).at[:, 0].set(1)
  aux = transformer.forward(target.cfg, tp, tokens, hidden_layers=cfg.aux_layers).hidden
  unroll = jax.jit(ttt.unroll, static_argnums=(0, 5))
  unrolled = [np.asarray(x) for x in unroll(cfg, p, tp["embed"], tokens, aux, steps)]
  assert len(unrolled) == steps and unrolled[0].shape == (b, t, 96)

  feats = e3.fuse(p, aux)
  nxt = jnp.pad(tokens[:, 1:], ((0, 0), (0, 1)))  # slot j reads token j+1
  fwd = jax.jit(e3.forward, static_argnums=0)
  # One cached prefill of every pair; rolling the cache back to n slots leaves exactly the
  # prefill of pairs 0..n-1 (later slots are masked, then overwritten by the draft steps).
  full = fwd(cfg, p, tp["embed"], nxt, feats, e3.init_cache(cfg, b, t + 2))
  checked = set()
  for n in range(1, t):
    logits, hidden, cache = full.logits[:, n - 1], full.hidden[:, n - 1], full.cache
    cache = cache.with_lengths(jnp.full((b,), n, jnp.int32))
    for i in range(steps):
      j = n - 1 + i
      if j > t - 2:
        break
      if i:  # draft step i at slot j: token j+1 and the previous step's hidden state
        o = fwd(cfg, p, tp["embed"], nxt[:, j:j + 1], hidden[:, None], cache)
        logits, hidden, cache = o.logits[:, 0], o.hidden[:, 0], o.cache
      np.testing.assert_allclose(unrolled[i][:, j], logits, atol=1e-5, rtol=1e-5,
                                 err_msg=f"step {i} slot {j}")
      checked.add((i, j))
  assert {(i, j) for i in range(steps) for j in range(i, t - 1)} == checked
  # Feeding back the drafter's own state matters: later steps differ from step 0 on the slot.
  assert np.abs(unrolled[3][:, 5:] - unrolled[0][:, 5:]).max() > 1e-2


# --- one train step ---------------------------------------------------------------------------

@pytest.mark.slow
def test_train_step_lowers_loss_on_a_fixed_batch(stories_path, data_dir, target, reference):
  config = _sft_config(stories_path, data_dir)
  tgt = startup.Target(target, None)
  train, _ = data_feed.prepare_data(config, tgt, data_dir)  # cached by the reference run
  drafter = drafter_init.init_drafter(config, tgt, train)
  dcfg = drafter.cfg
  assert dcfg.draft_vocab_size == 128
  batch = {k: jnp.asarray(v) for k, v in SequenceData(train, 32, 8).batch(0).items()}
  assert batch["loss_mask"].any()
  opt = drafter_init.make_optimizer(config.optim, 11)
  step_fn = jax.jit(train_step.make_train_step(target.cfg, dcfg, opt, steps=2, decay=0.8))
  params = drafter.params()
  state = {"params": params, "opt_state": opt.init(params), "step": jnp.zeros((), jnp.int32)}
  tp, d2t = target.params(), drafter.d2t[...]

  # Step 0's loss is the TTT loss against the target's own features and logits.
  @jax.jit
  def reference_loss(params, batch):
    out = transformer.forward(target.cfg, tp, batch["tokens"], key_valid=batch["valid"],
                              hidden_layers=dcfg.aux_layers)
    return ttt.ttt_loss(dcfg, params, tp["embed"], d2t, batch["tokens"], out.hidden, out.logits,
                        batch["loss_mask"], steps=2, decay=0.8)

  ref_loss, ref_m = reference_loss(params, batch)

  hist = []
  for _ in range(11):
    state, m = step_fn(state, tp, d2t, batch)
    hist.append(jax.device_get(m))
  np.testing.assert_allclose(hist[0]["loss"], ref_loss, rtol=1e-5)
  np.testing.assert_allclose(hist[0]["step_loss"], ref_m["step_loss"], rtol=1e-5)
  assert int(state["step"]) == 11
  loss = [float(h["loss"]) for h in hist]
  acc0 = [float(h["step_acc"][0]) for h in hist]
  assert all(np.isfinite(loss)) and all(float(h["grad_norm"]) > 0 for h in hist)
  assert loss[-1] < 0.9 * loss[0], loss
  assert acc0[-1] > acc0[0] + 0.05, acc0


# --- run: export, resume, NaN guard -----------------------------------------------------------

@pytest.mark.slow
def test_run_writes_metrics_export_and_eval(reference, target):
  workdir, config, result = reference
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
  assert all(len(r["step_acc"]) == 2 and np.isfinite(r["loss"]) for r in rows)
  with open(os.path.join(workdir, "eval.json")) as f:
    ev = json.load(f)
  assert ev == result and ev["num_steps"] == NUM_STEPS
  assert 1.0 <= ev["tau_k3"] <= 4.0

  # The export holds exactly the final checkpoint's weights, with the data's vocabulary map.
  d = load_eagle3(os.path.join(workdir, "export"), target.cfg)
  assert d.cfg.draft_vocab_size == 128 and d.cfg.aux_layers == e3.default_aux_layers(5)
  _assert_trees_close(d.params(), _restore_params(workdir, config, target.cfg, NUM_STEPS),
                      rtol=0, atol=0)
  train, _ = data_feed.prepare_data(config, startup.Target(target, None), workdir)
  np.testing.assert_array_equal(
      d.d2t[...], build_vocab_maps(
          data_feed.selfdistill.token_counts(train, target.cfg.vocab_size), 128)[0])


@pytest.mark.slow
def test_heldout_temperature_and_stale_data_cache(reference, target, data_dir, caplog,
                                                  monkeypatch):
  """Held-out sequences are sampled at data.heldout_temperature, training ones at
  data.temperature; a cache made with other settings is reused as it is, with a warning that
  names the file and the fields."""
  _, config, _ = reference
  meta = data_feed.selfdistill.datasets.SelfDistillation(data_dir=data_dir).info.metadata
  assert meta["settings"]["train"]["temperature"] == config.data.temperature == 0.7
  assert meta["settings"]["heldout"]["temperature"] == config.data.heldout_temperature == 1.0
  train, heldout = data_feed.prepare_data(config, startup.Target(target, None), "unused")
  assert "reusing cached" not in caplog.text
  stale = config.copy_and_resolve_references()
  stale.data.update(temperature=0.5, num_samples=20)
  def no_decode(*a, **k):
    raise AssertionError("the cache was regenerated")
  monkeypatch.setattr(data_feed.selfdistill, "generate_split", no_decode)
  train2, heldout2 = data_feed.prepare_data(stale, startup.Target(target, None), "unused")
  assert [r.tolist() for r in train2] == [r.tolist() for r in train]
  assert [r.tolist() for r in heldout2] == [r.tolist() for r in heldout]
  assert "self_distillation/1.0.0: reusing cached self-distillation train split" in caplog.text
  assert "num_records=20, temperature=0.7; this config asks for num_records=16, temperature=0.5" \
      in caplog.text


@pytest.mark.slow
def test_data_seed_keeps_other_run_seeds_on_the_cached_data(reference, target, caplog,
                                                            monkeypatch):
  """data.seed fixes the sampling seed of the data: a run with another seed (PPOW's second seed
  in the pipeline) reads the cache without a stale-settings warning; data.seed = -1 follows the
  run's seed, so that run is told its data was sampled with another seed."""
  _, config, _ = reference
  assert config.data.seed == -1 and data_feed.data_seed(config) == config.seed
  def no_decode(*a, **k):
    raise AssertionError("the cache was regenerated")
  monkeypatch.setattr(data_feed.selfdistill, "generate_split", no_decode)
  other = config.copy_and_resolve_references()
  other.seed = config.seed + 1
  other.data.seed = config.seed
  assert data_feed.data_seed(other) == config.seed
  data_feed.prepare_data(other, startup.Target(target, None), "unused")
  assert "reusing cached" not in caplog.text
  other.data.seed = -1
  data_feed.prepare_data(other, startup.Target(target, None), "unused")
  assert f"seed={config.seed}; this config asks for seed={config.seed + 1}" in caplog.text


@pytest.mark.slow
def test_aux_layers_config(reference, target):
  _, config, _ = reference
  train, _ = data_feed.prepare_data(config, startup.Target(target, None), "unused")
  c = config.copy_and_resolve_references()
  c.drafter.aux_layers = "1,3,5"
  drafter = drafter_init.init_drafter(c, startup.Target(target, None), train)
  assert drafter.cfg.aux_layers == (1, 3, 5)
  for bad in ("1,3", "0,2,4", "1,3,6", "a,b,c"):
    c.drafter.aux_layers = bad
    with pytest.raises(ValueError, match=f"drafter.aux_layers='{bad}'"):
      drafter_init.init_drafter(c, startup.Target(target, None), train)


@pytest.mark.slow
def test_export_decodes_losslessly(reference, target):
  workdir, config, _ = reference
  tp = target.params()
  drafter, dparams = load_drafter(workdir, target.cfg, tp)  # a run dir resolves to export/
  assert isinstance(drafter, Eagle3EngineDrafter) and drafter.cfg.draft_vocab_size == 128
  _, heldout = data_feed.prepare_data(config, startup.Target(target, None), workdir)
  prompts = np.zeros((4, 16), np.int32)
  lens = np.array([3, 9, 16, 6], np.int32)
  for r, (rec, n) in enumerate(zip(heldout, lens)):
    prompts[r, :n] = rec[1:1 + n]
  kw = dict(max_new_tokens=16, eos_ids=target.cfg.eos_ids)  # the run's eval shapes: no recompile
  plain = engine.generate(target.cfg, tp, jnp.asarray(prompts), jnp.asarray(lens),
                          jax.random.key(0), **kw)
  spec = engine.generate(target.cfg, tp, jnp.asarray(prompts), jnp.asarray(lens),
                         jax.random.key(0), drafter=drafter, drafter_params=dparams, window=3, **kw)
  np.testing.assert_array_equal(spec.num_tokens, plain.num_tokens)
  np.testing.assert_array_equal(spec.tokens, plain.tokens)
  assert int(spec.num_steps.sum()) < int(plain.num_steps.sum())  # it did accept drafts


_REAL_BATCH = SequenceData.batch


class _Crash(Exception):
  pass


def _hook_batches(monkeypatch, crash_at=None, poison_at=None):
  """Wraps SequenceData.batch (batches are a function of the step): records the steps read,
  crashes before step `crash_at` or poisons step `poison_at`'s batch (its first token -> 2)."""
  steps = []
  real = _REAL_BATCH

  def batch(self, step):
    steps.append(step)
    if step == crash_at:
      raise _Crash(f"simulated crash before step {step}")
    out = real(self, step)
    if step == poison_at:
      out = dict(out, tokens=np.where(np.arange(out["tokens"].shape[1]) == 0, 2, out["tokens"]))
    return out

  monkeypatch.setattr(SequenceData, "batch", batch)
  return steps


@pytest.mark.slow
def test_resume_after_crash_equals_uninterrupted_run(reference, stories_path, data_dir, target,
                                                     tmp_path, monkeypatch):
  ref_dir, _, _ = reference
  workdir = str(tmp_path / "resumed")
  config = _sft_config(stories_path, data_dir)
  steps = _hook_batches(monkeypatch, crash_at=4)  # steps 1..4 done, checkpoint at 3
  with pytest.raises(_Crash):
    sft.run(config, workdir)
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4]
  assert not os.path.exists(os.path.join(workdir, "export"))

  assert steps == [0, 1, 2, 3, 4]
  steps = _hook_batches(monkeypatch)
  sft.run(config, workdir)
  assert steps == [3, 4, 5]  # resumed from checkpoint 3: only steps 4..6 ran again

  _assert_rows_close(workdir, ref_dir)
  a = load_eagle3(os.path.join(workdir, "export"), target.cfg)
  b = load_eagle3(os.path.join(ref_dir, "export"), target.cfg)
  _assert_trees_close(a.params(), b.params(), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(a.d2t[...], b.d2t[...])


def _assert_rows_close(a, b):
  ra, rb = _rows(a), _rows(b)
  assert [r["step"] for r in ra] == [r["step"] for r in rb]
  for x, y in zip(ra, rb):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_allclose(x[k], y[k], rtol=1e-6, err_msg=f"step {x['step']} {k}")


def _poisoned_target_forward(monkeypatch):
  """The target returns NaN states for a batch whose first token is 2 (never BOS, which is 1)."""
  real = transformer.forward

  def forward(cfg, params, tokens, **kw):
    out = real(cfg, params, tokens, **kw)
    bad = tokens[:, :1, None] == 2
    return out._replace(last_hidden=jnp.where(bad, jnp.nan, out.last_hidden))

  monkeypatch.setattr(transformer, "forward", forward)


@pytest.mark.slow
def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(reference, stories_path, data_dir,
                                                          target, tmp_path, monkeypatch):
  ref_dir, _, _ = reference
  workdir = str(tmp_path / "nan")
  config = _sft_config(stories_path, data_dir)
  _poisoned_target_forward(monkeypatch)
  _hook_batches(monkeypatch, poison_at=5)  # the step that would write checkpoint 6
  with pytest.raises(NonFiniteLossError, match=r"(?s)loss is nan at step.*checkpoint \(step 3\)"):
    sft.run(config, workdir)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=10)
  assert ckpt.latest_step() == 3
  ckpt.close()
  good = _restore_params(workdir, config, target.cfg, 3)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(good))
  _assert_trees_close(good, _restore_params(ref_dir, config, target.cfg, 3), rtol=1e-6, atol=1e-7)
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2, 3, 4, 5]
  assert not os.path.exists(os.path.join(workdir, "export"))


# --- cached features and bfloat16 compute ----------------------------------------------------

@pytest.mark.slow
def test_cached_features_run_matches_online_run(reference, stories_path, data_dir, target,
                                                tmp_path):
  """data.features=cached (bfloat16 features from one target pass) trains like the online
  run: same per-step losses to bfloat16 precision, same number of steps."""
  ref_dir, _, _ = reference
  config = _sft_config(stories_path, data_dir)
  config.data.features = "cached"
  workdir = str(tmp_path / "cached")
  sft.run(config, workdir)
  online, cached = _rows(ref_dir), _rows(workdir)
  assert [r["step"] for r in cached] == [r["step"] for r in online]
  for a, b in zip(online, cached):
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=2e-2)
  assert os.path.exists(os.path.join(data_dir, "features", "train-aux2_2_2-len32.npy"))


@pytest.mark.slow
def test_draft_vocab_logits_and_bfloat16_step(target):
  """The target's logits restricted to the draft vocabulary equal the full logits' columns;
  a bfloat16-compute step keeps float32 weights and a loss close to the float32 step's."""
  cfg = e3.Eagle3Config.from_target(target.cfg, draft_vocab_size=128)
  d = random_eagle3_drafter(cfg, seed=5, scale=0.15)
  tp = target.params()
  x = jax.random.randint(jax.random.key(0), (2, 16), 0, target.cfg.vocab_size)
  out = transformer.forward(target.cfg, tp, x)
  ids = ttt.draft_vocab_ids(d.d2t[...])
  np.testing.assert_allclose(train_step.draft_vocab_logits(tp, out.last_hidden, d.d2t[...]),
                             out.logits[..., ids], rtol=1e-5, atol=1e-5)
  opt = drafter_init.make_optimizer(_sft_config(".", ".").optim, 10)
  batch = {"tokens": x, "valid": jnp.ones(x.shape, bool), "loss_mask": jnp.ones(x.shape, bool)}
  losses = {}
  for dtype in ("float32", "bfloat16"):
    step = jax.jit(train_step.make_train_step(target.cfg, cfg, opt, steps=3, decay=0.8,
                                       compute_dtype=dtype))
    state = {"params": d.params(), "opt_state": opt.init(d.params()),
             "step": jnp.zeros((), jnp.int32)}
    new, m = step(state, tp, d.d2t[...], batch)
    losses[dtype] = float(m["loss"])
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(new["params"]))
  assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=2e-2)
  assert losses["bfloat16"] != losses["float32"]  # it did compute in bfloat16


@pytest.mark.slow
def test_init_head_from_target(reference, target):
  _, config, _ = reference
  config = config.copy_and_resolve_references()
  config.drafter.init_head_from_target = True
  train, _ = data_feed.prepare_data(config, startup.Target(target, None), "unused")
  d = drafter_init.init_drafter(config, startup.Target(target, None), train)
  ids = np.asarray(ttt.draft_vocab_ids(d.d2t[...]))
  tp = target.params()
  np.testing.assert_array_equal(np.asarray(d.lm_head[...]), np.asarray(tp["embed"]).T[:, ids])
  np.testing.assert_array_equal(np.asarray(d.norm[...]), np.asarray(tp["final_norm"]))
  # Copies: the train step donates the drafter's buffers and reads the target's in one call.
  assert (d.norm[...].unsafe_buffer_pointer()
          != jnp.asarray(tp["final_norm"]).unsafe_buffer_pointer())
  config.drafter.init_head_from_target = False
  fresh = drafter_init.init_drafter(config, startup.Target(target, None), train)
  assert not np.allclose(np.asarray(fresh.lm_head[...]), np.asarray(d.lm_head[...]))


@pytest.mark.slow
def test_feature_scale_tames_massive_dimensions(reference, target):
  """feature_scale: 1 for ordinary dimensions, below 1 exactly where a dimension's RMS exceeds
  its layer's median (a planted massive activation here); the fc update rows follow it."""
  _, config, _ = reference
  train, _ = data_feed.prepare_data(config, startup.Target(target, None), "unused")
  layers = (1, 2, 2)
  s = drafter_init.feature_scale(startup.Target(target, None), layers, train, 32)
  h = target.cfg.hidden_size
  assert s.shape == (3 * h,) and (s <= 1).all() and (s > 0).all()
  assert all((s[i * h:(i + 1) * h] == 1.0).mean() >= 0.5 for i in range(3))
  # A target whose embedding has one dimension 100x larger: that dimension of the layer-0 block
  # (the embeddings) gets about 1/100.
  params = jax.tree.map(lambda x: x, target.params())
  params["embed"] = params["embed"].at[:, 3].multiply(100.0)
  big = startup.Target(type("T", (), {"cfg": target.cfg, "params": lambda self: params})(),
                       None)
  s0 = drafter_init.feature_scale(big, (0, 1, 2), train, 32)
  assert s0[3] < 0.05 and np.delete(s0[:h], 3).min() > 0.2
  tx = drafter_init.scale_fc_updates(s0)
  upd = {"fc": jnp.ones((3 * h, 4)), "norm": jnp.ones(4)}
  out, _ = tx.update(upd, tx.init(upd))
  np.testing.assert_allclose(np.asarray(out["fc"][:, 0]), s0)
  assert (np.asarray(out["norm"]) == 1).all()
