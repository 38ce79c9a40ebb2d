"""Token-level training of an EAGLE-3 drafter (the PPOW starting point and baseline).

Self-distillation data from the target, then the EAGLE-3 training-time-test loss: `ttt.steps`
unrolled draft steps weighted decay**i, soft cross-entropy to the target over the draft
vocabulary. Resume-first: a rerun with the same workdir continues from the last checkpoint.
Writes workdir/export (EAGLE-3 layout), metrics.jsonl, tensorboard/ and eval.json.
"""

from __future__ import annotations

import os

import jax
import optax

from ppow_jax import run_files
from ppow_jax.data.selfdistill import SequenceData
from ppow_jax.eagle3 import model as e3
from ppow_jax.eagle3 import ttt
from ppow_jax.models import transformer
from ppow_jax.parallel import sharding
from ppow_jax.training import drafter_run
from ppow_jax.training import loop
from ppow_jax.training.checkpoints import Checkpointer
from ppow_jax.training.metrics import MetricWriter


def make_train_step(tcfg, dcfg, optimizer, *, steps: int, decay: float):
  """(state, target_params, d2t, batch, rng) -> (state, metrics); pure, jitted by the caller.

  The loss is deterministic, so rng is unused (kept for the shared loop's step signature).
  """

  def train_step(state, target_params, d2t, batch, rng=None):
    del rng
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
  optimizer = drafter_run.make_optimizer(config.optim, t.num_steps)
  state, state_sh = loop.init_state(
      optimizer, drafter.params(), sharding.tree_shardings(drafter.params(), e3.LOGICAL_AXES, mesh),
      mesh)
  target_params = target.params()
  target_sh = sharding.tree_shardings(target_params, transformer.LOGICAL_AXES, mesh)
  repl = sharding.replicated(mesh)
  step_fn = make_train_step(target.cfg, dcfg, optimizer, steps=config.ttt.steps,
                            decay=config.ttt.decay)
  state = loop.run_loop(
      step_fn, state, state_sh, const_args=(jax.device_put(target_params, target_sh),
                                            jax.device_put(drafter.d2t[...], repl)),
      const_shardings=(target_sh, repl), get_batch=data.batch,
      batch_sharding=sharding.batch_sharding(mesh, 2), num_steps=t.num_steps,
      max_seconds=t.max_seconds, seed=config.seed,
      ckpt=Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=t.checkpoint_every,
                        keep=t.keep_checkpoints),
      writer=MetricWriter(workdir), log_every=t.log_every, desc="sft", postfix=("loss",))

  drafter = drafter_run.with_params(drafter, state["params"])
  drafter_run.export(drafter, os.path.join(workdir, "export"))
  result = {"num_steps": int(state["step"])}
  if config.eval.windows:
    prompts = drafter_run.eval_prompts(config, target, heldout)
    result.update(drafter_run.measure_tau(
        target, drafter, prompts, windows=tuple(config.eval.windows),
        max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size))
  run_files.write_json(os.path.join(workdir, "eval.json"), result)
  print("sft:", result)
  return result
