"""The CPU few-row product kernel (ppow_jax/models/cpu_kernels.py, cpu_matvec.cc): each row bitwise
what XLA's 1-row product gives, used by the decode-layout forward for 2..8 rows only, on CPU."""

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


def _one_row(x, w):
  """XLA's product row by row (its 1-row gemv), stacked back to x's shape."""
  rows = x.reshape(-1, x.shape[-1])
  one = jax.jit(jnp.matmul)
  return jnp.concatenate([one(rows[i:i + 1], w) for i in range(rows.shape[0])]).reshape(
      x.shape[:-1] + w.shape[1:])


@pytest.mark.parametrize("k, n", [(576, 1536), (1536, 576), (576, 192), (100, 48), (7, 16)])
@pytest.mark.parametrize("rows", [2, 5, 8])
def test_rows_bitwise_equal_one_row_products(k, n, rows):
  w = jax.random.normal(jax.random.key(k + n), (k, n))
  x = jax.random.normal(jax.random.key(rows), (1, rows, k))
  got = jax.jit(cpu_kernels.matvec)(x, w)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(_one_row(x, w)))


def _uses_kernel(fn, *args) -> bool:
  return cpu_kernels.TARGET in jax.jit(fn).lower(*args).as_text()


def test_dense_routes_only_few_row_float32_products():
  w = jnp.ones((64, 32))
  assert _uses_kernel(cpu_kernels.dense, jnp.ones((1, 3, 64)), w)
  assert _uses_kernel(cpu_kernels.dense, jnp.ones((8, 64)), w)
  assert not _uses_kernel(cpu_kernels.dense, jnp.ones((1, 64)), w)  # XLA's gemv: same values
  assert not _uses_kernel(cpu_kernels.dense, jnp.ones((9, 64)), w)
  half = jnp.ones((2, 64), jnp.bfloat16)
  assert not _uses_kernel(cpu_kernels.dense, half, w.astype(jnp.bfloat16))
  assert not _uses_kernel(cpu_kernels.dense, jnp.ones((2, 64)), jnp.ones((64, 40)))  # N % 16


def test_switched_off_by_environment(monkeypatch):
  monkeypatch.setenv("PPOW_JAX_CPU_MATVEC", "0")
  assert not cpu_kernels.enabled()
  assert not _uses_kernel(cpu_kernels.dense, jnp.ones((3, 64)), jnp.ones((64, 32)))


def test_gradient_and_vmap_match_matmul():
  x = jax.random.normal(jax.random.key(0), (3, 48))
  w = jax.random.normal(jax.random.key(1), (48, 32))
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
  got = jax.grad(loss(cpu_kernels.dense), argnums=(0, 1))(x, w)
  want = jax.grad(loss(jnp.matmul), argnums=(0, 1))(x, w)
  for g, r in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)
  xs = jax.random.normal(jax.random.key(2), (4, 3, 48))
  np.testing.assert_array_equal(np.asarray(jax.vmap(cpu_kernels.dense, (0, None))(xs, w)),
                                np.asarray(jnp.stack([cpu_kernels.dense(a, w) for a in xs])))


def test_decode_forward_uses_kernel_and_keeps_values():
  """A cached 4-token forward in the decode layout: the kernel runs its products, and logits and
  cache match the forward with XLA's dots to float32 rounding, with the same greedy tokens."""
  cfg = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=64,
                    tie_word_embeddings=True)
  params = transformer.unstack(transformer.Transformer(cfg, rngs=nnx.Rngs(0)).params())
  cache = KVCache.init(cfg, 1, 32, per_layer=True)
  cache = transformer.forward(cfg, params, jnp.arange(10)[None] % 256, cache=cache).cache
  tokens = jnp.array([[5, 17, 200, 3]])
  fwd = lambda p, t, c: transformer.forward(cfg, p, t, cache=c)  # noqa: E731
  assert _uses_kernel(fwd, params, tokens, cache)
  got = jax.jit(fwd)(params, tokens, cache)
  with pytest.MonkeyPatch.context() as mp:  # read when tracing: a new function traces anew
    mp.setenv("PPOW_JAX_CPU_MATVEC", "0")
    xla = lambda p, t, c: transformer.forward(cfg, p, t, cache=c)  # noqa: E731
    assert not _uses_kernel(xla, params, tokens, cache)
    want = jax.jit(xla)(params, tokens, cache)
  np.testing.assert_allclose(np.asarray(got.logits), np.asarray(want.logits), rtol=0, atol=1e-5)
  np.testing.assert_array_equal(np.argmax(got.logits, -1), np.argmax(want.logits, -1))
  for a, b in zip(got.cache.k + got.cache.v, want.cache.k + want.cache.v):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)


def test_stacked_forward_keeps_xla_dots():
  cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                    num_heads=2, num_kv_heads=2, head_dim=16, max_position_embeddings=32)
  params = transformer.Transformer(cfg, rngs=nnx.Rngs(0)).params()
  fwd = lambda p, t: transformer.forward(cfg, p, t)  # noqa: E731
  assert not _uses_kernel(fwd, params, jnp.ones((1, 3), jnp.int32))
  assert _uses_kernel(fwd, transformer.unstack(params), jnp.ones((1, 3), jnp.int32))
