"""PPOW fine-tuning of an EAGLE-3 drafter (stage 2, after token-level training).

Each step picks prefixes of self-distillation sequences (adaptive divergence-aware windowing),
samples a group of windows per prefix from the drafter, lets the frozen target verify them, and
takes clipped policy-gradient steps on group-relative advantages of the cost-aware speedup reward
(plus the proximity reward for windows rejected at the first token) with a KL penalty anchored to
the target. Writes workdir/export, metrics.jsonl, tensorboard/ and eval.json.
"""

from __future__ import annotations

import json
import os

from ppow_jax import run_files
from ppow_jax.data.selfdistill import SequenceData
from ppow_jax.decoding import step_cost
from ppow_jax.eagle3.engine_adapter import Eagle3EngineDrafter
from ppow_jax.ppow.step import PPOWSettings, make_ppow_step
from ppow_jax.training import data_feed, drafter_init, drafter_run
from ppow_jax.user_errors import ConfigValueError


def settings_from_config(config, gamma: float | None = None) -> PPOWSettings:
  """configs/ppow.py's `ppow` block as step settings (`gamma` overrides a measured value)."""
  return PPOWSettings.from_config(config.ppow, **({} if gamma is None else {"gamma": gamma}))


def resolve_gamma(config, target, drafter, workdir: str) -> float:
  """ppow.gamma, or with ppow.measure_gamma the drafter/target step-cost ratio timed here
  (written to workdir/gamma.json)."""
  if not config.ppow.measure_gamma:
    return config.ppow.gamma
  path = os.path.join(workdir, "gamma.json")
  if os.path.exists(path):  # a resumed run keeps the reward it started with
    with open(path) as f:
      return json.load(f)["gamma"]
  params = target.params()
  m = step_cost.measure_gamma(target.cfg, params, Eagle3EngineDrafter(drafter.cfg),
                              Eagle3EngineDrafter.bind(drafter, params))
  run_files.write_json(path, m)
  print(f"ppow: gamma {m['gamma']:.3f} measured on this machine (a draft token "
        f"{m['draft_token_ms']:.3f} ms ({m['method']}) / a target step {m['target_ms']:.3f} ms)")
  return m["gamma"]


def run(config, workdir: str):
  if not config.drafter.init_from:
    raise ConfigValueError("config.drafter.init_from is empty: PPOW starts from a token-level "
                           "drafter (an SFT run's export/ directory or an imported EAGLE-3 "
                           "checkpoint)")
  target, start = drafter_run.prepare_start(config, workdir)  # init_from checked before the data
  train, heldout = data_feed.prepare_data(config, target, workdir)
  drafter = drafter_init.init_drafter(config, target, train, start)
  s = settings_from_config(config, resolve_gamma(config, target, drafter, workdir))
  t = config.train
  data = SequenceData(train, seq_len=config.data.seq_len, batch_size=t.batch_size, seed=config.seed)
  capacity = config.data.seq_len + s.window + 2

  make_step = lambda optimizer: make_ppow_step(target.cfg, drafter.cfg, optimizer, s, capacity)
  state = drafter_run.train(config, workdir, target, drafter, make_step, data.batch, desc="ppow",
                            postfix=("reward", "rollout_tau", "kl"))
  return drafter_run.finish(config, workdir, target, drafter, state, heldout, "ppow")
