"""The CPU product kernel on packed weights (ppow_jax/models/cpu_kernels.py, cpu_matvec.cc): each
row bitwise what XLA's 1-row product on the row-major weight gives; the decode layout packs its
float32 matrices only where the kernel is in use."""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppow_jax.models import cpu_kernels, transformer
from ppow_jax.models.config import ModelConfig
from ppow_jax.models.kv_cache import KVCache

if not cpu_kernels.enabled():
  pytest.skip("the CPU kernel does not build here (no C++ compiler, or not a CPU backend)",
              allow_module_level=True)

SHAPES = [(576, 1536), (1536, 576), (576, 192), (100, 48), (7, 16)]


def _one_row(x, w):
  """XLA's product row by row (its 1-row gemv on row-major w), stacked back to x's shape."""
  rows = x.reshape(-1, x.shape[-1])
  one = jax.jit(jnp.matmul)
  return jnp.concatenate([one(rows[i:i + 1], w) for i in range(rows.shape[0])]).reshape(
      x.shape[:-1] + w.shape[1:])


def test_pack_layout_and_round_trip():
  w = jnp.arange(7 * 48, dtype=jnp.float32).reshape(7, 48)
  wp = cpu_kernels.pack(w)
  assert wp.shape == (3, 7, 16) and cpu_kernels.is_packed(wp) and not cpu_kernels.is_packed(w)
  for p, k, j in [(0, 0, 0), (1, 3, 5), (2, 6, 15)]:
    assert wp[p, k, j] == w[k, 16 * p + j]
  np.testing.assert_array_equal(np.asarray(cpu_kernels.unpack(wp)), np.asarray(w))


@pytest.mark.parametrize("k, n", SHAPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 8, 13])
def test_rows_bitwise_equal_one_row_products(k, n, rows):
  """Summed in XLA's gemv order, whatever the rows' grouping: a wrong order or layout differs."""
  w = jax.random.normal(jax.random.key(k + n), (k, n))
  x = jax.random.normal(jax.random.key(rows), (1, rows, k))
  got = jax.jit(cpu_kernels.dense)(x, cpu_kernels.pack(w))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(_one_row(x, w)))


@pytest.mark.parametrize("k, n", SHAPES[:2])
def test_many_rows_match_matmul(k, n):
  """A prefill-sized product on packed weights, by the kernel and by XLA's panel product."""
  w = jax.random.normal(jax.random.key(0), (k, n))
  x = jax.random.normal(jax.random.key(1), (2, 40, k))
  want = np.asarray(jax.jit(jnp.matmul)(x, w))
  for f in (cpu_kernels.dense, cpu_kernels._panels_matmul):
    np.testing.assert_allclose(np.asarray(jax.jit(f)(x, cpu_kernels.pack(w))), want,
                               rtol=1e-5, atol=1e-4)


def _uses_kernel(fn, *args) -> bool:
  """Traced anew: jit's cache would keep the PPOW_JAX_CPU_MATVEC read by a past trace."""
  return cpu_kernels.TARGET in jax.jit(lambda *a: fn(*a)).lower(*args).as_text()


def test_dense_routes_float32_products_on_packed_weights():
  wp = cpu_kernels.pack(jnp.ones((64, 32)))
  for rows in ((1, 64), (1, 3, 64), (8, 64), (40, 64)):
    assert _uses_kernel(cpu_kernels.dense, jnp.ones(rows), wp)
  assert not _uses_kernel(cpu_kernels.dense, jnp.ones((2, 64), jnp.bfloat16), wp)
  assert not _uses_kernel(cpu_kernels.dense, jnp.ones((2, 64)), jnp.ones((64, 32)))  # row-major


def test_other_backends_lower_packed_products_to_xla():
  """`platform_dependent` leaves the kernel out of a GPU/TPU lowering (XLA's panel product)."""
  for platform in ("cuda", "tpu"):
    exp = jax.export.export(jax.jit(cpu_kernels.dense), platforms=(platform,))(
        jnp.ones((3, 64)), cpu_kernels.pack(jnp.ones((64, 32))))
    assert cpu_kernels.TARGET not in exp.mlir_module() and "dot_general" in exp.mlir_module()


def test_switched_off_by_environment(monkeypatch):
  wp = cpu_kernels.pack(jnp.ones((64, 32)))
  monkeypatch.setenv("PPOW_JAX_CPU_MATVEC", "0")
  assert not cpu_kernels.enabled()
  assert not cpu_kernels.packs(jnp.ones((64, 32)))
  assert not _uses_kernel(cpu_kernels.dense, jnp.ones((3, 64)), wp)  # packed still multiplies
  np.testing.assert_array_equal(np.asarray(cpu_kernels.dense(jnp.ones((3, 64)), wp)), 64.0)


def test_gradient_and_vmap_match_matmul():
  x = jax.random.normal(jax.random.key(0), (3, 48))
  w = jax.random.normal(jax.random.key(1), (48, 32))
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
  gx, gwp = jax.grad(loss(cpu_kernels.dense), argnums=(0, 1))(x, cpu_kernels.pack(w))
  want = jax.grad(loss(jnp.matmul), argnums=(0, 1))(x, w)
  for g, r in zip((gx, cpu_kernels.unpack(gwp)), want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)
  xs = jax.random.normal(jax.random.key(2), (4, 3, 48))
  wp = cpu_kernels.pack(w)
  np.testing.assert_array_equal(np.asarray(jax.vmap(cpu_kernels.dense, (0, None))(xs, wp)),
                                np.asarray(jnp.stack([cpu_kernels.dense(a, wp) for a in xs])))


# intermediate 72: gate/up (N = 72) stay row-major, down (N = 64) is packed: both in one forward.
CFG = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=72, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=64,
                  tie_word_embeddings=True)


def test_unstack_packs_only_with_the_kernel(monkeypatch):
  stacked = transformer.Transformer(CFG, rngs=nnx.Rngs(0)).params()
  packed = transformer.unstack(stacked)
  for name, w in stacked["layers"].items():
    got = packed["layers"][1][name]
    if w.ndim == 3 and w.shape[-1] % 16 == 0:  # a matrix: packed, holding that layer's weights
      np.testing.assert_array_equal(np.asarray(cpu_kernels.unpack(got)), np.asarray(w[1]))
    else:  # a norm, or a matrix of N % 16 != 0 (gate/up here): as stacked
      np.testing.assert_array_equal(np.asarray(got), np.asarray(w[1]))
  np.testing.assert_array_equal(np.asarray(cpu_kernels.unpack(packed["lm_head"])),
                                np.asarray(stacked["embed"]).T)
  assert packed["embed"].shape == stacked["embed"].shape  # a gather table, not a product
  assert not cpu_kernels.packs(jnp.ones((64, 40)))  # N % 16: stays row-major
  half = transformer.unstack(jax.tree.map(lambda a: a.astype(jnp.bfloat16), stacked))
  assert half["layers"][0]["q_proj"].shape == (64, 64) and half["lm_head"].shape == (64, 256)
  monkeypatch.setenv("PPOW_JAX_CPU_MATVEC", "0")
  plain = transformer.unstack(stacked)
  assert plain["layers"][0]["q_proj"].shape == (64, 64) and plain["lm_head"].shape == (64, 256)


def test_decode_forward_uses_kernel_and_keeps_values():
  """Cached 1- and 4-token forwards in the packed decode layout: the kernel runs the products,
  and logits and cache match the stacked forward (XLA's dots) to float32 rounding, with the same
  greedy tokens; the row-major decode layout (kernel off) gives the same."""
  stacked = transformer.Transformer(CFG, rngs=nnx.Rngs(0)).params()
  params = transformer.unstack(stacked)
  assert cpu_kernels.is_packed(params["layers"][0]["down_proj"])
  assert not cpu_kernels.is_packed(params["layers"][0]["up_proj"])
  fwd = lambda p, t, c: transformer.forward(CFG, p, t, cache=c)  # noqa: E731
  prompt = jnp.arange(10)[None] % 256
  cache = fwd(params, prompt, KVCache.init(CFG, 1, 32, per_layer=True)).cache
  stacked_cache = fwd(stacked, prompt, KVCache.init(CFG, 1, 32)).cache
  with pytest.MonkeyPatch.context() as mp:  # read when tracing: a new function traces anew
    mp.setenv("PPOW_JAX_CPU_MATVEC", "0")
    plain = transformer.unstack(stacked)
    xla = lambda p, t, c: transformer.forward(CFG, p, t, cache=c)  # noqa: E731
    for tokens in (jnp.array([[5]]), jnp.array([[5, 17, 200, 3]])):
      assert not _uses_kernel(xla, plain, tokens, cache)
      rows = jax.jit(xla)(plain, tokens, cache)
  for tokens in (jnp.array([[5]]), jnp.array([[5, 17, 200, 3]])):
    assert _uses_kernel(fwd, params, tokens, cache)
    got = jax.jit(fwd)(params, tokens, cache)
    want = jax.jit(fwd)(stacked, tokens, stacked_cache)
    np.testing.assert_allclose(np.asarray(got.logits), np.asarray(want.logits), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(got.logits, -1), np.argmax(want.logits, -1))
    for i in range(CFG.num_layers):
      for a, b in ((got.cache.k[i], want.cache.k[i]), (got.cache.v[i], want.cache.v[i])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)
  np.testing.assert_allclose(np.asarray(got.logits), np.asarray(rows.logits), rtol=0, atol=1e-5)


def test_stacked_forward_keeps_xla_dots():
  cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=2, num_kv_heads=2, head_dim=16, max_position_embeddings=32)
  params = transformer.Transformer(cfg, rngs=nnx.Rngs(0)).params()
  fwd = lambda p, t: transformer.forward(cfg, p, t)  # noqa: E731
  assert not _uses_kernel(fwd, params, jnp.ones((1, 3), jnp.int32))
  assert _uses_kernel(fwd, transformer.unstack(params), jnp.ones((1, 3), jnp.int32))
