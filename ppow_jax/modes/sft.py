"""Token-level training of an EAGLE-3 drafter (the PPOW starting point and baseline).

Self-distillation data from the target, then the EAGLE-3 training-time-test loss: `ttt.steps`
unrolled draft steps weighted decay**i, soft cross-entropy to the target over the draft
vocabulary. Resume-first: a rerun with the same workdir continues from the last checkpoint.
Writes workdir/export (EAGLE-3 layout), metrics.jsonl, tensorboard/ and eval.json.
"""

from __future__ import annotations

import jax
import optax

from ppow_jax.data.selfdistill import SequenceData
from ppow_jax.eagle3 import ttt
from ppow_jax.models import transformer
from ppow_jax.training import drafter_run


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
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **m}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return train_step


def run(config, workdir: str):
  drafter_run.start_up(config)
  target = drafter_run.load_target(config)
  train, heldout = drafter_run.prepare_data(config, target, workdir)
  drafter = drafter_run.init_drafter(config, target, train)
  dcfg = drafter.cfg
  t = config.train
  data = SequenceData(train, seq_len=config.data.seq_len, batch_size=t.batch_size, seed=config.seed)

  make_step = lambda optimizer: make_train_step(target.cfg, dcfg, optimizer, steps=config.ttt.steps,
                                                decay=config.ttt.decay)
  state = drafter_run.train(config, workdir, target, drafter, make_step, data.batch, desc="sft",
                            postfix=("loss",))
  return drafter_run.finish(config, workdir, target, drafter, state, heldout, "sft")
