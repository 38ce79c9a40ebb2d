"""Token-level training of an EAGLE-3 drafter (the PPOW starting point and baseline).

Self-distillation data from the target, then the EAGLE-3 training-time-test loss: `ttt.steps`
unrolled draft steps weighted decay**i, soft cross-entropy to the target over the draft
vocabulary. Resume-first: a rerun with the same workdir continues from the last checkpoint.
Writes workdir/export (EAGLE-3 layout), metrics.jsonl, tensorboard/ and eval.json.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import optax
import tqdm
from absl import logging

from ppow_jax import run_files
from ppow_jax.data.selfdistill import SequenceData
from ppow_jax.eagle3 import model as e3
from ppow_jax.eagle3 import ttt
from ppow_jax.models import transformer
from ppow_jax.parallel import sharding
from ppow_jax.training import drafter_run
from ppow_jax.training.checkpoints import Checkpointer
from ppow_jax.training.metrics import MetricWriter, check_finite


def make_train_step(tcfg, dcfg, optimizer, *, steps: int, decay: float):
  """(state, target_params, d2t, batch) -> (state, metrics); pure, jitted by the caller."""

  def train_step(state, target_params, d2t, batch):
    out = transformer.forward(tcfg, target_params, batch["tokens"], key_valid=batch["valid"],
                              hidden_layers=dcfg.aux_layers)
    aux = jax.lax.stop_gradient(out.hidden)
    tlogits = jax.lax.stop_gradient(out.logits)

    def loss_fn(params):
      return ttt.ttt_loss(dcfg, params, target_params["embed"], d2t, batch["tokens"], aux, tlogits,
                          batch["loss_mask"], steps=steps, decay=decay)

    (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **m}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return train_step


def run(config, workdir: str):
  target = drafter_run.load_target(config)
  train, heldout = drafter_run.prepare_data(config, target, workdir)
  drafter = drafter_run.init_drafter(config, target, train)
  dcfg = drafter.cfg
  t = config.train
  data = SequenceData(train, seq_len=config.data.seq_len, batch_size=t.batch_size, seed=config.seed)

  mesh = sharding.make_mesh(dict(config.mesh))
  p_shard = sharding.tree_shardings(drafter.params(), e3.LOGICAL_AXES, mesh)
  b_shard = sharding.batch_sharding(mesh, 2)
  optimizer = drafter_run.make_optimizer(config.optim, t.num_steps)
  params = jax.device_put(drafter.params(), p_shard)
  state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
  target_params = target.params()
  d2t = drafter.d2t[...]

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=t.checkpoint_every,
                      keep=t.keep_checkpoints)
  start = 0
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    start = int(state["step"])
    logging.info("resumed from step %d", start)
  writer = MetricWriter(workdir)
  writer.truncate_after(start)

  step_fn = jax.jit(make_train_step(target.cfg, dcfg, optimizer, steps=config.ttt.steps,
                                    decay=config.ttt.decay), donate_argnums=(0,))
  bar = tqdm.tqdm(range(start, t.num_steps), initial=start, total=t.num_steps, desc="sft")
  for step in bar:
    t0 = time.perf_counter()
    batch = drafter_run.to_device(data.batch(step), b_shard)
    state, m = step_fn(state, target_params, d2t, batch)
    loss = float(m["loss"])
    check_finite(step, loss, ckpt.latest_step())
    m = dict(jax.device_get(m), step_time=time.perf_counter() - t0)
    if (step + 1) % t.log_every == 0 or step + 1 == t.num_steps:
      writer.write(step + 1, m)
    bar.set_postfix(loss=f"{loss:.3f}", acc0=f"{float(m['step_acc'][0]):.3f}")
    ckpt.save(step + 1, state, force=step + 1 == t.num_steps)
  ckpt.close()
  writer.close()

  drafter = drafter_run.with_params(drafter, state["params"])
  drafter_run.export(drafter, os.path.join(workdir, "export"))
  result = {"num_steps": t.num_steps}
  if config.eval.windows:
    prompts = drafter_run.eval_prompts(config, target, heldout)
    result.update(drafter_run.measure_tau(
        target, drafter, prompts, windows=tuple(config.eval.windows),
        max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size))
  run_files.write_json(os.path.join(workdir, "eval.json"), result)
  print("sft:", result)
  return result
