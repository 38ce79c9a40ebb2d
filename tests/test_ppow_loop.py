"""PPOW loop must-shows: the same losses and rewards on 1 and 8 devices, `kill -9` + restart ends
where an uninterrupted run ends, the NaN guard keeps the last good checkpoint, and the metrics and
ablation switches (windowing, proximity reward) behave as documented.

Everything runs on the stories260k target with a drafter SFT-trained for a few dozen steps (a
fresh drafter is never accepted, which would make every reward 0 and these checks toothless).
"""

import dataclasses
import functools
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs
from ppow_jax.data import selfdistill
from ppow_jax.eagle3 import load_eagle3
from ppow_jax.models import safetensors_io
from ppow_jax.modes import ppow as ppow_mode
from ppow_jax.modes import sft
from ppow_jax.parallel import sharding
from ppow_jax.ppow import objective
from ppow_jax.ppow.step import make_ppow_step
from ppow_jax.training import drafter_init, startup
from ppow_jax.training.checkpoints import Checkpointer
from ppow_jax.training.metrics import NonFiniteLossError, read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = {"data.num_samples": 20, "data.num_heldout": 4, "data.max_new_tokens": 31,
        "data.seq_len": 32, "data.gen_batch_size": 16}
# Every setting the checks rely on is pinned here, not taken from the config's defaults.
TINY = {"ppow.window": 4, "ppow.group_size": 4, "ppow.prefixes_per_seq": 1,
        "ppow.windowing": True, "ppow.windowing_start": 0, "ppow.windowing_mode": "top",
        "ppow.use_proximity": True, "ppow.gamma": 0.12, "ppow.eta": 0.5, "ppow.epsilon": 2.0,
        "ppow.beta": 0.02, "ppow.aux_coef": 0.1, "ppow.ppo_epochs": 2,
        "optim.learning_rate": 3e-4, "optim.warmup_steps": 2, "train.batch_size": 8,
        "train.log_every": 1, "eval.windows": ()}
NUM_STEPS = 8
RUN = {"train.num_steps": NUM_STEPS, "train.checkpoint_every": 2, "train.keep_checkpoints": 2}
METRIC_KEYS = ("loss", "policy_loss", "kl", "clip_fraction", "aux_ce", "grad_norm", "reward",
               "mean_k", "rollout_tau", "k0_share", "window_score_selected", "window_score_mean",
               "window_score_max", "valid_windows", "step_time", "step_cpu_time")


def _config(name, overrides):
  c = configs.load(name)
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = c
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


def _flags(overrides):
  return [f"--config.{k}={v}" for k, v in overrides.items()]


@pytest.fixture(scope="module")
def start(stories_path, tmp_path_factory):
  """Shared self-distillation data and a drafter export that the target accepts sometimes."""
  root = tmp_path_factory.mktemp("ppow_loop")
  data = str(root / "data")
  c = _config("sft", {"target.path": stories_path, "data.dir": data, **DATA, "ttt.steps": 2,
                      "optim.learning_rate": 1e-2, "optim.warmup_steps": 2,
                      "train.num_steps": 60, "train.batch_size": 8, "train.log_every": 60,
                      "train.checkpoint_every": 1000, "eval.windows": ()})
  sft.run(c, str(root / "sft"))
  base = {"target.path": stories_path, "drafter.init_from": str(root / "sft" / "export"),
          "data.dir": data, **DATA, **TINY}
  return {"root": root, "base": base}


def _run_ppow(start, name, overrides):
  """ppow.run in-process; returns (workdir, the mesh it used)."""
  workdir = str(start["root"] / name)
  meshes = []
  real = sharding.make_mesh

  def spy(shape, devices=None):
    meshes.append(real(shape, devices))
    return meshes[-1]

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sharding, "make_mesh", spy)
    ppow_mode.run(_config("ppow", {**start["base"], **overrides}), workdir)
  return workdir, meshes[0]


def _rows(workdir):
  return [{k: v for k, v in r.items() if k not in ("step_time", "step_cpu_time")} for r in read_metrics(workdir)]


def _export(workdir):
  return safetensors_io.load(os.path.join(workdir, "export", "model.safetensors"))


def _cli(start, workdir, overrides):
  """`python -m ppow_jax.main --config configs/ppow.py ...` on one CPU device."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             # The CLI runs compile one program: share it through the persistent cache.
             JAX_COMPILATION_CACHE_DIR=str(start["root"] / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  cmd = [sys.executable, "-m", "ppow_jax.main", "--config", "configs/ppow.py",
         "--workdir", workdir, *_flags({**start["base"], **overrides})]
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(proc):
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-3000:]


@pytest.fixture(scope="module")
def reference(start):
  """An uninterrupted CLI run on one device: the baseline for sharding and kill-and-resume."""
  workdir = str(start["root"] / "reference")
  _finish(_cli(start, workdir, RUN))
  return workdir


# --- 1. sharding equivalence ------------------------------------------------------------------

# data=8 (one sequence per device) passes too but costs another ~17 CPU-seconds of compiling;
# 2x2x2 also splits the batch (over data x fsdp) and adds tensor-parallel vocab / heads / MLP.
@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("mesh,shape", [
    ({"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}, {"data": 2, "fsdp": 2, "tensor": 2}),
], ids=["data2_fsdp2_tensor2"])
def test_sharded_run_matches_one_device(start, reference, mesh, shape):
  """8 simulated devices give the same per-step losses, rewards and weights as 1 device."""
  name = "sharded_" + "_".join(str(v) for v in shape.values())
  workdir, used = _run_ppow(start, name, {**RUN, "train.checkpoint_every": 100, **mesh})
  assert dict(used.shape) == shape
  want, got = _rows(reference), _rows(workdir)
  assert [r["step"] for r in got] == list(range(1, NUM_STEPS + 1))
  # The rollouts have signal: some windows accepted, some rejected at the first token.
  assert any(r["mean_k"] > 0 for r in want) and any(r["k0_share"] > 0 for r in want)
  for w, g in zip(want, got):
    assert w.keys() == g.keys()
    for k in w:
      # clip_fraction is a share of tokens: reduction-order noise may move one token across
      # the clip boundary.
      atol = 0.02 if k == "clip_fraction" else 1e-4
      np.testing.assert_allclose(g[k], w[k], rtol=1e-3, atol=atol, err_msg=f"step {w['step']} {k}")
  a, b = _export(reference), _export(workdir)
  assert a.keys() == b.keys()
  lr = TINY["optim.learning_rate"]
  for k in a:
    # Sharded reductions sum in another order; Adam divides by sqrt(v), so an element whose
    # gradient is ~0 can turn float noise into a visible fraction of one step (seen: 1.2e-5 =
    # 0.04 lr after 8 steps). Nearly every element must agree to 1e-6 and none by a tenth of lr.
    diff = np.abs(np.asarray(b[k], np.float64) - np.asarray(a[k], np.float64))
    assert diff.max() <= 0.1 * lr, f"{k}: max |diff| {diff.max():.3g}"
    assert np.mean(diff <= 1e-6 + 1e-4 * np.abs(a[k])) >= 0.999, f"{k}: too many elements differ"


# --- 2. kill -9 and resume --------------------------------------------------------------------

def _committed_steps(ckpt_dir):
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


@pytest.mark.slow
@pytest.mark.e2e
def test_kill_and_resume_matches_uninterrupted_run(start, reference):
  """`kill -9` after the first checkpoint, rerun: the export and metrics equal an uninterrupted
  run's, and a half-written orbax temporary directory does not break the restore."""
  workdir = str(start["root"] / "killed")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  proc = _cli(start, workdir, RUN)
  deadline = time.time() + 600
  while not _committed_steps(ckpt_dir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  assert proc.poll() is None, "the run ended before it could be killed mid-run"
  os.kill(proc.pid, signal.SIGKILL)
  proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  resumed_from = _committed_steps(ckpt_dir)[-1]
  assert 1 <= resumed_from < NUM_STEPS and not os.path.exists(os.path.join(workdir, "export"))
  killed_rows = read_metrics(workdir)
  # What a kill during the next save leaves behind: orbax's temporary directory, half written.
  next_save = (resumed_from // 2 + 1) * 2
  junk = os.path.join(ckpt_dir, f"{next_save}.orbax-checkpoint-tmp")
  os.makedirs(junk, exist_ok=True)
  pathlib.Path(junk, "partial").write_bytes(b"\0" * 7)
  c = Checkpointer(ckpt_dir, every_steps=2, keep=2)
  assert c.latest_step() == resumed_from  # a temporary directory is never a checkpoint
  c.close()

  _finish(_cli(start, workdir, RUN))
  want, got = read_metrics(reference), read_metrics(workdir)
  assert [r["step"] for r in got] == list(range(1, NUM_STEPS + 1))
  # Rows up to the checkpoint are the killed process's own: the rerun resumed, not restarted.
  assert got[:resumed_from] == [r for r in killed_rows if r["step"] <= resumed_from]
  for w, g in zip(want, got):
    assert w.keys() == g.keys()
    for k in w:
      if k not in ("step_time", "step_cpu_time"):
        np.testing.assert_allclose(g[k], w[k], rtol=0, atol=1e-6, err_msg=f"step {w['step']} {k}")
  a, b = _export(reference), _export(workdir)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-6, err_msg=k)
  assert _committed_steps(ckpt_dir)[-1] == NUM_STEPS


# --- 3. NaN guard -----------------------------------------------------------------------------

def _poison(monkeypatch, kind, from_step):
  """From state step `from_step` on, the PPOW loss is NaN ("loss") or its gradient is ("grads":
  the loss stays finite, the update ruins the weights)."""
  real_make, real_loss = ppow_mode.make_ppow_step, objective.ppow_loss
  bad = {}

  def make(*args, **kw):
    step_fn = real_make(*args, **kw)

    def wrapped(state, *rest):
      bad["now"] = state["step"] >= from_step  # read by the loss while this step is traced
      return step_fn(state, *rest)

    return wrapped

  def loss(*args, **kw):
    value, m = real_loss(*args, **kw)
    b = bad["now"]
    if kind == "loss":
      return jnp.where(b, jnp.nan, value), m
    # d/dx sqrt(0 * x) = inf * 0 = NaN, while the value is unchanged.
    return value + jnp.sqrt(jnp.where(b, 0.0 * value, 1.0)) - jnp.where(b, 0.0, 1.0), m

  monkeypatch.setattr(ppow_mode, "make_ppow_step", make)
  monkeypatch.setattr(objective, "ppow_loss", loss)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["loss", "grads"])
def test_nonfinite_step_stops_and_keeps_last_good_checkpoint(start, monkeypatch, kind):
  """Step 3 goes bad: the run stops there, naming it, and checkpoint 2 is the latest, finite."""
  _poison(monkeypatch, kind, from_step=2)
  # One PPO epoch: with two, NaN weights from the first would already make the loss NaN.
  overrides = {"train.num_steps": 6, "train.checkpoint_every": 1, "train.keep_checkpoints": 10,
               "ppow.ppo_epochs": 1, "mesh.data": 1, "mesh.num_devices": 1}
  with pytest.raises(NonFiniteLossError, match=r"at step 3\b.*last good checkpoint \(step 2\)"):
    _run_ppow(start, f"nan_{kind}", overrides)
  workdir = str(start["root"] / f"nan_{kind}")
  assert [r["step"] for r in read_metrics(workdir)] == [1, 2]
  assert all(math.isfinite(r["loss"]) for r in read_metrics(workdir))
  assert not os.path.exists(os.path.join(workdir, "export"))
  c = Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=10)
  try:
    assert c.manager.all_steps() == [1, 2]
    config = _config("ppow", {**start["base"], **overrides})
    drafter = load_eagle3(config.drafter.init_from)
    params = drafter.params()
    opt = drafter_init.make_optimizer(config.optim, config.train.num_steps)
    state = c.restore({"params": params, "opt_state": opt.init(params),
                       "step": jnp.zeros((), jnp.int32)})
  finally:
    c.close()
  assert int(state["step"]) == 2
  floats = [np.asarray(x) for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(np.isfinite(x).all() for x in floats)
  # The checkpoint is the trained step-2 state, not the initial weights.
  assert any(not np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(params)))


# --- 4. metrics and ablation switches ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.e2e
def test_metrics_rows(reference):
  """Every row has the rollout, objective and window-score metrics, consistent with each other."""
  rows = read_metrics(reference)
  assert [r["step"] for r in rows] == list(range(1, NUM_STEPS + 1))
  for r in rows:
    assert set(METRIC_KEYS) <= r.keys()
    assert all(math.isfinite(r[k]) for k in METRIC_KEYS)
    assert r["rollout_tau"] == pytest.approx(r["mean_k"] + 1, abs=1e-6)
    assert 0 <= r["mean_k"] <= 4 and 0 <= r["k0_share"] <= 1 and r["valid_windows"] == 1
    assert 0 <= r["clip_fraction"] <= 1 and r["kl"] >= 0 and r["step_time"] > 0
    # Top-mode windowing from step 0: each sequence's best window, so above the candidates' mean.
    assert r["window_score_mean"] < r["window_score_selected"] <= r["window_score_max"]
  assert any(0 < r["k0_share"] < 1 for r in rows)


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_saves_resolved_config(start, reference):
  """The workdir keeps the config the run used: the file's values with the overrides applied."""
  import json
  with open(os.path.join(reference, "config.json")) as f:
    saved = json.load(f)
  assert saved["mode"] == "ppow" and saved["ppow"]["window"] == TINY["ppow.window"] == 4
  assert saved["train"]["num_steps"] == NUM_STEPS
  assert saved["drafter"]["init_from"] == start["base"]["drafter.init_from"]
  assert saved["optim"]["learning_rate"] == TINY["optim.learning_rate"]


@pytest.mark.slow
def test_ablation_switches(start):
  """Windowing and proximity settings from the config change exactly what they should.

  All variants see one batch, one rng and one drafter. Settings other than `windowing` enter the
  step as traced values, so two compiled programs (windowing on / off) cover every variant.
  """
  variants = {
      "top": {},
      "uniform": {"ppow.windowing": False},
      "warmup": {"ppow.windowing_start": 10**6},  # uniform before windowing_start
      "speed_only": {"ppow.gamma": 0.0, "ppow.use_proximity": False},
      "prox_all": {"ppow.gamma": 0.0, "ppow.epsilon": 1e9},
      "prox_none": {"ppow.gamma": 0.0, "ppow.epsilon": -1e9},
      "no_prox": {"ppow.use_proximity": False},
  }
  base = {**start["base"], "ppow.ppo_epochs": 1}
  config = _config("ppow", base)
  target = startup.load_target(config)
  drafter = load_eagle3(config.drafter.init_from, target.cfg)
  records = selfdistill.load(config.data.dir, "train")
  batch = selfdistill.SequenceData(records, seq_len=32, batch_size=8, seed=0).batch(0)
  opt = drafter_init.make_optimizer(config.optim, 10)
  params = drafter.params()
  state = {"params": params, "opt_state": opt.init(params), "step": jnp.zeros((), jnp.int32)}
  keys = ("reward", "mean_k", "k0_share", "window_score_selected", "window_score_mean")

  def metrics(windowing, state, tparams, d2t, batch, rng, gamma, epsilon, use_proximity, wstart):
    s = dataclasses.replace(ppow_mode.settings_from_config(config), windowing=windowing,
                            gamma=gamma, epsilon=epsilon, use_proximity=use_proximity,
                            windowing_start=wstart)
    step = make_ppow_step(target.cfg, drafter.cfg, opt, s, capacity=32 + 4 + 2)
    _, m = step(state, tparams, d2t, batch, rng)
    return {k: m[k] for k in keys}

  programs = {w: jax.jit(functools.partial(metrics, w)) for w in (True, False)}
  args = (state, target.params(), drafter.d2t[...], jax.tree.map(jnp.asarray, batch),
          jax.random.key(3))
  m = {}
  for name, v in variants.items():
    s = ppow_mode.settings_from_config(_config("ppow", {**base, **v}))
    out = programs[s.windowing](*args, jnp.float32(s.gamma), jnp.float32(s.epsilon),
                                jnp.bool_(s.use_proximity), jnp.int32(s.windowing_start))
    m[name] = {k: float(x) for k, x in jax.device_get(out).items()}
  top, uni = m["top"], m["uniform"]
  # Scores do not depend on the choice; top picks each sequence's best window.
  assert top["window_score_mean"] == pytest.approx(uni["window_score_mean"], rel=1e-6)
  assert top["window_score_selected"] > uni["window_score_selected"]
  assert top["window_score_selected"] > top["window_score_mean"]
  assert m["warmup"] == pytest.approx(uni, rel=1e-6)  # step < windowing_start: uniform choice
  assert m["warmup"] != pytest.approx(top, rel=1e-3)
  # Proximity: a window rejected at the first token gets eta iff delta < epsilon.
  speed, eta = m["speed_only"], config.ppow.eta
  assert 0 < speed["mean_k"] and 0 < speed["k0_share"] < 1
  assert speed["reward"] == pytest.approx(speed["mean_k"], rel=1e-6)  # gamma = 0: R = k
  for name in ("prox_all", "prox_none", "no_prox"):
    assert m[name]["mean_k"] == speed["mean_k"]  # the same windows and rollouts
  assert m["prox_all"]["reward"] == pytest.approx(speed["reward"] + eta * speed["k0_share"],
                                                  rel=1e-6)
  assert m["prox_none"]["reward"] == pytest.approx(speed["reward"], rel=1e-6)
  # gamma > 0: R = k / (k gamma + 1) < k once some window is accepted; the bonus only adds.
  assert m["no_prox"]["reward"] < speed["reward"]
  assert top["reward"] >= m["no_prox"]["reward"]


@pytest.mark.slow
def _one_step_inputs(config):
  """Target, start drafter, the first training batch, the optimizer and a fresh train state."""
  target = startup.load_target(config)
  drafter = load_eagle3(config.drafter.init_from, target.cfg)
  records = selfdistill.load(config.data.dir, "train")
  batch = jax.tree.map(jnp.asarray,
                       selfdistill.SequenceData(records, seq_len=32, batch_size=8, seed=0).batch(0))
  opt = drafter_init.make_optimizer(config.optim, 10)
  params = drafter.params()
  state = {"params": params, "opt_state": opt.init(params), "step": jnp.zeros((), jnp.int32)}
  return target, drafter, batch, opt, state


def test_ttt_aux_loss(start):
  """aux_loss="ttt": the auxiliary term is EAGLE-3's training-time-test loss over the batch
  sequences (what token-level training minimises), not the window soft CE; bad names fail."""
  from ppow_jax.eagle3 import ttt
  from ppow_jax.models import transformer

  config = _config("ppow", {**start["base"], "ppow.ppo_epochs": 1, "ppow.ttt_steps": 2})
  target, drafter, batch, opt, state = _one_step_inputs(config)
  params, tp, d2t = state["params"], target.params(), drafter.d2t[...]
  base = ppow_mode.settings_from_config(config)
  aux = {}
  for mode in ("window", "ttt"):
    step = make_ppow_step(target.cfg, drafter.cfg, opt, dataclasses.replace(base, aux_loss=mode),
                          capacity=32 + 4 + 2)
    aux[mode] = float(jax.jit(step)(state, tp, d2t, batch, jax.random.key(3))[1]["aux_ce"])
  out = transformer.forward(target.cfg, tp, batch["tokens"], hidden_layers=drafter.cfg.aux_layers)
  want, _ = ttt.ttt_loss(drafter.cfg, params, tp["embed"], d2t, batch["tokens"], out.hidden,
                         out.logits, batch["loss_mask"], steps=2, decay=base.ttt_decay)
  assert aux["ttt"] == pytest.approx(float(want), rel=1e-4)
  assert aux["window"] != pytest.approx(aux["ttt"], rel=1e-2)
  with pytest.raises(ValueError, match="ppow.aux_loss='tokens'"):
    make_ppow_step(target.cfg, drafter.cfg, opt, dataclasses.replace(base, aux_loss="tokens"), 38)


def test_policy_coef_scales_only_the_rl_term(start):
  """policy_coef = 0 with the anchors off (beta = aux = 0) leaves the drafter where it was; the
  same step with policy_coef = 1 moves it. So the ablation removes the RL gradient and nothing
  else; its policy_loss metric is the scaled term."""
  # No warm-up: the first update is taken at the full learning rate (warm-up starts at 0).
  config = _config("ppow", {**start["base"], "ppow.ppo_epochs": 1, "optim.warmup_steps": 0})
  target, drafter, batch, opt, state = _one_step_inputs(config)
  params, tp, d2t = state["params"], target.params(), drafter.d2t[...]
  base = dataclasses.replace(ppow_mode.settings_from_config(config), beta=0.0, aux_coef=0.0)
  moved, policy_loss = {}, {}
  for coef in (0.0, 1.0):
    step = make_ppow_step(target.cfg, drafter.cfg, opt,
                          dataclasses.replace(base, policy_coef=coef), capacity=32 + 4 + 2)
    new, m = jax.jit(step)(state, tp, d2t, batch, jax.random.key(3))
    moved[coef] = max(float(jnp.max(jnp.abs(a - b)))
                      for a, b in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(params)))
    policy_loss[coef] = float(m["policy_loss"])
  assert moved[0.0] == 0.0 and policy_loss[0.0] == 0.0
  assert moved[1.0] > 0.0 and policy_loss[1.0] != 0.0


def test_windows_lie_on_the_batch_loss_mask(start):
  """windows_in="response" places every window wholly on loss-masked (answer) slots; "any"
  anywhere a window fits. Marking exactly the K slots 16..16+K-1 leaves one prefix, p = 16."""
  config = _config("ppow", {**start["base"], "ppow.ppo_epochs": 1})
  target, drafter, batch, opt, state = _one_step_inputs(config)
  base = ppow_mode.settings_from_config(config)
  slot = jnp.arange(32)[None]
  batch = dict(batch, loss_mask=batch["valid"] & (slot >= 16) & (slot < 16 + base.window))
  length = jnp.maximum(jnp.sum(batch["valid"], axis=1), 1)
  assert int(jnp.min(length)) > 16 + base.window  # a window at 16 fits in every row
  pos = {}
  for region in ("response", "any"):
    step = make_ppow_step(target.cfg, drafter.cfg, opt,
                          dataclasses.replace(base, windows_in=region), capacity=32 + 4 + 2)
    _, m = jax.jit(step)(state, target.params(), drafter.d2t[...], batch, jax.random.key(3))
    pos[region] = float(m["selected_relative_position"])
  assert pos["response"] == pytest.approx(float(jnp.mean(16 / length)), abs=1e-6)
  assert pos["any"] != pytest.approx(pos["response"], abs=1e-3)
  with pytest.raises(ValueError, match="ppow.windows_in='prompt'"):
    make_ppow_step(target.cfg, drafter.cfg, opt, dataclasses.replace(base, windows_in="prompt"),
                   38)


def test_load_target_shards_only_when_the_mesh_splits_it(stories_path):
  """A mesh that splits weights (fsdp/tensor) gets the target placed on it at load; a data-only
  mesh leaves it on one device (replicated later with the train state)."""
  split = startup.load_target(_config("ppow", {
      "target.path": stories_path, "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}))
  plain = startup.load_target(_config("ppow", {"target.path": stories_path}))
  sp, pp = split.params(), plain.params()
  assert not all(x.sharding.is_fully_replicated for x in jax.tree.leaves(sp))
  assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(pp))
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), sp, pp)
