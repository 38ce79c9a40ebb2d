"""The resume-first training loop SFT and PPOW share, around a pure sharded train step.

state = {"params", "opt_state", "step"}; the step function is jitted with explicit
in/out shardings and the state donated. Batches and rng are pure functions of the step number,
so a run killed at any moment and restarted from its last checkpoint ends with the same
parameters as one never interrupted.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from ppow_jax.progress import Progress
from ppow_jax.training.checkpoints import Checkpointer
from ppow_jax.training.metrics import MetricWriter, check_finite


def state_shardings(optimizer, params, param_shardings, mesh):
  """Shardings of the train state (optimizer moments follow params); params may be abstract."""
  repl = NamedSharding(mesh, P())
  opt_abstract = jax.eval_shape(optimizer.init, params)
  opt_shardings = optax.tree_utils.tree_map_params(
      optimizer, lambda _, sh: sh, opt_abstract, param_shardings,
      transform_non_params=lambda _: repl)
  return {"params": param_shardings, "opt_state": opt_shardings, "step": repl}


def init_state(optimizer, params, param_shardings, mesh):
  """The train state placed on the mesh, and its shardings (optimizer moments follow params)."""
  shardings = state_shardings(optimizer, params, param_shardings, mesh)
  params = jax.device_put(params, param_shardings)
  opt_state = jax.jit(optimizer.init, out_shardings=shardings["opt_state"])(params)
  state = {"params": params, "opt_state": opt_state, "step": jnp.zeros((), jnp.int32)}
  return jax.device_put(state, shardings), shardings


def jit_step(step_fn: Callable, state_shardings: Any, const_shardings: tuple, batch_sharding: Any):
  """The step as the loop runs it: `step_fn` also reporting whether the updated weights are all
  finite, jitted with explicit in/out shardings and the state donated. The dry run lowers this
  very function, so what it compiles is what trains.

  Returns jitted(state, *const_args, batch, rng) -> (state, (metrics, finite)).
  """

  def guarded_step(state, *args):
    state, metrics = step_fn(state, *args)
    leaves = jax.tree.leaves(state["params"])
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
    return state, (metrics, finite)

  return jax.jit(
      guarded_step, donate_argnums=(0,),
      in_shardings=(state_shardings, *const_shardings, batch_sharding, None),
      out_shardings=(state_shardings, None))


def run_loop(step_fn: Callable, state: Any, state_shardings: Any, *, const_args: tuple,
             const_shardings: tuple, get_batch: Callable[[int], Any], batch_sharding: Any,
             num_steps: int, seed: int, ckpt: Checkpointer, writer: MetricWriter,
             log_every: int, desc: str, postfix: tuple = ("loss",), max_seconds: float = 0,
             max_cpu_seconds: float = 0):
  """Restores the latest checkpoint (if any), then runs steps [start, num_steps).

  max_seconds > 0 also stops after that much wall-clock time (checkpointing the last step), for
  comparisons at equal training time; max_cpu_seconds > 0 after that much CPU time of this
  process (all threads, user + system: a budget that other jobs on the machine do not eat).
  Both count from the end of the first step, so compilation (longer for PPOW's step than for
  the token-level one) is not charged to either side of a comparison.
  Each step's metrics carry its wall `step_time` and `step_cpu_time`.

  step_fn(state, *const_args, batch, rng) -> (state, metrics). Returns the final state.
  """
  start = 0
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    start = int(state["step"])
    logging.info("%s: resumed from step %d", desc, start)
  lead = jax.process_index() == 0  # One metrics file per run, written by process 0.
  if lead:
    writer.truncate_after(start)

  jitted = jit_step(step_fn, state_shardings, const_shardings, batch_sharding)
  base_rng = jax.random.key(seed)
  bar = Progress(num_steps, desc, initial=start, enabled=lead)
  t_start, cpu_start = time.perf_counter(), time.process_time()
  for step in range(start, num_steps):
    t0, c0 = time.perf_counter(), time.process_time()
    batch = jax.device_put(get_batch(step), batch_sharding)
    state, (metrics, finite) = jitted(state, *const_args, batch, jax.random.fold_in(base_rng, step))
    metrics, finite = jax.device_get((metrics, finite))
    check_finite(step + 1, float(metrics["loss"]), ckpt.latest_step(), bool(finite))
    metrics["step_time"] = time.perf_counter() - t0
    metrics["step_cpu_time"] = time.process_time() - c0
    if step == start:  # the budgets start after the compiling first step
      t_start, cpu_start = time.perf_counter(), time.process_time()
    if lead and ((step + 1) % log_every == 0 or step + 1 == num_steps):
      writer.write(step + 1, metrics)
    bar.set_postfix(" ".join(f"{k}={float(metrics[k]):.3f}" for k in postfix))
    if step > start and (max_seconds > 0 or max_cpu_seconds > 0):
      bar.total = _steps_in_budget(step + 1, num_steps, time.perf_counter() - t_start,
                                   time.process_time() - cpu_start, max_seconds, max_cpu_seconds,
                                   metrics)
    bar.update()
    out_of_time = ((max_seconds > 0 and time.perf_counter() - t_start > max_seconds)
                   or (max_cpu_seconds > 0 and time.process_time() - cpu_start > max_cpu_seconds))
    ckpt.save(step + 1, state, force=step + 1 == num_steps or out_of_time)
    if out_of_time:
      logging.warning("%s: stopping at step %d after max_seconds=%g / max_cpu_seconds=%g", desc,
                      step + 1, max_seconds, max_cpu_seconds)
      if (step + 1) % log_every:
        writer.write(step + 1, metrics)
      break
  bar.close()
  ckpt.close()
  writer.close()
  return state


def _steps_in_budget(done: int, num_steps: int, wall: float, cpu: float, max_seconds: float,
                     max_cpu_seconds: float, metrics: dict) -> int:
  """The step a time-budgeted run will likely stop at, so its progress bar shows a real ETA.

  Extrapolates from this step's wall and CPU time (the first, compiling step would mislead).
  """
  left = []
  if max_seconds > 0:
    left.append((max_seconds - wall) / max(metrics["step_time"], 1e-9))
  if max_cpu_seconds > 0:
    left.append((max_cpu_seconds - cpu) / max(metrics["step_cpu_time"], 1e-9))
  return int(min(num_steps, done + max(0, math.ceil(min(left)))))
