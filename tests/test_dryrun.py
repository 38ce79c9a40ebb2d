"""Dry run: the target configs embed the published architectures, every topology's plan splits
every large parameter and fits its chips' HBM, and a reduced config compiles on 8 devices with
memory_analysis() numbers that match the shardings."""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh

from ppow_jax.modes import dryrun
from ppow_jax.parallel import sharding
from ppow_jax.user_errors import ConfigValueError

TARGETS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "targets"
NAMES = ("llama31_8b", "llama33_70b", "qwen3_8b", "qwen3_32b")
# Parameter counts of the Hugging Face checkpoints (safetensors totals).
PUBLISHED = {"llama31_8b": 8_030_261_248, "llama33_70b": 70_553_706_496,
             "qwen3_8b": 8_190_735_360, "qwen3_32b": 32_762_123_264}


def load(name, *args):
  spec = importlib.util.spec_from_file_location(f"target_{name}", TARGETS / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(*args)


def abstract_mesh(config):
  sizes = sharding.mesh_shape(config)
  return AbstractMesh(tuple(sizes[a] for a in sharding.MESH_AXES), sharding.MESH_AXES)


@pytest.mark.parametrize("name", NAMES)
def test_configs_embed_the_published_architecture(name):
  c = load(name)
  tcfg = dryrun.target_config(c)
  assert tcfg.num_params() == PUBLISHED[name]
  assert tcfg.dtype == "bfloat16" and tcfg.head_dim == 128 and not tcfg.tie_word_embeddings
  if name.startswith("llama"):
    assert tcfg.rope_llama3 == (8.0, 1.0, 4.0, 8192) and tcfg.rope_theta == 500000.0
    assert tcfg.vocab_size == 128256 and not tcfg.qk_norm
  else:
    assert tcfg.qk_norm and tcfg.rope_llama3 is None and tcfg.vocab_size == 151936
  dcfg = dryrun.drafter_config(c, tcfg)
  assert dcfg.draft_vocab_size == 32000 and dcfg.hidden_size == tcfg.hidden_size
  assert dcfg.aux_layers == (2, tcfg.num_layers // 2, tcfg.num_layers - 3)
  assert c.mode == "ppow" and c.distributed.num_processes == -1
  doc = (TARGETS / f"{name}.py").read_text().split('"""')[1]  # the docstring holds its commands
  assert f"--config configs/targets/{name}.py --config.mode=dryrun" in doc
  assert "launch/run_tpu.sh" in doc


@pytest.mark.parametrize("name,topology", [(n, t) for n in NAMES for t in load(n).topologies])
def test_every_topology_plan_splits_large_parameters_and_fits(name, topology):
  c = load(name, topology)
  topo = sharding.apply_topology(c)
  mesh = abstract_mesh(c)
  assert mesh.size == topo.chips and c.train.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0
  plan = dryrun.Plan(c, mesh)
  rows = plan.params()
  big = [r for r in rows if r["bytes"] >= dryrun.REPLICATED_LIMIT_BYTES]
  assert len(big) >= 14
  assert [r["name"] for r in big if not r["mesh_axes"]] == []
  # The target's matrices are split over every weight axis in use (fsdp x tensor).
  split = mesh.shape["fsdp"] * mesh.shape["tensor"]
  for r in rows:
    if r["name"].startswith("target/layers/") and r["name"].endswith("_proj"):
      assert r["bytes_per_device"] * split == r["bytes"], r
  held = plan.memory()
  tcfg = plan.tcfg
  assert held["target_params"] * split == pytest.approx(2 * tcfg.num_params(), rel=1e-3)
  # AdamW keeps two moments per drafter weight, sharded like the weight.
  assert held["optimizer_state"] == pytest.approx(2 * held["drafter_params"], rel=1e-3)
  assert held["drafter_params"] + held["optimizer_state"] + held["target_params"] < (
      0.5 * topo.hbm_gib * dryrun.GIB)


def test_rules_and_topology_overrides():
  c = load("llama31_8b", "v5p-64")
  c.topologies["v5p-64"].rules = "embed=fsdp+data,vocab=,fused=tensor"
  sharding.apply_topology(c)
  plan = dryrun.Plan(c, abstract_mesh(c))
  rows = {r["name"]: r for r in plan.params()}
  assert rows["target/layers/q_proj"]["spec"] == str((None, "data", "tensor"))  # fsdp=1 here
  assert rows["target/embed"]["spec"] == str((None, "data"))  # vocab now replicated
  with pytest.raises(ConfigValueError, match="unknown logical axis 'heads'"):
    sharding.parse_rules("heads=tensor")
  with pytest.raises(ValueError, match="not mesh axes"):
    sharding.parse_rules({"embed": "model"})
  bad = load("qwen3_8b")
  bad.topologies["v5e-8"].tensor = 8
  with pytest.raises(ValueError, match="16 devices; v5e-8 has 8 chips"):
    sharding.apply_topology(bad)
  c = load("qwen3_8b", "v6e-256")
  c.train.batch_size = 512  # an explicit batch size wins over the topology's
  sharding.apply_topology(c)
  assert c.train.batch_size == 512 and sharding.mesh_shape(c) == dict(data=32, fsdp=2, tensor=4)


def test_tiny_keeps_the_structure():
  for name in NAMES:
    full = load(name)
    small = dryrun.tiny(full)
    a, b = dryrun.target_config(full), dryrun.target_config(small)
    assert (a.model_type, a.qk_norm, a.rope_llama3, a.dtype) == (
        b.model_type, b.qk_norm, b.rope_llama3, b.dtype)
    assert b.num_params() < 5e6 and b.num_heads // b.num_kv_heads == a.num_heads // a.num_kv_heads
    used = {k for k, v in full.topologies[full.topology].items() if k in sharding.MESH_AXES and v > 1}
    assert {k for k, v in sharding.mesh_shape(small).items() if v > 1} == used
    assert math.prod(sharding.mesh_shape(small).values()) == 8


@pytest.mark.slow
def test_tiny_dry_run_compiles_with_consistent_memory(tmp_path, capsys):
  """qwen3_32b's v5p-64 plan (data x fsdp x tensor) at toy size, compiled on 8 CPU devices."""
  config = load("qwen3_32b")
  config.dryrun.tiny = True
  r = dryrun.run(config, str(tmp_path))
  out = capsys.readouterr().out
  assert r["num_devices"] == 8 and r["mesh"] == dict(data=2, fsdp=2, tensor=2)
  assert r["replicated_large"] == []
  with open(tmp_path / "dryrun.json") as f:
    assert json.load(f)["memory_per_device"] == r["memory_per_device"]

  held, comp = r["memory_per_device"]["held"], r["memory_per_device"]["compiled"]
  assert all(v > 0 for v in held.values()) and all(comp[k] > 0 for k in ("argument", "temp"))
  state = held["drafter_params"] + held["optimizer_state"]
  # Arguments: the state, the frozen target, d2t and the batch (+ step counter and rng key).
  args = state + held["target_params"] + held["batch"] + held["d2t"]
  assert comp["argument"] == pytest.approx(args, rel=0.002, abs=256)
  # The donated state comes back in place: outputs alias its buffers.
  assert comp["alias"] == pytest.approx(state, rel=0.002, abs=64)
  assert comp["output"] >= comp["alias"]
  # Held bytes follow the parameter counts: bf16 weights, each split fsdp x tensor = 4 ways
  # (norm scales, 1% of this toy model, replicated).
  tcfg = dryrun.target_config(dryrun.tiny(config))
  assert r["target"]["num_params"] == tcfg.num_params()
  assert held["target_params"] * 4 == pytest.approx(2 * tcfg.num_params(), rel=0.03)
  assert held["optimizer_state"] == pytest.approx(2 * held["drafter_params"], rel=1e-3)
  names = {p["name"] for p in r["params"]}
  assert {"drafter/fc", "drafter/lm_head", "target/embed", "target/layers/q_norm"} <= names
  assert "peak estimate" in out and "target/layers/q_proj" in out


def test_too_few_devices_is_explained():
  jax.devices()  # the backend is up (as after any other test): the count can no longer change
  with pytest.raises(RuntimeError, match="xla_force_host_platform_device_count=16"):
    dryrun.devices_for(16, "cpu")
  assert len(dryrun.devices_for(len(jax.devices()), "")) == len(jax.devices())
  np.testing.assert_equal(dryrun.required_devices(load("llama33_70b")), 32)


@pytest.mark.e2e
def test_command_line_selects_topology_and_overrides_its_mesh(tmp_path):
  """`--config=FILE:TOPOLOGY` and a bracketed topology override reach the dryrun mode (which
  refuses a mesh that does not use the slice's chips before compiling anything)."""
  res = subprocess.run(
      [sys.executable, "-m", "ppow_jax.main", f"--config={TARGETS / 'llama31_8b.py'}:v5p-64",
       "--config.mode=dryrun", "--config.topologies['v5p-64'].data=4", "--workdir",
       str(tmp_path)], cwd=TARGETS.parents[1], capture_output=True, text=True, timeout=120)
  assert res.returncode != 0
  assert "topologies['v5p-64'] mesh {'data': 4, 'fsdp': 1, 'tensor': 4} has 16 devices; " \
         "v5p-64 has 32 chips" in res.stderr
