"""A CPU kernel for float32 products `x @ w` on packed weights, w read from memory once (jax.ffi).

XLA's CPU backend runs a 1-row product as its tiled gemv but sends 2..8 rows to a GEMM library
(YNNPACK) that costs about twice the gemv per weight matrix on a 2-core AMD EPYC, so verifying
K+1 tokens cost ~1.3x one token (docs/results/cpu_verification_cost.md). The decode layout
(`transformer.unstack`) therefore stores each float32 matrix packed (`pack`: 16-column panels
[N/16, K, 16]), the one layout in which `cpu_matvec.cc` keeps every output's sum in a register
while w streams past once; each output is summed in the order XLA's gemv uses, so a row's result
is bitwise the row-major 1-row product's, for any number of rows.

The kernel is compiled on first use with the host's C++ compiler for the host's ISA, cached in
$PPOW_JAX_CACHE/kernels (~/.cache/ppow_jax), and registered as an FFI target for CPU only. Where
it cannot be built (no compiler), with PPOW_JAX_CPU_MATVEC=0, on other backends or for bfloat16,
nothing is packed and `dense` is plain `x @ w`. Packed weights met elsewhere (another backend,
the switch turned off after packing, gradients) get XLA's product over the panels.
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
PANEL = 16  # columns per panel of a packed weight
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-std=c++17", "-shared", "-fPIC", "-w")

_lock = threading.Lock()
_state: dict = {}  # "ok": bool once tried; "path": the loaded library


def enabled() -> bool:
  """Whether the kernel is in use (weights get packed, `dense` runs it): not switched off by
  PPOW_JAX_CPU_MATVEC=0, CPU is JAX's default backend, and the kernel builds and registers
  (tried once per process)."""
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


def packs(w) -> bool:
  """Whether the decode layout stores w [K, N] packed: kernel in use, float32, N % 16 == 0."""
  return w.ndim == 2 and w.dtype == jnp.float32 and w.shape[1] % PANEL == 0 and enabled()


def pack(w: jax.Array) -> jax.Array:
  """w [K, N] as 16-column panels [N/16, K, 16]: panel p holds columns 16p..16p+15, k-major.

  A plain array, not a wrapper type, so params stay an ordinary pytree (jit, tree maps, bytes
  counted as before); `dense` tells the two layouts apart by ndim (`is_packed`)."""
  k, n = w.shape
  return jnp.asarray(w).reshape(k, n // PANEL, PANEL).transpose(1, 0, 2)


def unpack(wp: jax.Array) -> jax.Array:
  """The row-major w [K, N] of `pack(w)`."""
  return wp.transpose(1, 0, 2).reshape(wp.shape[1], -1)


def is_packed(w) -> bool:
  """A packed weight is the one 3-D array `dense` sees (decode-layout matrices are 2-D)."""
  return w.ndim == 3


def _panels_matmul(x: jax.Array, wp: jax.Array) -> jax.Array:
  """x [..., K] @ packed wp by XLA: any backend, differentiable; equal to `x @ unpack(wp)` up to
  float32 rounding. XLA's CPU dot transposes wp back to [K, N] on every call (a copy of the
  weight) before its GEMM, which is why the kernel takes every row count on CPU."""
  y = jnp.einsum("...k,pkj->...pj", x, wp)
  return y.reshape(*y.shape[:-2], -1)


@jax.custom_jvp
def matvec(x: jax.Array, wp: jax.Array) -> jax.Array:
  """x [..., K] @ packed wp [N/16, K, 16] (float32) by the kernel; call through `dense`."""
  out = jax.ShapeDtypeStruct(x.shape[:-1] + (wp.shape[0] * PANEL,), jnp.float32)
  return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(x, wp)


@matvec.defjvp
def _matvec_jvp(primals, tangents):
  (x, wp), (dx, dwp) = primals, tangents
  return matvec(x, wp), _panels_matmul(dx, wp) + _panels_matmul(x, dwp)


def dense(x: jax.Array, w: jax.Array) -> jax.Array:
  """`x @ w` for the decode layout's weights: row-major w [K, N] by XLA; packed w (`pack`) by
  the kernel for float32 x on CPU, any number of rows, else by XLA (`_panels_matmul`). Both are
  differentiable (`matvec`'s jvp), though the decode layout is only ever run forward."""
  if not is_packed(w):
    return x @ w
  if x.dtype == jnp.float32 and x.size and enabled():
    return jax.lax.platform_dependent(x, w, cpu=matvec, default=_panels_matmul)
  return _panels_matmul(x, w)
