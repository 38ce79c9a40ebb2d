"""The LK acceptance losses of token-level training (eagle3.ttt.step_objective) against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppow_jax.eagle3 import ttt


def _dists(seed, n=6, v=5):
  r = np.random.RandomState(seed)
  p = jax.nn.softmax(jnp.asarray(r.randn(n, v) * 2, jnp.float32), -1)
  logits = jnp.asarray(r.randn(n, v), jnp.float32)
  m = jnp.asarray([1, 1, 0, 1, 1, 0], jnp.float32)
  return p, logits, m


def _pieces(p, logits):
  logq = jax.nn.log_softmax(logits, -1)
  ce = -jnp.sum(p * logq, -1)
  accept = jnp.sum(jnp.minimum(p, jnp.exp(logq)), -1)
  return ce, accept


def test_lk_values_match_their_formulas_over_masked_slots():
  p, logits, m = _dists(0)
  ce, accept = _pieces(p, logits)
  pn, an, mn = np.asarray(p), np.asarray(accept), np.asarray(m) > 0
  qn = np.exp(np.asarray(jax.nn.log_softmax(logits, -1)))
  np.testing.assert_allclose(an, np.minimum(pn, qn).sum(-1), rtol=1e-6)
  alpha = an[mn].mean()
  got = ttt.step_objective(ce, accept, m, "lk_alpha", 1.0, 1.0)
  assert float(got) == pytest.approx(-np.log(an[mn]).mean(), rel=1e-5)
  w = 0.7 * np.exp(-2.0 * alpha)
  got = ttt.step_objective(ce, accept, m, "lk_lambda", 0.7, 2.0)
  want = w * np.asarray(ce)[mn].mean() + (1 - w) * (1 - alpha)
  assert float(got) == pytest.approx(want, rel=1e-5)
  assert float(ttt.step_objective(ce, accept, m, "ce", 1.0, 1.0)) == pytest.approx(
      np.asarray(ce)[mn].mean(), rel=1e-6)
  with pytest.raises(ValueError, match="lk_beta"):
    ttt.step_objective(ce, accept, m, "lk_beta", 1.0, 1.0)


def test_lk_alpha_is_zero_exactly_at_the_target_and_positive_elsewhere():
  p, logits, m = _dists(1)
  ce, accept = _pieces(p, jnp.log(p))
  assert float(ttt.step_objective(ce, accept, m, "lk_alpha", 1.0, 1.0)) == pytest.approx(
      0.0, abs=1e-5)
  ce, accept = _pieces(p, logits)
  assert float(ttt.step_objective(ce, accept, m, "lk_alpha", 1.0, 1.0)) > 0.05


def test_lk_lambda_weight_carries_no_gradient():
  """d/dlogits of the blend = w * dCE - (1 - w) * dalpha with w held fixed (stop-gradient)."""
  p, logits, m = _dists(2)

  def blend(lg):
    return ttt.step_objective(*_pieces(p, lg), m, "lk_lambda", 1.0, 1.5)

  def mean(fn, lg):
    x = fn(lg)
    return jnp.sum(x * m) / m.sum()

  alpha = float(mean(lambda lg: _pieces(p, lg)[1], logits))
  w = np.exp(-1.5 * alpha)
  g_ce = jax.grad(lambda lg: mean(lambda x: _pieces(p, x)[0], lg))(logits)
  g_a = jax.grad(lambda lg: mean(lambda x: _pieces(p, x)[1], lg))(logits)
  np.testing.assert_allclose(jax.grad(blend)(logits), w * g_ce - (1 - w) * g_a, atol=1e-6)


def test_gradient_step_on_lk_alpha_raises_acceptance():
  p, logits, m = _dists(3)
  loss = lambda lg: ttt.step_objective(*_pieces(p, lg), m, "lk_alpha", 1.0, 1.0)
  before = float(jnp.sum(_pieces(p, logits)[1] * m))
  after = float(jnp.sum(_pieces(p, logits - 0.5 * jax.grad(loss)(logits))[1] * m))
  assert after > before + 1e-3
