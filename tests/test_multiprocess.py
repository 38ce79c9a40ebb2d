"""Two JAX processes on localhost (gloo CPU collectives, 2 devices each) run PPOW together through
`python -m ppow_jax.main` and end with the metrics and drafter of one process on 4 devices."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import flax.nnx as nnx
import numpy as np
import pytest
from safetensors.numpy import load_file

from ppow_jax import run_files
from ppow_jax.data import selfdistill
from ppow_jax.eagle3 import build_vocab_maps, save_eagle3
from ppow_jax.eagle3 import model as e3
from ppow_jax.models.config import ModelConfig
from ppow_jax.training.metrics import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 3
TIMEOUT_S = 300

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def inputs(stories_path, tmp_path_factory):
  """Self-distillation records (random tokens: the data's content does not matter here) and a
  random token-level drafter export to start PPOW from."""
  root = tmp_path_factory.mktemp("mp_inputs")
  tcfg = ModelConfig.from_hf_dir(stories_path)
  rng = np.random.default_rng(0)
  data = root / "data"
  data.mkdir()
  splits = {split: [np.asarray([1, tcfg.bos_token_id, *rng.integers(3, tcfg.vocab_size, 31)],
                                np.int32) for _ in range(n)]
            for split, n in (("train", 20), ("heldout", 4))}
  selfdistill.write_dataset(str(data), splits)
  drafter = e3.Eagle3Drafter(e3.Eagle3Config.from_target(tcfg, draft_vocab_size=128),
                             rngs=nnx.Rngs(3))
  drafter.set_vocab_maps(*build_vocab_maps(rng.integers(0, 50, tcfg.vocab_size), 128))
  save_eagle3(drafter, str(root / "init"))
  return str(data), str(root / "init")


def command(stories_path, data, init, workdir, *distributed):
  return [sys.executable, "-m", "ppow_jax.main", "--config", str(ROOT / "configs" / "ppow.py"),
          "--workdir", workdir, f"--config.target.path={stories_path}",
          f"--config.drafter.init_from={init}", f"--config.data.dir={data}",
          "--config.data.num_samples=24", "--config.data.num_heldout=4",
          "--config.data.seq_len=32", f"--config.train.num_steps={NUM_STEPS}",
          "--config.train.batch_size=4", "--config.train.log_every=1",
          "--config.train.checkpoint_every=100", "--config.ppow.window=4",
          "--config.ppow.group_size=2", "--config.ppow.ppo_epochs=1",
          "--config.ppow.windowing_start=2", "--config.optim.learning_rate=1e-2",
          "--config.optim.warmup_steps=1", "--config.eval.windows=()", *distributed]


def start(cmd, devices, log):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
  return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)


def wait_all(procs, logs):
  """Waits for every process; on a timeout kills them all (their whole process groups)."""
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    pytest.fail(f"timed out after {TIMEOUT_S} s:\n" + "\n".join(
        pathlib.Path(f.name).read_text()[-3000:] for f in logs))
  for p, f in zip(procs, logs):
    assert p.returncode == 0, pathlib.Path(f.name).read_text()[-5000:]


def test_two_processes_match_one(stories_path, inputs, tmp_path):
  data, init = inputs
  single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
  coordinator = f"127.0.0.1:{free_port()}"
  logs = [open(tmp_path / f"log{i}.txt", "w") for i in range(3)]
  procs = [start(command(stories_path, data, init, single), 4, logs[0])]
  for i in range(2):
    procs.append(start(command(
        stories_path, data, init, multi, "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={i}", f"--config.distributed.coordinator={coordinator}"),
        2, logs[i + 1]))
  try:
    wait_all(procs, logs)
  finally:
    for f in logs:
      f.close()

  # One metrics file, written once (by process 0), equal step by step to the 1-process run.
  ref, got = read_metrics(single), read_metrics(multi)
  assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, NUM_STEPS + 1))
  for a, b in zip(ref, got):
    assert a.keys() == b.keys()
    for k in a:
      if k not in ("step_time", "step_cpu_time"):
        np.testing.assert_allclose(b[k], a[k], rtol=2e-4, atol=1e-6, err_msg=f"step {a['step']} {k}")
  assert any(r["grad_norm"] > 0 for r in ref) and ref[-1]["loss"] != ref[0]["loss"]
  assert all(r["kl"] > 0 for r in ref)  # KL(P_target || Q) of a random drafter

  # The exported drafters agree, and differ from the initial one (training happened).
  w_ref = load_file(os.path.join(single, "export", "model.safetensors"))
  w_got = load_file(os.path.join(multi, "export", "model.safetensors"))
  w_init = load_file(os.path.join(init, "model.safetensors"))
  assert w_ref.keys() == w_got.keys()
  for k in w_ref:
    np.testing.assert_allclose(w_got[k], w_ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
  assert max(np.abs(w_ref[k] - w_init[k]).max() for k in w_ref if w_ref[k].dtype != bool) > 1e-4

  # The checkpoint was written by both processes (each saves its own shards).
  ckpt = pathlib.Path(multi, "checkpoints", str(NUM_STEPS))
  written = {p.name for p in ckpt.rglob("ocdbt.process_*")}
  assert {"ocdbt.process_0", "ocdbt.process_1"} <= written, sorted(written)
  with open(os.path.join(multi, "eval.json")) as f:
    assert json.load(f)["num_steps"] == NUM_STEPS
