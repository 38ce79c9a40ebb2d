"""A small sharding-rules object: logical axis names -> mesh axes -> NamedSharding.

Parameters carry logical axes (`ppow_jax.models.transformer.LOGICAL_AXES`, the EAGLE-3 drafter's
own table); a `Rules` maps each logical name to zero or more mesh axes. A dimension that the
mapped mesh axes do not divide stays replicated, so one rule set serves a 260K-parameter test
model on 8 CPU devices and a 70B model on a v5p pod.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ppow_jax.user_errors import ConfigValueError

MESH_AXES = ("data", "fsdp", "tensor")

# MaxText-style defaults: batch over data x fsdp, weights' embed dim over fsdp (ZeRO-3 style),
# heads / MLP hidden / vocab over tensor (Megatron style); layers and norms replicated.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("draft_vocab", "tensor"),
    ("fused", "fsdp"),
    ("layers", None),
    ("norm", None),
    ("length", None),
)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over `devices` (default: all) with axes data/fsdp/tensor; one size may be -1."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
  unknown = set(shape) - set(MESH_AXES)
  if unknown:
    raise ConfigValueError(f"mesh: unknown axes {sorted(unknown)}; expected {MESH_AXES}")
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ConfigValueError(f"mesh: at most one axis may be -1, got {free}")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if len(devices) % fixed:
      raise ConfigValueError(f"mesh {dict(shape)}: {len(devices)} devices not divisible by {fixed}")
    sizes[free[0]] = len(devices) // fixed
  if math.prod(sizes.values()) != len(devices):
    raise ConfigValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, "
                     f"but {len(devices)} are available")
  arr = np.asarray(devices).reshape([sizes[a] for a in MESH_AXES])
  return Mesh(arr, MESH_AXES)


@dataclasses.dataclass(frozen=True)
class Rules:
  """Logical axis name -> mesh axis (str), tuple of mesh axes, or None (replicated)."""
  rules: tuple = DEFAULT_RULES

  def mesh_axes(self, logical: str | None):
    if logical is None:
      return None
    for name, target in self.rules:
      if name == logical:
        return target
    raise KeyError(f"no sharding rule for logical axis {logical!r}")

  def spec(self, logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> P:
    """PartitionSpec for an array; axes that do not divide its dimension are dropped."""
    if len(logical_axes) != len(shape):
      raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    used, out = set(), []
    for name, dim in zip(logical_axes, shape):
      target = self.mesh_axes(name)
      axes = (target,) if isinstance(target, str) else tuple(target or ())
      axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
      while axes and dim % math.prod(mesh.shape[a] for a in axes):
        axes = axes[:-1]  # Drop the innermost axis until the dimension divides.
      used.update(axes)
      out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def tree_logical_axes(params: Any, table: Mapping[str, tuple]) -> Any:
  """Logical axes for every leaf of a params pytree, looked up by its '/'-joined path."""

  def lookup(path, leaf):
    key = "/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)
    if key not in table:
      raise KeyError(f"no logical axes for parameter {key!r}")
    return table[key]

  return jax.tree_util.tree_map_with_path(lookup, params)


def tree_shardings(params: Any, table: Mapping[str, tuple], mesh: Mesh, rules: Rules = Rules()):
  """NamedSharding for every leaf of a params pytree (or of abstract ShapeDtypeStructs)."""
  axes = tree_logical_axes(params, table)
  return jax.tree.map(lambda x, a: NamedSharding(mesh, rules.spec(a, x.shape, mesh)), params, axes,
                      is_leaf=lambda x: isinstance(x, tuple) and all(
                          isinstance(e, (str, type(None))) for e in x))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules = Rules()) -> NamedSharding:
  """Leading axis over the batch mesh axes (those of size > 1), the rest replicated."""
  target = tuple(a for a in rules.mesh_axes("batch") if mesh.shape[a] > 1)
  return NamedSharding(mesh, P(target or None, *([None] * (ndim - 1))))


# --- Named TPU topologies, per-config overrides, multi-host start-up ---------------------------

@dataclasses.dataclass(frozen=True)
class Topology:
  """A Cloud TPU slice: what `gcloud` calls it and what JAX sees (one device per chip)."""
  name: str
  accelerator_type: str  # gcloud --accelerator-type
  runtime_version: str  # gcloud --version / --runtime-version
  chips: int  # = jax.device_count()
  hbm_gib: float  # HBM per chip


TOPOLOGIES = {t.name: t for t in (
    Topology("v4-8", "v4-8", "tpu-ubuntu2204-base", 4, 32),
    Topology("v4-32", "v4-32", "tpu-ubuntu2204-base", 16, 32),
    Topology("v5e-8", "v5litepod-8", "v2-alpha-tpuv5-lite", 8, 16),
    Topology("v5e-64", "v5litepod-64", "v2-alpha-tpuv5-lite", 64, 16),
    Topology("v5e-256", "v5litepod-256", "v2-alpha-tpuv5-lite", 256, 16),
    Topology("v5p-8", "v5p-8", "v2-alpha-tpuv5", 4, 95),  # v5p names count TensorCores (2/chip)
    Topology("v5p-64", "v5p-64", "v2-alpha-tpuv5", 32, 95),
    Topology("v5p-128", "v5p-128", "v2-alpha-tpuv5", 64, 95),
    Topology("v6e-8", "v6e-8", "v2-alpha-tpuv6e", 8, 32),
    Topology("v6e-64", "v6e-64", "v2-alpha-tpuv6e", 64, 32),
    Topology("v6e-256", "v6e-256", "v2-alpha-tpuv6e", 256, 32),
)}


def parse_rules(overrides: Mapping[str, Any] | str | None, base: Rules = Rules()) -> Rules:
  """`base` with some logical axes remapped to "fsdp", "data+fsdp" (several axes) or "" (none).

  `overrides` is a mapping or a string "embed=fsdp+data,vocab=tensor" (what a config holds, so
  that one --config.rules=... flag sets it).
  """
  if isinstance(overrides, str):
    pairs = [kv.split("=", 1) for kv in overrides.replace(" ", "").split(",") if kv]
    if any(len(p) != 2 for p in pairs):
      raise ConfigValueError(f"sharding rules {overrides!r}: expected 'axis=mesh_axes,...'")
    overrides = dict(pairs)
  table = dict(base.rules)
  for name, target in (overrides or {}).items():
    if name not in table:
      raise ConfigValueError(f"sharding rules: unknown logical axis {name!r}; known: "
                             f"{sorted(table)}")
    if isinstance(target, str):
      axes = tuple(a for a in target.split("+") if a)
    else:
      axes = tuple(target or ())
    bad = set(axes) - set(MESH_AXES)
    if bad:
      raise ConfigValueError(f"sharding rules: {name!r} -> {sorted(bad)}: not mesh axes "
                             f"{MESH_AXES}")
    table[name] = None if not axes else axes[0] if len(axes) == 1 else axes
  return Rules(tuple(table.items()))


def apply_topology(config) -> Topology | None:
  """Fills config.mesh, config.rules and (if 0) config.train.batch_size from the named topology.

  A config with `topology` set carries `topologies[name]` = {data, fsdp, tensor, batch_size,
  rules (a parse_rules string)}; the mesh must use every chip of the slice. Configs without a
  topology are left unchanged.
  """
  name = config.get("topology") or ""
  if not name:
    return None
  if name not in TOPOLOGIES:
    raise ConfigValueError(f"topology {name!r} is unknown; known: {', '.join(TOPOLOGIES)}")
  if name not in config.topologies:
    raise ConfigValueError(f"topology {name!r} has no entry in this config's `topologies` "
                     f"({', '.join(config.topologies)})")
  entry, topo = config.topologies[name], TOPOLOGIES[name]
  sizes = {a: int(entry[a]) for a in MESH_AXES}
  if math.prod(sizes.values()) != topo.chips:
    raise ConfigValueError(f"topologies[{name!r}] mesh {sizes} has {math.prod(sizes.values())} "
                           f"devices; {name} has {topo.chips} chips")
  config.mesh.update(sizes)
  if "rules" in config:
    config.rules = entry.get("rules", "")
  if not config.train.batch_size:
    config.train.batch_size = int(entry["batch_size"])
  return topo


def rules_from_config(config) -> Rules:
  """DEFAULT_RULES with the config's `rules` overrides (if any)."""
  return parse_rules(config.get("rules") or None)


def mesh_shape(config) -> dict:
  """The data/fsdp/tensor sizes of config.mesh (other keys, e.g. num_devices, dropped)."""
  return {a: int(config.mesh[a]) for a in MESH_AXES if a in config.mesh}


def initialize_distributed(d) -> None:
  """Multi-host start-up from a config's `distributed` block.

  num_processes: 1 = single process (nothing to do); N > 1 = explicit coordinator/process_id
  (any platform; CPU needs JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo); -1 = discover the cluster
  (`jax.distributed.initialize()` with no arguments: TPU pods, SLURM, ...).
  """
  n = int(d.num_processes)
  if n == -1:
    jax.distributed.initialize()
  elif n > 1:
    jax.distributed.initialize(coordinator_address=d.coordinator, num_processes=n,
                               process_id=int(d.process_id))
  elif n != 1:
    raise ConfigValueError(f"distributed.num_processes={n}; expected 1, N > 1 or -1 (auto)")
