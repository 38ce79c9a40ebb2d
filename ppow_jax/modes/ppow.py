"""PPOW fine-tuning of an EAGLE-3 drafter (stage 2, after token-level training).

Each step picks prefixes of self-distillation sequences (adaptive divergence-aware windowing),
samples a group of windows per prefix from the drafter, lets the frozen target verify them, and
takes clipped policy-gradient steps on group-relative advantages of the cost-aware speedup reward
(plus the proximity reward for windows rejected at the first token) with a KL penalty anchored to
the target. Writes workdir/export, metrics.jsonl, tensorboard/ and eval.json.
"""

from __future__ import annotations

from ppow_jax.data.selfdistill import SequenceData
from ppow_jax.ppow.step import PPOWSettings, make_ppow_step
from ppow_jax.training import drafter_run
from ppow_jax.user_errors import ConfigValueError


def settings_from_config(config) -> PPOWSettings:
  return PPOWSettings.from_config(config.ppow)


def run(config, workdir: str):
  if not config.drafter.init_from:
    raise ConfigValueError("config.drafter.init_from is empty: PPOW starts from a token-level "
                           "drafter (an SFT run's export/ directory or an imported EAGLE-3 "
                           "checkpoint)")
  target, start = drafter_run.prepare_start(config, workdir)  # init_from checked before the data
  train, heldout = drafter_run.prepare_data(config, target, workdir)
  drafter = drafter_run.init_drafter(config, target, train, start)
  s = settings_from_config(config)
  t = config.train
  data = SequenceData(train, seq_len=config.data.seq_len, batch_size=t.batch_size, seed=config.seed)
  capacity = config.data.seq_len + s.window + 2

  make_step = lambda optimizer: make_ppow_step(target.cfg, drafter.cfg, optimizer, s, capacity)
  state = drafter_run.train(config, workdir, target, drafter, make_step, data.batch, desc="ppow",
                            postfix=("reward", "rollout_tau", "kl"))
  return drafter_run.finish(config, workdir, target, drafter, state, heldout, "ppow")
