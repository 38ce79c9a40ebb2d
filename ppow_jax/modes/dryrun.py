"""Dry run: compile the PPOW train step for a TPU slice with no weights and no TPU.

  python -m ppow_jax.main --config configs/targets/llama31_8b.py --config.mode=dryrun \
    --workdir runs/dryrun/llama31_8b [--config.topology=v5p-64] [--config.dryrun.tiny=True]

Drafter parameters, optimizer state, the frozen target, d2t and the batch are abstract
(`jax.ShapeDtypeStruct`s with their NamedShardings from the config's mesh and rules); the step is
`make_ppow_step` jitted by `loop.jit_step`, the very function `loop.run_loop` trains with
(explicit in/out shardings, state donated, the finite-weights check), and compiled for a mesh
with as many devices as the topology has chips. With dryrun.platform="cpu" those are simulated
host devices: the mode sets their number before JAX starts its backend, or re-executes
`python -m ppow_jax.main` with XLA_FLAGS=--xla_force_host_platform_device_count=N. Prints
per-device memory (parameters, optimizer state and target from the shardings; arguments, outputs
and temporaries, i.e. activations, from the compiled executable's memory_analysis()) and every
parameter's sharding, and writes WORKDIR/dryrun.json. XLA:CPU's buffer assignment of the
same partitioned program is a guide to TPU HBM use, not a measurement of it.
"""

from __future__ import annotations

import math
import os
import sys
import time

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from ppow_jax import run_files
from ppow_jax.eagle3 import model as e3
from ppow_jax.models import transformer
from ppow_jax.models.config import ModelConfig
from ppow_jax.parallel import sharding

GIB = 1024 ** 3
MIB = 1024 ** 2
# Parameters at least this large must be split over some mesh axis (stacked norm scales, at
# most 80 x 8192 bf16 = 1.3 MB, may be replicated).
REPLICATED_LIMIT_BYTES = 4 * MIB
_REEXEC_ENV = "PPOW_DRYRUN_DEVICES"


# --- models and batch, all abstract ------------------------------------------------------------

def target_config(config) -> ModelConfig:
  """The target's architecture: `target.arch` (HF config.json fields) or target.path's file."""
  dtype = config.target.get("dtype") or None
  arch = config.target.get("arch")
  if arch:
    return ModelConfig.from_hf_dict(arch.to_dict(), source="config.target.arch", dtype=dtype)
  if not config.target.path:
    raise ValueError("dryrun: neither config.target.arch nor config.target.path is set")
  return ModelConfig.from_hf_dir(config.target.path, dtype=dtype)


def drafter_config(config, tcfg: ModelConfig) -> e3.Eagle3Config:
  """An EAGLE-3 drafter shaped like one target layer (as the published ones are)."""
  return e3.Eagle3Config.from_target(tcfg, draft_vocab_size=config.drafter.draft_vocab_size or None)


def tiny(config):
  """A copy with the same structure (family, RoPE type, GQA, qk-norm, bias, mesh axes in use)
  at toy size: checks a sharding plan and compiles in seconds on 8 devices."""
  c = config.copy_and_resolve_references()
  full = target_config(config)
  arch = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, head_dim=16,
              num_attention_heads=8 * (full.num_heads // full.num_kv_heads),  # same grouping
              num_key_value_heads=8, vocab_size=2048, max_position_embeddings=512)
  with c.unlocked():
    c.target.arch.update(arch)
    c.drafter.draft_vocab_size = 512
    c.data.update(seq_len=32, max_prompt_len=16, max_new_tokens=15)
    c.ppow.update(window=4, group_size=2, prefixes_per_seq=2, ppo_epochs=1)
    if c.get("topology"):
      entry = c.topologies[c.topology]
      used = [a for a in sharding.MESH_AXES if entry[a] > 1]
      sizes = {a: 1 for a in sharding.MESH_AXES}
      for a, s in zip(used, {0: [], 1: [8], 2: [2, 4], 3: [2, 2, 2]}[len(used)]):
        sizes[a] = s
      c.topology = ""  # the tiny mesh is not a real slice
      c.mesh.update(sizes)
      c.rules = entry.get("rules", "")
    b = math.prod(c.mesh[a] for a in ("data", "fsdp"))
    c.train.batch_size = 2 * b
  return c


def abstract_params(tcfg: ModelConfig, dcfg: e3.Eagle3Config):
  """(target params, drafter params) as ShapeDtypeStruct pytrees: nothing is allocated."""
  target = jax.eval_shape(lambda: transformer.Transformer(tcfg, rngs=nnx.Rngs(0)).params())
  drafter = jax.eval_shape(lambda: e3.Eagle3Drafter(dcfg, rngs=nnx.Rngs(0)).params())
  return target, drafter


def _with_sharding(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def _path(path) -> str:
  return "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def _bytes(x) -> int:
  return int(np.prod(x.shape, dtype=np.int64)) * np.dtype(x.dtype).itemsize


def _device_bytes(x, sh) -> int:
  return int(np.prod(sh.shard_shape(x.shape), dtype=np.int64)) * np.dtype(x.dtype).itemsize


def tree_device_bytes(tree, shardings) -> int:
  """Bytes one device holds of a pytree under its shardings (the largest shard, per leaf)."""
  sizes = jax.tree.map(_device_bytes, tree, shardings)
  return int(sum(jax.tree.leaves(sizes)))


def param_table(tree, shardings, prefix: str) -> list[dict]:
  """One row per parameter: name, shape, dtype, PartitionSpec, bytes in all and per device."""
  rows = []
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  shs = jax.tree.leaves(shardings)
  for (path, x), sh in zip(flat, shs):
    rows.append(dict(name=f"{prefix}/{_path(path)}", shape=list(x.shape), dtype=str(x.dtype),
                     spec=str(tuple(sh.spec)), mesh_axes=sorted(_spec_axes(sh.spec)),
                     bytes=_bytes(x), bytes_per_device=_device_bytes(x, sh)))
  return rows


def _spec_axes(spec) -> set:
  axes = set()
  for e in spec:
    if e is None:
      continue
    axes.update((e,) if isinstance(e, str) else e)
  return axes


class Plan:
  """Everything the step needs, abstract and sharded, for one config on one mesh."""

  def __init__(self, config, mesh):
    from ppow_jax.modes import ppow as ppow_mode
    from ppow_jax.training import drafter_init, loop

    self.mesh = mesh
    self.rules = sharding.rules_from_config(config)
    self.tcfg = target_config(config)
    self.dcfg = drafter_config(config, self.tcfg)
    self.target, self.drafter = abstract_params(self.tcfg, self.dcfg)
    self.target_sh = sharding.tree_shardings(self.target, transformer.LOGICAL_AXES, mesh,
                                             self.rules)
    self.drafter_sh = sharding.tree_shardings(self.drafter, e3.LOGICAL_AXES, mesh, self.rules)
    self.settings = ppow_mode.settings_from_config(config)
    self.optimizer = drafter_init.make_optimizer(config.optim, config.train.num_steps)
    self.state_sh = loop.state_shardings(self.optimizer, self.drafter, self.drafter_sh, mesh)
    self.opt_state = jax.eval_shape(self.optimizer.init, self.drafter)
    b, t = int(config.train.batch_size), int(config.data.seq_len)
    self.batch_sh = sharding.batch_sharding(mesh, 2, self.rules)
    self.batch = {"tokens": jax.ShapeDtypeStruct((b, t), jnp.int32),
                  "valid": jax.ShapeDtypeStruct((b, t), jnp.bool_),
                  "loss_mask": jax.ShapeDtypeStruct((b, t), jnp.bool_)}
    self.d2t = jax.ShapeDtypeStruct((self.dcfg.draft_vocab_size,), jnp.int32)
    self.capacity = t + self.settings.window + 2

  def memory(self) -> dict:
    """Per-device bytes of what the step holds between steps, from the shardings alone."""
    repl = sharding.replicated(self.mesh)
    return {
        "drafter_params": tree_device_bytes(self.drafter, self.drafter_sh),
        "optimizer_state": tree_device_bytes(self.opt_state, self.state_sh["opt_state"]),
        "target_params": tree_device_bytes(self.target, self.target_sh),
        "batch": tree_device_bytes(self.batch, {k: self.batch_sh for k in self.batch}),
        "d2t": _device_bytes(self.d2t, repl),
    }

  def params(self) -> list[dict]:
    return (param_table(self.drafter, self.drafter_sh, "drafter")
            + param_table(self.target, self.target_sh, "target"))

  def lower(self, step_fn=None):
    """The training loop's jitted step (`loop.jit_step`, the function `loop.run_loop` runs)
    lowered on abstract, sharded arguments; it returns (state, (metrics, finite)).

    step_fn: any (state, target_params, d2t, batch, rng) -> (state, metrics) over this plan's
    shapes, e.g. the token-level step (`eagle3.train_step.make_train_step`); default the PPOW step.
    """
    from ppow_jax.ppow.step import make_ppow_step
    from ppow_jax.training import loop

    repl = sharding.replicated(self.mesh)
    if step_fn is None:
      step_fn = make_ppow_step(self.tcfg, self.dcfg, self.optimizer, self.settings, self.capacity)
    jitted = loop.jit_step(step_fn, self.state_sh, (self.target_sh, repl), self.batch_sh)
    state = {"params": self.drafter, "opt_state": self.opt_state,
             "step": jax.ShapeDtypeStruct((), jnp.int32)}
    state = _with_sharding(state, self.state_sh)
    rng = jax.eval_shape(lambda: jax.random.key(0))
    return jitted.lower(state, _with_sharding(self.target, self.target_sh),
                        jax.ShapeDtypeStruct(self.d2t.shape, self.d2t.dtype, sharding=repl),
                        _with_sharding(self.batch, {k: self.batch_sh for k in self.batch}), rng)


def compiled_memory(compiled) -> dict:
  """Per-device sizes from XLA's buffer assignment of the partitioned program."""
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in
         ("argument", "output", "alias", "temp", "generated_code")}
  # Live at the step's peak, at most: inputs, outputs not aliased to a donated input, temporaries.
  out["peak_estimate"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


# --- devices ------------------------------------------------------------------------------------

def required_devices(config) -> int:
  topo = sharding.TOPOLOGIES.get(config.get("topology") or "")
  if topo is not None:
    return topo.chips
  sizes = sharding.mesh_shape(config)
  if any(s == -1 for s in sizes.values()):
    return jax.device_count()
  return math.prod(sizes.values())


def devices_for(n: int, platform: str):
  """N devices of `platform` ("cpu": simulated host devices; "": whatever JAX has)."""
  from jax._src import xla_bridge

  if platform == "cpu" and not xla_bridge.backends_are_initialized():
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)
  devices = jax.devices(platform) if platform else jax.devices()
  if len(devices) == n:
    return devices
  if platform == "cpu" and _can_reexec(n):
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{_REEXEC_ENV: str(n)},
               XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={n}"]))
    print(f"dryrun: re-running with {n} simulated CPU devices (JAX has {len(devices)})",
          flush=True)
    os.execve(sys.executable, [sys.executable, "-m", "ppow_jax.main", *sys.argv[1:]], env)
  raise RuntimeError(
      f"dryrun needs {n} {platform or 'JAX'} devices but JAX has {len(devices)} (its backend "
      f"started first). Set XLA_FLAGS=--xla_force_host_platform_device_count={n} "
      "JAX_PLATFORMS=cpu before starting Python, or run it as python -m ppow_jax.main.")


def _can_reexec(n: int) -> bool:
  main = os.path.join("ppow_jax", "main.py")
  return sys.argv[0].endswith(main) and os.environ.get(_REEXEC_ENV) != str(n)


# --- the mode -----------------------------------------------------------------------------------

def dry_run(config, devices=None) -> dict:
  """Plans, lowers and compiles the step; returns the dryrun.json record (nothing printed)."""
  topo = sharding.apply_topology(config)
  mesh = sharding.make_mesh(sharding.mesh_shape(config), devices)
  plan = Plan(config, mesh)
  t0 = time.perf_counter()
  lowered = plan.lower()
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  params = plan.params()
  held = plan.memory()
  return {
      "topology": topo.name if topo else "",
      "accelerator_type": topo.accelerator_type if topo else "",
      "hbm_gib_per_chip": topo.hbm_gib if topo else None,
      "platform": mesh.devices.flat[0].platform,
      "num_devices": mesh.size,
      "mesh": dict(mesh.shape),
      "rules": {k: v for k, v in plan.rules.rules},
      "target": {"model_type": plan.tcfg.model_type, "num_params": plan.tcfg.num_params(),
                 "dtype": plan.tcfg.dtype},
      "drafter": {"num_params": sum(r["bytes"] // np.dtype(r["dtype"]).itemsize
                                    for r in params if r["name"].startswith("drafter/")),
                  "draft_vocab_size": plan.dcfg.draft_vocab_size,
                  "aux_layers": list(plan.dcfg.aux_layers)},
      "batch": {"batch_size": int(config.train.batch_size), "seq_len": int(config.data.seq_len),
                "window": plan.settings.window, "group_size": plan.settings.group_size,
                "prefixes_per_seq": plan.settings.prefixes_per_seq},
      "memory_per_device": {"held": held, "compiled": compiled_memory(compiled)},
      "replicated_large": [r["name"] for r in params if not r["mesh_axes"]
                           and r["bytes"] >= REPLICATED_LIMIT_BYTES],
      "lower_seconds": t1 - t0, "compile_seconds": t2 - t1,
      "params": params,
  }


def _count(n: int) -> str:
  return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else str(n)


def _fmt(n: int) -> str:
  return f"{n / GIB:8.3f} GiB" if n >= GIB // 10 else f"{n / MIB:8.2f} MiB"


def report(r: dict, print_params: bool = True) -> str:
  mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
  head = (f"{r['topology']} ({r['accelerator_type']}, " if r["topology"] else "(")
  lines = [f"dryrun: {head}{r['num_devices']} {r['platform']} devices), mesh {mesh}, "
           f"target {r['target']['model_type']} {_count(r['target']['num_params'])} "
           f"{r['target']['dtype']}, drafter {_count(r['drafter']['num_params'])}, batch "
           f"{r['batch']['batch_size']} x {r['batch']['seq_len']}; compiled in "
           f"{r['compile_seconds']:.1f} s",
           "per-device memory:"]
  held, comp = r["memory_per_device"]["held"], r["memory_per_device"]["compiled"]
  for k in ("drafter_params", "optimizer_state", "target_params", "batch"):
    lines.append(f"  {k:<28}{_fmt(held[k])}")
  lines += [f"  {'arguments (compiled)':<28}{_fmt(comp['argument'])}",
            f"  {'outputs (aliased: donated)':<28}{_fmt(comp['output'])} ({_fmt(comp['alias']).strip()})",
            f"  {'temporaries (activations)':<28}{_fmt(comp['temp'])}",
            f"  {'peak estimate':<28}{_fmt(comp['peak_estimate'])}"]
  if r["hbm_gib_per_chip"]:
    fits = comp["peak_estimate"] <= r["hbm_gib_per_chip"] * GIB
    lines[-1] += f"  ({'fits' if fits else 'EXCEEDS'} {r['hbm_gib_per_chip']:g} GiB HBM per chip)"
  if r["replicated_large"]:
    lines.append(f"replicated parameters >= {REPLICATED_LIMIT_BYTES // MIB} MiB: "
                 + ", ".join(r["replicated_large"]))
  if print_params:
    lines.append("parameter sharding (name, shape, dtype, spec, per device):")
    for p in r["params"]:
      lines.append(f"  {p['name']:<42} {str(tuple(p['shape'])):<20} {p['dtype']:<9} "
                   f"{p['spec']:<28} {_fmt(p['bytes_per_device']).strip()}")
  return "\n".join(lines)


def run(config, workdir: str):
  d = config.get("dryrun") or {}
  if d.get("tiny", False):
    config = tiny(config)
  platform = d.get("platform", "cpu")
  devices = devices_for(required_devices(config), platform)
  result = dry_run(config, devices)
  print(report(result, d.get("print_params", True)), flush=True)
  os.makedirs(workdir, exist_ok=True)
  run_files.write_json(os.path.join(workdir, "dryrun.json"), result)
  return result
