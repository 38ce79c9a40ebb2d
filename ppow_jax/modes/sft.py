"""Token-level training of an EAGLE-3 drafter (the PPOW starting point and baseline).

Self-distillation data from the target, then the EAGLE-3 training-time-test loss: `ttt.steps`
unrolled draft steps weighted decay**i, soft cross-entropy to the target over the draft
vocabulary. Resume-first: a rerun with the same workdir continues from the last checkpoint.
Writes workdir/export (EAGLE-3 layout), metrics.jsonl, tensorboard/ and eval.json. The step
itself is `ppow_jax.eagle3.train_step`.
"""

from __future__ import annotations

import jax.numpy as jnp

from ppow_jax.data.selfdistill import SequenceData
from ppow_jax.eagle3.train_step import make_train_step
from ppow_jax.training import data_feed, drafter_init, drafter_run


def run(config, workdir: str):
  target, start = drafter_run.prepare_start(config, workdir)
  train, heldout = data_feed.prepare_data(config, target, workdir)
  drafter = drafter_init.init_drafter(config, target, train, start)
  dcfg = drafter.cfg
  t = config.train
  data = SequenceData(train, seq_len=config.data.seq_len, batch_size=t.batch_size, seed=config.seed,
                      loss_on_prompt=config.data.get("loss_on_prompt", False))
  get_batch = data.batch
  if config.data.get("features", "online") == "cached":
    get_batch = data_feed.with_cached_features(config, target, workdir, train, data, dcfg)

  make_step = lambda optimizer: make_train_step(
      target.cfg, dcfg, optimizer, steps=config.ttt.steps, decay=config.ttt.decay,
      compute_dtype=t.get("compute_dtype", "float32"), objective=config.ttt.loss,
      lk_kl_scale=config.ttt.lk_kl_scale, lk_kl_decay=config.ttt.lk_kl_decay)
  fc_scale = None
  if config.drafter.get("feature_scaling"):
    # One measurement serves the fresh fc's initial column scale and its update scale.
    fc_scale = drafter_init.feature_scale(target, dcfg.aux_layers, train, config.data.seq_len)
    if not config.drafter.init_from:
      drafter.fc[...] = drafter.fc[...] * jnp.asarray(fc_scale, drafter.fc[...].dtype)[:, None]
  state = drafter_run.train(config, workdir, target, drafter, make_step, get_batch, desc="sft",
                            postfix=("loss",), fc_scale=fc_scale)
  return drafter_run.finish(config, workdir, target, drafter, state, heldout, "sft")
