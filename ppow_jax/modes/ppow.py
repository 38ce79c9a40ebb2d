"""PPOW fine-tuning of an EAGLE-3 drafter (stage 2, after token-level training).

Each step picks prefixes of self-distillation sequences (adaptive divergence-aware windowing),
samples a group of windows per prefix from the drafter, lets the frozen target verify them, and
takes clipped policy-gradient steps on group-relative advantages of the cost-aware speedup reward
(plus the proximity reward for windows rejected at the first token) with a KL penalty anchored to
the target. Writes workdir/export, metrics.jsonl, tensorboard/ and eval.json.
"""

from __future__ import annotations

import os

import jax

from ppow_jax import run_files
from ppow_jax.data.selfdistill import SequenceData
from ppow_jax.eagle3 import model as e3
from ppow_jax.models import transformer
from ppow_jax.parallel import sharding
from ppow_jax.ppow.step import PPOWSettings, make_ppow_step
from ppow_jax.training import drafter_run, loop
from ppow_jax.training.checkpoints import Checkpointer
from ppow_jax.training.metrics import MetricWriter


def settings_from_config(config) -> PPOWSettings:
  p = config.ppow
  return PPOWSettings(
      window=p.window, group_size=p.group_size, prefixes_per_seq=p.prefixes_per_seq,
      min_prefix=p.min_prefix, gamma=p.gamma, eta=p.eta, epsilon=p.epsilon,
      use_proximity=p.use_proximity, windowing=p.windowing, windowing_mode=p.windowing_mode,
      windowing_start=p.windowing_start, clip_eps=p.clip_eps, beta=p.beta, aux_coef=p.aux_coef,
      loss_tokens=p.loss_tokens, ppo_epochs=p.ppo_epochs, temperature=p.temperature)


def run(config, workdir: str):
  if not config.drafter.init_from:
    raise ValueError("config.drafter.init_from is empty: PPOW starts from a token-level drafter "
                     "(an SFT run's export/ directory or an imported EAGLE-3 checkpoint)")
  sharding.initialize_distributed(config.distributed)  # num_processes -1: TPU pod auto-discovery
  sharding.apply_topology(config)  # configs/targets/*: mesh, rules, batch size of the TPU slice
  rules = sharding.rules_from_config(config)
  target = drafter_run.load_target(config)
  train, heldout = drafter_run.prepare_data(config, target, workdir)
  drafter = drafter_run.init_drafter(config, target, train)
  s = settings_from_config(config)
  t = config.train
  data = SequenceData(train, seq_len=config.data.seq_len, batch_size=t.batch_size, seed=config.seed)
  capacity = config.data.seq_len + s.window + 2

  mesh_shape = dict(config.mesh)
  num_devices = mesh_shape.pop("num_devices", 0)  # 0 = every device
  mesh = sharding.make_mesh(mesh_shape, jax.devices()[:num_devices] if num_devices else None)
  optimizer = drafter_run.make_optimizer(config.optim, t.num_steps)
  drafter_sh = sharding.tree_shardings(drafter.params(), e3.LOGICAL_AXES, mesh, rules)
  state, state_sh = loop.init_state(optimizer, drafter.params(), drafter_sh, mesh)
  target_params = target.params()
  target_sh = sharding.tree_shardings(target_params, transformer.LOGICAL_AXES, mesh, rules)
  repl = sharding.replicated(mesh)
  step_fn = make_ppow_step(target.cfg, drafter.cfg, optimizer, s, capacity)
  state = loop.run_loop(
      step_fn, state, state_sh, const_args=(jax.device_put(target_params, target_sh),
                                            jax.device_put(drafter.d2t[...], repl)),
      const_shardings=(target_sh, repl), get_batch=data.batch,
      batch_sharding=sharding.batch_sharding(mesh, 2, rules), num_steps=t.num_steps,
      max_seconds=t.max_seconds, seed=config.seed,
      ckpt=Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=t.checkpoint_every,
                        keep=t.keep_checkpoints),
      writer=MetricWriter(workdir), log_every=t.log_every, desc="ppow",
      postfix=("reward", "rollout_tau", "kl"))

  drafter = drafter_run.with_params(drafter, state["params"])
  if jax.process_index() == 0:
    drafter_run.export(drafter, os.path.join(workdir, "export"))
  result = {"num_steps": int(state["step"])}
  if config.eval.windows:
    prompts = drafter_run.eval_prompts(config, target, heldout)
    result.update(drafter_run.measure_tau(
        target, drafter, prompts, windows=tuple(config.eval.windows),
        max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size))
  run_files.write_json(os.path.join(workdir, "eval.json"), result)
  print("ppow:", result)
  return result
