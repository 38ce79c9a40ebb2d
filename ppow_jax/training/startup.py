"""Start-up of a drafter training run: multi-host initialisation, the device mesh, and the frozen
target loaded (sharded when the mesh splits it) with its tokenizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from ppow_jax.models import hf_checkpoint, transformer
from ppow_jax.parallel import sharding
from ppow_jax.user_errors import ConfigValueError


@dataclasses.dataclass
class Target:
  """The frozen target of a run: its model (config and weights) and tokenizer."""

  model: Any
  tokenizer: Any

  @property
  def cfg(self):
    return self.model.cfg

  def params(self):
    return self.model.params()


def start_up(config):
  """Multi-host start-up (config.distributed) and the named TPU topology (if any), before any
  device is touched."""
  if config.get("distributed"):
    sharding.initialize_distributed(config.distributed)  # num_processes -1: pod auto-discovery
  sharding.apply_topology(config)  # configs/targets/*: mesh, rules, batch size of the slice


def config_mesh(config):
  """The device mesh of config.mesh (over the first mesh.num_devices devices, 0 = all)."""
  n = config.mesh.get("num_devices", 0)
  return sharding.make_mesh(sharding.mesh_shape(config), jax.devices()[:n] if n else None)


def load_target(config) -> Target:
  """The frozen target. When the config's mesh and rules split its weights, each weight goes
  straight to its shards as it is read, so a target larger than one chip or one host loads;
  otherwise it loads onto the default device (replicated later, with the train state)."""
  if not config.target.path:
    raise ConfigValueError("config.target.path is empty: give a Hugging Face checkpoint directory")
  mesh, rules = config_mesh(config), sharding.rules_from_config(config)

  def place(abstract):
    shardings = sharding.tree_shardings(abstract, transformer.LOGICAL_AXES, mesh, rules)
    split = not all(sh.is_fully_replicated for sh in jax.tree.leaves(shardings))
    return shardings if split else None

  model = hf_checkpoint.load_model(config.target.path, dtype=config.target.dtype or None,
                                   shardings=place)
  return Target(model, hf_checkpoint.load_tokenizer(config.target.path))


def parse_aux_layers(spec, num_layers: int) -> tuple[int, int, int]:
  """drafter.aux_layers "1,3,5" -> (1, 3, 5): three residual streams, each in [1, num_layers]."""
  try:
    layers = tuple(int(x) for x in str(spec).replace(" ", "").split(",") if x)
  except ValueError:
    raise ConfigValueError(f"config.drafter.aux_layers={spec!r}: expected three comma-separated "
                           "integers") from None
  if len(layers) != 3 or not all(1 <= i <= num_layers for i in layers):
    raise ConfigValueError(f"config.drafter.aux_layers={spec!r}: expected three layer indices in "
                           f"[1, {num_layers}] (the residual stream after that many target "
                           "layers)")
  return layers
