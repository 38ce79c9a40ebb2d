"""benchmarks/accelerator_check.py: its CPU smoke run in a subprocess (correctness passes, every
stage reports, a forced failure stays in its stage), the matmul FLOP count behind its MFU, the
peak-FLOP/s table, and the wrapper that installs carried wheels."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import accelerator_check as ac  # noqa: E402


def test_matmul_flops_counts_dots_scans_conds_and_backward():
  m, k, n, layers = 3, 5, 7, 4
  x, w = jnp.ones((m, k)), jnp.ones((k, n))
  one = 2 * m * k * n
  assert ac.step_flops(lambda x, w: x @ w, x, w) == (one, False)
  # A scan body counts once per step; the backward pass adds its own matmuls (dW = x^T g).
  ws = jnp.ones((layers, k, k))
  scan = lambda x, ws: jax.lax.scan(lambda h, w: (h @ w, None), x, ws)[0]  # noqa: E731
  assert ac.step_flops(scan, x, ws) == (layers * 2 * m * k * k, False)
  assert ac.step_flops(jax.grad(lambda w: jnp.sum((x @ w) ** 2)), w) == (2 * one, False)
  # A cond counts its costliest branch; a while loop once, flagged.
  cond = lambda p, x, w: jax.lax.cond(p, lambda: (x @ w) @ w.T, lambda: x)  # noqa: E731
  assert ac.step_flops(cond, True, x, w) == (one + 2 * m * n * k, False)
  loop = lambda x, w: jax.lax.while_loop(lambda c: c[1] < 3,  # noqa: E731
                                         lambda c: (c[0] @ w @ w.T, c[1] + 1), (x, 0))[0]
  assert ac.step_flops(loop, x, w) == (2 * one, True)


def test_peak_flops_by_device_kind():
  assert ac.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
  assert ac.peak_bf16_flops("NVIDIA H200") == 989e12
  assert ac.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
  for unknown in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "cpu", "TPU v5 lite", ""):
    assert ac.peak_bf16_flops(unknown) is None


@pytest.mark.e2e
def test_smoke_run_reports_every_stage_and_keeps_a_failure_in_its_stage(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "accelerator_check.py"),
                        "--smoke", "--fail_stage", "decode", "--budget_s", "1200",
                        "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=1500)
  assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]  # decode failed, on purpose
  r = json.loads((tmp_path / ac.RESULT_JSON).read_text())
  md = (tmp_path / ac.RESULT_MD).read_text()
  assert r["mode"] == "smoke" and r["device"]["platform"] == "cpu"
  assert r["device"]["jax"] == jax.__version__ and r["device"]["peak_bf16_flops"] is None
  assert r["commit"] and r["commit"] in md and jax.__version__ in md
  st = r["stages"]
  assert set(st) == set(ac.STAGES)
  # The forced failure is recorded in its own stage; the stages after it in its group ran.
  assert st["decode"]["status"] == "failed" and "forced failure" in st["decode"]["error"]
  assert "decode: failed: RuntimeError: forced failure" in md
  assert all(st[n]["status"] == "ok" for n in ac.STAGES if n != "decode"), st
  c = st["correctness"]
  assert r["correctness_passed"] and c["passed"]
  spec = [row for row in c["rows"] if row["case"] != "autoregressive"]
  assert spec and all(row["identical"] for row in c["rows"])
  assert {row["batch"] for row in spec} == {1, 8}
  assert {row["case"].split()[0] for row in spec} == {"chain", "tree"}
  assert {row["drafter"] for row in spec} == {"trunc", "eagle3"}
  assert any(row["tau"] > 1 for row in spec)  # the truncated drafter gets tokens accepted
  assert st["prefill"]["tokens_per_second"] > 0 and st["prefill"]["flops"] > 0
  widths = [row["width"] for row in st["verify_cost"]["rows"]]
  assert widths[0] == 1 and len(widths) >= 2  # forward(1) measured here, decode having failed
  assert st["verify_cost"]["rows"][0]["over_forward_1"] == 1.0
  for name in ("sft_step", "ppow_step"):
    e = st[name]
    assert e["tokens_per_second"] > 0 and e["flops"] > 0 and e["loss_finite"]
    assert e["target_layers"] == 2 and e["mfu"] is None  # CPU: no peak in the table
    planned = e["plan"]["compiled"]
    assert planned["peak_estimate"] >= planned["argument"] > 0
    assert e["plan"]["held"]["target_params"] > 0
  assert st["ppow_step"]["windows_per_step"] == (
      st["ppow_step"]["batch"] * st["ppow_step"]["prefixes_per_seq"]
      * st["ppow_step"]["group_size"])
  assert "| correctness | ok |" in md and "identical to autoregressive" in md


def _probe_wheel(folder: pathlib.Path) -> pathlib.Path:
  """A minimal pure-Python wheel holding one module, `accel_probe`."""
  whl = folder / "accel_probe-1.0-py3-none-any.whl"
  files = {"accel_probe.py": "VALUE = 7\n",
           "accel_probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: accel-probe\n"
                                                 "Version: 1.0\n",
           "accel_probe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\n"
                                              "Root-Is-Purelib: true\nTag: py3-none-any\n"}
  files["accel_probe-1.0.dist-info/RECORD"] = "".join(f"{n},,\n" for n in files) + (
      "accel_probe-1.0.dist-info/RECORD,,\n")
  with zipfile.ZipFile(whl, "w") as z:
    for name, text in files.items():
      z.writestr(name, text)
  return whl


def test_wrapper_installs_carried_wheels_then_runs_the_script(tmp_path):
  wrapper = ROOT / "benchmarks" / "accelerator_check.sh"
  shellcheck = pathlib.Path(sys.executable).parent / "shellcheck"
  shellcheck = str(shellcheck) if shellcheck.exists() else shutil.which("shellcheck")
  if shellcheck:
    lint = subprocess.run([shellcheck, str(wrapper)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  _probe_wheel(wheels)
  env = dict(os.environ, WHEELS=str(wheels), SITE=str(tmp_path / "site"), PYTHON=sys.executable)
  res = subprocess.run(["bash", str(wrapper), "--help"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  assert "usage: accelerator_check.py" in res.stdout
  assert (tmp_path / "site" / "accel_probe.py").read_text() == "VALUE = 7\n"
  # Without carried wheels it installs nothing and still runs the script.
  env.update(WHEELS=str(tmp_path / "none"), SITE=str(tmp_path / "site2"))
  res = subprocess.run(["bash", str(wrapper), "--help"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0 and not (tmp_path / "site2").exists()
