"""A CPU kernel for few-row float32 products, `x @ w` with w read from memory once (jax.ffi).

XLA's CPU backend runs a 1-row product as its tiled gemv but sends 2..8 rows to a GEMM library
(YNNPACK) that costs about twice the gemv per weight matrix on a 2-core AMD EPYC, so verifying
K+1 tokens cost ~1.3x one token (docs/results/cpu_verification_cost.md). `cpu_matvec.cc` walks
w once for all rows, each row summed in the order XLA's gemv uses: a row's result is bitwise the
1-row product's.

The kernel is compiled on first use with the host's C++ compiler for the host's ISA, cached in
$PPOW_JAX_CACHE/kernels (~/.cache/ppow_jax), and registered as an FFI target for CPU only. Where
it cannot be built (no compiler), or with PPOW_JAX_CPU_MATVEC=0, `dense` is plain `x @ w`. Other
backends never see it: `dense` lowers to `x @ w` on anything but CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp

log = logging.getLogger(__name__)

TARGET = "ppow_cpu_matvec"
SOURCE = pathlib.Path(__file__).with_name("cpu_matvec.cc")
# Products of this many rows (all leading dims) take the kernel. One row stays with XLA's gemv:
# the same values, and a little faster (docs/results/cpu_verification_cost.md).
MIN_ROWS, MAX_ROWS = 2, 8
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC", "-w")

_lock = threading.Lock()
_state: dict = {}  # "ok": bool once tried; "path": the loaded library


def enabled() -> bool:
  """Whether `dense` may use the kernel: not switched off by PPOW_JAX_CPU_MATVEC=0, CPU is JAX's
  default backend, and the kernel builds and registers (tried once per process)."""
  if os.environ.get("PPOW_JAX_CPU_MATVEC", "1") == "0" or jax.default_backend() != "cpu":
    return False
  with _lock:
    if "ok" not in _state:
      _state["ok"] = _load()
  return _state["ok"]


def _host_tag() -> str:
  """What the -march=native build depends on besides the source: ISA, CPU flags, jaxlib."""
  flags = ""
  try:
    with open("/proc/cpuinfo") as f:
      flags = next((ln for ln in f if ln.startswith(("flags", "Features"))), "")
  except OSError:
    pass
  return f"{platform.machine()}|{flags}|{jax.__version__}|{' '.join(FLAGS)}"


def _build(out: str) -> None:
  cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if not cxx:
    raise OSError("no C++ compiler (set CXX)")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
  os.close(fd)
  try:
    subprocess.run([cxx, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", tmp],
                   check=True, capture_output=True, text=True, timeout=300)
    os.replace(tmp, out)  # atomic: a concurrent build leaves one whole file
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _load() -> bool:
  from ppow_jax.models import registry  # Deferred: it imports the GGUF reader.
  try:
    digest = hashlib.sha256(SOURCE.read_bytes() + _host_tag().encode()).hexdigest()[:16]
    path = os.path.join(registry.default_cache_dir(), "kernels", f"cpu_matvec-{digest}.so")
    if not os.path.exists(path):
      _build(path)
    lib = ctypes.cdll.LoadLibrary(path)
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.PpowCpuMatVec), platform="cpu")
  except (OSError, subprocess.SubprocessError) as e:
    detail = getattr(e, "stderr", "") or ""
    log.warning("CPU matvec kernel unavailable, using XLA's dot: %s %s", e, detail[-2000:])
    return False
  _state["path"] = path
  return True


@jax.custom_jvp
def matvec(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [..., K] @ w [K, N] (float32, N % 16 == 0) by the kernel; call through `dense`."""
  out = jax.ShapeDtypeStruct(x.shape[:-1] + w.shape[1:], jnp.float32)
  return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(x, w)


@matvec.defjvp
def _matvec_jvp(primals, tangents):
  (x, w), (dx, dw) = primals, tangents
  return matvec(x, w), dx @ w + x @ dw


def dense(x: jax.Array, w: jax.Array) -> jax.Array:
  """`x @ w`; on CPU, a float32 product of MIN_ROWS..MAX_ROWS rows by `matvec` (same values)."""
  rows = x.size // x.shape[-1] if x.ndim and x.shape[-1] else 0
  if (x.dtype == jnp.float32 and w.dtype == jnp.float32 and w.ndim == 2 and w.shape[1] % 16 == 0
      and MIN_ROWS <= rows <= MAX_ROWS and enabled()):
    return jax.lax.platform_dependent(x, w, cpu=matvec, default=jnp.matmul)
  return x @ w
