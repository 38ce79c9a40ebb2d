"""A drafter training run, token-level (SFT) or PPOW, from start to end: `prepare_start` (checks
and the target, `startup`), the data (`data_feed`) and the drafter (`drafter_init`), `train` (the
resume-first loop on the config's mesh) and `finish` (export and tau, `final_eval`).
"""

from __future__ import annotations

import os

import jax

from ppow_jax import run_files, user_errors
from ppow_jax.data import prompts as prompt_files
from ppow_jax.eagle3 import model as e3
from ppow_jax.eagle3.checkpoint import load_eagle3
from ppow_jax.models import transformer
from ppow_jax.parallel import sharding
from ppow_jax.training import loop
from ppow_jax.training.checkpoints import Checkpointer
from ppow_jax.training.data_feed import conversation_files, split_paths
from ppow_jax.training.drafter_init import make_optimizer
from ppow_jax.training.final_eval import (eval_prompts, export, measure_tau, stage_summary,
                                          with_params)
from ppow_jax.training.metrics import MetricWriter
from ppow_jax.training.startup import Target, config_mesh, load_target, parse_aux_layers, start_up
from ppow_jax.user_errors import ConfigValueError, UserError


def prepare_start(config, workdir: str):
  """What must hold before the data is generated (minutes at the defaults): the prompt files
  parse, the target loads, `drafter.aux_layers` exist in it, `drafter.init_from` (if set) is an
  EAGLE-3 drafter that fits it. Then the run's config is recorded. Returns (target, the
  init_from drafter or None)."""
  start_up(config)
  files = [*split_paths(config.data.get("prompts")), *split_paths(config.eval.get("prompts"))]
  for path in files:
    prompt_files.load_prompts(path)  # PromptFileError names the file and line
  for path in conversation_files(config):  # fetched now; a file with no usable chat refused
    prompt_files.load_conversations(path, limit=1)  # the data stage reads it whole
  target = load_target(config)
  if config.drafter.get("aux_layers") and not config.drafter.init_from:
    parse_aux_layers(config.drafter.aux_layers, target.cfg.num_layers)
  start = None
  if config.drafter.init_from:
    try:
      start = load_eagle3(config.drafter.init_from, target.cfg)
    except UserError as e:
      raise ConfigValueError(f"config.drafter.init_from={config.drafter.init_from}: "
                             f"{user_errors.message(e)}") from None
  run_files.record_config(workdir, config)
  return target, start


def train(config, workdir: str, target: Target, drafter: e3.Eagle3Drafter, make_step, get_batch,
          *, desc: str, postfix: tuple, fc_scale=None):
  """Places the drafter's train state and the frozen target on the config's mesh, then runs
  `make_step(optimizer)` (a pure step) through the resume-first loop. Returns the final state."""
  t = config.train
  rules = sharding.rules_from_config(config)
  mesh = config_mesh(config)
  optimizer = make_optimizer(config.optim, t.num_steps, fc_scale)
  drafter_sh = sharding.tree_shardings(drafter.params(), e3.LOGICAL_AXES, mesh, rules)
  state, state_sh = loop.init_state(optimizer, drafter.params(), drafter_sh, mesh)
  target_params = target.params()
  target_sh = sharding.tree_shardings(target_params, transformer.LOGICAL_AXES, mesh, rules)
  repl = sharding.replicated(mesh)
  return loop.run_loop(
      make_step(optimizer), state, state_sh,
      const_args=(jax.device_put(target_params, target_sh), jax.device_put(drafter.d2t[...], repl)),
      const_shardings=(target_sh, repl), get_batch=get_batch,
      batch_sharding=sharding.batch_sharding(mesh, 2, rules), num_steps=t.num_steps,
      max_seconds=t.max_seconds, max_cpu_seconds=t.get("max_cpu_seconds", 0.0), seed=config.seed,
      ckpt=Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=t.checkpoint_every,
                        keep=t.keep_checkpoints),
      writer=MetricWriter(workdir), log_every=t.log_every, desc=desc, postfix=postfix)


def finish(config, workdir: str, target: Target, drafter: e3.Eagle3Drafter, state, heldout,
           desc: str) -> dict:
  """Exports the trained drafter and writes eval.json (greedy tau on held-out prompts)."""
  drafter = with_params(drafter, state["params"])
  if jax.process_index() == 0:
    export(drafter, os.path.join(workdir, "export"))
  result = {"num_steps": int(state["step"])}
  if config.eval.windows:
    result.update(measure_tau(
        target, drafter, eval_prompts(config, target, heldout), windows=tuple(config.eval.windows),
        max_new_tokens=config.eval.max_new_tokens, batch_size=config.eval.batch_size))
  run_files.write_json(os.path.join(workdir, "eval.json"), result)
  print(stage_summary(desc, result, os.path.join(workdir, "export")))
  return result
