"""PPOW math against hand-computed values on tiny arrays, gradients, and jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppow_jax.ppow import objective, rewards, windowing

NEG_INF = -np.inf


# ---------------------------------------------------------------- rewards


def test_speedup_reward_values_and_jit():
  assert float(rewards.speedup_reward(3, 0.12)) == pytest.approx(3 / 1.36, rel=1e-6)
  k = jnp.array([[0, 1], [4, 8]])
  want = np.array([[0.0, 1 / 1.5], [4 / 3.0, 8 / 5.0]])
  np.testing.assert_allclose(jax.jit(rewards.speedup_reward)(k, 0.5), want, rtol=1e-6)
  # default gamma = 0.12
  assert float(rewards.speedup_reward(5)) == pytest.approx(5 / 1.6, rel=1e-6)


def test_likelihood_gap_sum_and_mask():
  greedy = jnp.array([[-0.1, -0.2, -0.3], [-1.0, -1.0, -1.0]])
  draft = jnp.array([[-0.5, -1.0, -2.0], [-1.0, -1.0, -1.0]])
  np.testing.assert_allclose(rewards.likelihood_gap(greedy, draft), [2.9, 0.0], atol=1e-6)
  mask = jnp.array([[1, 1, 0], [1, 1, 1]], bool)
  got = jax.jit(rewards.likelihood_gap)(greedy, draft, mask)
  np.testing.assert_allclose(got, [(-0.3) - (-1.5), 0.0], atol=1e-6)
  # a masked -inf draft log-prob must not leak into the sum
  draft_inf = draft.at[0, 2].set(NEG_INF)
  np.testing.assert_allclose(rewards.likelihood_gap(greedy, draft_inf, mask), [1.2, 0.0],
                             atol=1e-6)


def test_proximity_reward_only_first_token_rejects_close_to_target():
  k = jnp.array([0, 0, 2, 0])
  delta = jnp.array([0.5, 3.0, 0.1, 1.0])
  got = rewards.proximity_reward(k, delta, eta=0.3, epsilon=1.0)
  # delta == epsilon is not strictly below it
  np.testing.assert_allclose(got, [0.3, 0.0, 0.0, 0.0], atol=0)


def test_window_rewards_with_traced_switch():
  k = jnp.array([0, 0, 2])
  delta = jnp.array([0.5, 3.0, 0.1])
  speed = np.array([0.0, 0.0, 2 / 1.24])

  @jax.jit
  def f(use):
    return rewards.window_rewards(k, delta, gamma=0.12, eta=0.3, epsilon=1.0, use_proximity=use)

  np.testing.assert_allclose(f(True), speed + [0.3, 0, 0], rtol=1e-6)
  np.testing.assert_allclose(f(False), speed, rtol=1e-6)
  np.testing.assert_allclose(
      rewards.window_rewards(k, delta, gamma=0.12, eta=0.3, epsilon=1.0, use_proximity=True),
      speed + [0.3, 0, 0], rtol=1e-6)


# ---------------------------------------------------------------- windowing

# P = softmax([0, log 3]) = [1/4, 3/4]; Q = softmax([0, 0]) = [1/2, 1/2].
P_LOGITS = np.array([0.0, math.log(3.0)], np.float32)
Q_LOGITS = np.array([0.0, 0.0], np.float32)
H_P = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # 0.562335 nats
KL_PQ = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # 0.130812 nats


def test_confidence_two_token_vocab():
  logits = jnp.array([P_LOGITS, [0.0, 0.0], [0.0, NEG_INF]])
  got = jax.jit(windowing.confidence)(logits)
  np.testing.assert_allclose(got, [1 - H_P / math.log(2), 0.0, 1.0], atol=1e-6)
  assert 1 - H_P / math.log(2) == pytest.approx(0.188722, abs=1e-6)
  with pytest.raises(ValueError, match="vocabulary size 1"):
    windowing.confidence(jnp.zeros((3, 1)))


def test_divergence_scores_two_token_vocab():
  assert KL_PQ == pytest.approx(0.130812, abs=1e-6)
  got = jax.jit(windowing.divergence_scores)(P_LOGITS[None], Q_LOGITS[None])
  np.testing.assert_allclose(got, [(1 - H_P / math.log(2)) * KL_PQ], rtol=1e-5)
  # KL direction matters: KL(Q‖P) differs from KL(P‖Q)
  kl_qp = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
  assert abs(kl_qp - KL_PQ) > 0.01
  np.testing.assert_allclose(windowing.token_kl(P_LOGITS, Q_LOGITS), KL_PQ, rtol=1e-5)


def test_kl_handles_minus_inf_logits():
  # Draft cannot emit token 1 (Q = [1, 0]) while P(1) = 3/4: log Q(1) is floored at log(1e-9).
  draft = jnp.array([0.0, NEG_INF])
  want = 0.25 * math.log(0.25) + 0.75 * (math.log(0.75) - math.log(1e-9))
  np.testing.assert_allclose(windowing.token_kl(P_LOGITS, draft), want, rtol=1e-5)
  # Target puts zero mass on token 1: 0·log 0 = 0, KL([1,0] ‖ [1/2,1/2]) = log 2.
  np.testing.assert_allclose(windowing.token_kl(jnp.array([0.0, NEG_INF]), Q_LOGITS),
                             math.log(2), rtol=1e-6)
  # Gradients through -inf logits stay finite.
  g = jax.grad(lambda d: windowing.token_kl(jnp.array([0.0, NEG_INF, 1.0]), d))(
      jnp.array([0.5, NEG_INF, 0.0]))
  assert np.all(np.isfinite(g))


def test_window_scores_masked_mean():
  v = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [1.0, np.inf, 5.0]])
  mask = jnp.array([[1, 1, 0], [0, 0, 0], [1, 0, 1]], bool)
  np.testing.assert_allclose(jax.jit(windowing.window_scores)(v, mask), [1.5, 0.0, 3.0])


def _pick_counts(scores, num_select, mode, uniform, seeds=2000):
  keys = jax.random.split(jax.random.key(0), seeds)
  f = jax.jit(jax.vmap(lambda k, u: windowing.select_windows(k, scores, num_select, mode=mode,
                                                             uniform=u), in_axes=(0, None)))
  idx = np.asarray(f(keys, uniform))
  assert idx.dtype == np.int32 and idx.shape == (seeds, num_select)
  for row in idx[:50]:
    assert len(set(row.tolist())) == num_select  # without replacement
  return idx, np.bincount(idx.ravel(), minlength=scores.size) / seeds


def test_select_top_picks_highest():
  scores = jnp.array([0.1, 0.9, 0.3, 0.8, 0.2])
  idx = windowing.select_windows(jax.random.key(1), scores, 2, mode="top", uniform=False)
  assert idx.tolist() == [1, 3]
  # scores are flattened: [[.1, .9], [.3, .8]] -> flat index 1 is the max
  idx = windowing.select_windows(jax.random.key(1), scores[:4].reshape(2, 2), 1, mode="top",
                                 uniform=False)
  assert idx.tolist() == [1]


def test_select_uniform_ignores_scores():
  scores = jnp.array([100.0, 0.0, 0.0, 0.0])
  for mode in ("top", "proportional"):
    _, freq = _pick_counts(scores, 1, mode, True)
    np.testing.assert_allclose(freq, 0.25, atol=0.04)  # 4σ ≈ 0.039 at 2000 draws
    _, freq = _pick_counts(scores, 1, mode, False)
    assert freq[0] == 1.0


def test_select_proportional_skips_zero_and_favours_high():
  # 1e-35 is a normal float32; log(score + 1e-30) would make it tie with the zeros
  scores = jnp.array([0.0, 0.0, 1.0, 1e-35, 0.0, 0.0])
  idx, _ = _pick_counts(scores, 2, "proportional", False)
  assert np.all(np.sort(idx, axis=1) == [2, 3])  # both positives, never a zero, even if tiny
  _, freq = _pick_counts(jnp.array([1.0, 3.0, 0.0]), 1, "proportional", False)
  np.testing.assert_allclose(freq, [0.25, 0.75, 0.0], atol=0.04)


def test_select_errors():
  with pytest.raises(ValueError, match="'best'"):
    windowing.select_windows(jax.random.key(0), jnp.ones(4), 2, mode="best", uniform=False)
  with pytest.raises(ValueError, match="num_select=5"):
    windowing.select_windows(jax.random.key(0), jnp.ones(4), 5, mode="top", uniform=False)


# ---------------------------------------------------------------- objective


def test_group_advantages():
  s = math.sqrt(2 / 3)  # population std of [1, 2, 3]
  got = jax.jit(objective.group_advantages)(jnp.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
  np.testing.assert_allclose(got, [[-1 / s, 0.0, 1 / s], [0.0, 0.0, 0.0]], rtol=1e-5)
  np.testing.assert_allclose(objective.group_advantages(jnp.array([0.0, 4.0])), [-1.0, 1.0],
                             rtol=1e-5)


RATIOS = np.array([0.5, 1.0, 1.5, 1.1], np.float32)


@pytest.mark.parametrize("adv,want_obj,clipped_pos", [
    (1.0, [0.5, 1.0, 1.2, 1.1], 2),      # A > 0: r = 1.5 capped at 1.2, r = 0.5 kept
    (-1.0, [-0.8, -1.0, -1.5, -1.1], 0),  # A < 0: r = 0.5 floored at 0.8, r = 1.5 kept
])
def test_clipped_policy_loss_values_and_grads(adv, want_obj, clipped_pos):
  # fifth token is masked and holds -inf in both (e.g. outside the draft vocabulary): it must
  # not affect the value or give a NaN gradient
  logp_old = jnp.array([[-1.0, -2.0, -0.5, -1.5, NEG_INF]])
  logp_new = jnp.concatenate([logp_old[:, :4] + np.log(RATIOS), jnp.array([[NEG_INF]])], -1)
  mask = jnp.array([[1, 1, 1, 1, 0]], bool)
  adv_arr = jnp.array([adv])

  f = jax.jit(lambda ln: objective.clipped_policy_loss(ln, logp_old, adv_arr, mask, 0.2))
  loss, clip_frac = f(logp_new)
  np.testing.assert_allclose(loss, -np.mean(want_obj), rtol=1e-5)
  np.testing.assert_allclose(clip_frac, 0.25, rtol=1e-6)

  grad = np.asarray(jax.grad(lambda ln: f(ln)[0])(logp_new))[0]
  # d(−mean r·A)/d logp_new = −r·A/4 for unclipped tokens; 0 in the clipped region and if masked
  want = -RATIOS * adv / 4
  want[clipped_pos] = 0.0
  np.testing.assert_allclose(grad[:4], want, rtol=1e-5, atol=1e-7)
  assert grad[4] == 0.0


def test_clipped_policy_loss_broadcasts_window_advantage():
  # two windows [2, K=2], one with A = +2 and one with A = −1, all ratios 1: loss = −mean(A)
  zeros = jnp.zeros((2, 2))
  loss, frac = objective.clipped_policy_loss(zeros, zeros, jnp.array([2.0, -1.0]),
                                             jnp.array([[1, 1], [1, 0]]), 0.2)
  np.testing.assert_allclose(loss, -(2 + 2 - 1) / 3, rtol=1e-6)
  assert float(frac) == 0.0


def test_loss_token_mask():
  k = jnp.array([0, 2, 3, 4])
  want = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
  got = jax.jit(objective.loss_token_mask, static_argnums=(1, 2))(k, 4, "through_first_reject")
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(objective.loss_token_mask(k, 4, "all"), np.ones((4, 4), bool))
  with pytest.raises(ValueError, match="'accepted'"):
    objective.loss_token_mask(k, 4, "accepted")


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_kl_and_soft_ce_masked_means():
  rng = np.random.default_rng(0)
  target = rng.normal(size=(2, 3, 5)).astype(np.float32)
  draft = rng.normal(size=(2, 3, 5)).astype(np.float32)
  mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
  lp, lq = _np_log_softmax(target), _np_log_softmax(draft)
  p = np.exp(lp)
  kl_pos = (p * (lp - lq)).sum(-1)
  ce_pos = -(p * lq).sum(-1)
  np.testing.assert_allclose(jax.jit(objective.kl_to_target)(draft, target, mask),
                             kl_pos[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(objective.soft_cross_entropy)(draft, target, mask),
                             ce_pos[mask].mean(), rtol=1e-5)


def test_soft_ce_gradient_is_q_minus_p_even_for_tiny_q():
  # Q(1) = e^-30/(1+e^-30) < 1e-9 is below the log floor; the gradient must still be Q − P.
  draft = jnp.array([[0.0, -30.0]])
  target = jnp.array([[0.0, 0.0]])
  g = jax.grad(objective.soft_cross_entropy)(draft, target)
  q = np.exp(_np_log_softmax(np.array([[0.0, -30.0]])))
  np.testing.assert_allclose(g, q - 0.5, atol=1e-6)
  gkl = jax.grad(objective.kl_to_target)(draft, target)
  np.testing.assert_allclose(gkl, q - 0.5, atol=1e-6)
  assert np.all(np.asarray(jax.grad(objective.kl_to_target, 1)(draft, target)) == 0.0)


def test_ppow_loss_combines_terms():
  rng = np.random.default_rng(1)
  target = rng.normal(size=(2, 3, 4)).astype(np.float32)
  draft = rng.normal(size=(2, 3, 4)).astype(np.float32)
  logp_old = rng.normal(size=(2, 3)).astype(np.float32) - 1.0
  logp_new = logp_old + np.array([[0.5, 0.0, -0.5], [0.1, 0.2, 0.0]], np.float32)
  adv = np.array([1.0, -1.0], np.float32)
  mask = objective.loss_token_mask(jnp.array([1, 3]), 3, "through_first_reject")

  @jax.jit
  def f(ln, d):
    return objective.ppow_loss(ln, logp_old, adv, mask, d, target, clip_eps=0.2, beta=0.1,
                               aux_coef=0.5)

  loss, metrics = f(logp_new, draft)
  assert set(metrics) == {"policy_loss", "kl", "clip_fraction", "aux_ce"}
  pl, cf = objective.clipped_policy_loss(logp_new, logp_old, adv, mask, 0.2)
  kl = objective.kl_to_target(draft, target, mask)
  ce = objective.soft_cross_entropy(draft, target, mask)
  np.testing.assert_allclose(loss, pl + 0.1 * kl + 0.5 * ce, rtol=1e-5)
  np.testing.assert_allclose([metrics["policy_loss"], metrics["kl"], metrics["aux_ce"],
                              metrics["clip_fraction"]], [pl, kl, ce, cf], rtol=1e-5)
  assert float(cf) == pytest.approx(0.2)  # window 0 token 0: r = e^0.5 > 1.2 with A > 0
  # KL and CE gradients reach the draft logits only at unmasked positions
  g = np.asarray(jax.grad(lambda d: f(logp_new, d)[0])(draft))
  assert np.all(g[0, 2] == 0.0) and np.any(g[0, 1] != 0.0)


def test_ppow_loss_anchor_mask_widens_kl_and_ce_only():
  """anchor_tokens="all": KL and soft CE cover every slot, the policy term keeps its own mask."""
  rng = np.random.default_rng(2)
  target = rng.normal(size=(2, 3, 4)).astype(np.float32)
  draft = rng.normal(size=(2, 3, 4)).astype(np.float32)
  logp_old = rng.normal(size=(2, 3)).astype(np.float32) - 1.0
  logp_new = logp_old + 0.1
  adv = np.array([1.0, -1.0], np.float32)
  mask = objective.loss_token_mask(jnp.array([0, 3]), 3, "through_first_reject")
  anchor = objective.loss_token_mask(jnp.array([0, 3]), 3, "all")
  loss, m = objective.ppow_loss(logp_new, logp_old, adv, mask, draft, target, clip_eps=0.2,
                                beta=0.1, aux_coef=0.5, anchor_mask=anchor)
  pl, _ = objective.clipped_policy_loss(logp_new, logp_old, adv, mask, 0.2)
  kl_all = objective.kl_to_target(draft, target)
  ce_all = objective.soft_cross_entropy(draft, target)
  assert not np.isclose(kl_all, objective.kl_to_target(draft, target, mask))
  np.testing.assert_allclose([m["policy_loss"], m["kl"], m["aux_ce"]], [pl, kl_all, ce_all],
                             rtol=1e-5)
  np.testing.assert_allclose(loss, pl + 0.1 * kl_all + 0.5 * ce_all, rtol=1e-5)
  g = np.asarray(jax.grad(lambda d: objective.ppow_loss(
      logp_new, logp_old, adv, mask, d, target, clip_eps=0.2, beta=0.1, aux_coef=0.5,
      anchor_mask=anchor)[0])(draft))
  assert np.all(g[0, 2] != 0.0)  # after window 0's first rejection: anchored all the same


# ---------------------------------------------------------------- settings and diagnostics


def test_ppow_settings_come_from_the_config_only():
  """configs/ppow.py sets every PPOWSettings field (they have no defaults of their own)."""
  import dataclasses
  from configs import ppow as ppow_config  # noqa: PLC0415
  from ppow_jax.ppow.step import PPOWSettings
  c = ppow_config.get_config().ppow
  s = PPOWSettings.from_config(c)
  for f in dataclasses.fields(PPOWSettings):
    assert getattr(s, f.name) == c[f.name], f.name
  assert PPOWSettings.from_config(c, gamma=0.37).gamma == 0.37
  with pytest.raises(TypeError):
    PPOWSettings()  # no silent defaults
  del c["beta"]
  with pytest.raises(KeyError, match="beta"):
    PPOWSettings.from_config(c)


def test_signal_diagnostics_counts_flat_groups_and_accepted_lengths():
  from ppow_jax.ppow.step import signal_diagnostics
  g, window = 4, 3
  # Three groups: all-zero rewards (flat), varied, and a masked-out group that is varied.
  k = jnp.array([0, 0, 0, 0, 1, 3, 0, 2, 3, 3, 3, 0])
  reward = rewards.speedup_reward(k, 0.12)
  adv = objective.group_advantages(reward.reshape(-1, g)).reshape(-1)
  row_ok = jnp.array([True] * 8 + [False] * 4)
  scores = jnp.array([[0.1, 0.2, 0.3, -1.0], [0.4, 0.5, -1.0, -1.0]])
  ok = scores > -1
  picks = jnp.array([[1, 2], [0, 1]])
  valid = jnp.ones((2, 8), bool)
  d = jax.jit(signal_diagnostics, static_argnums=(3, 5))(
      reward, adv, k, window, row_ok, g, scores, ok, picks, valid)
  assert float(d["zero_var_groups"]) == pytest.approx(0.5)
  np.testing.assert_allclose(d["k_hist"], [5 / 8, 1 / 8, 1 / 8, 1 / 8], atol=1e-6)
  assert float(d["reward_p50"]) == pytest.approx(0.0)
  np.testing.assert_allclose(float(d["window_score_p50"]), 0.3, atol=1e-6)
  assert float(d["selected_relative_position"]) == pytest.approx((1 + 2 + 0 + 1) / 4 / 8)
  assert float(d["adv_abs_p90"]) > 0.5  # the varied group's advantages


def test_candidate_windows_lie_wholly_on_the_given_slots():
  # 2 sequences of 12 slots: the first a prompt of 4 then an answer; the second two answers
  # with a user turn between (slots 5..7 not trained), as a conversation's loss mask marks.
  import types

  from ppow_jax.ppow import step
  r = np.random.RandomState(0)
  n, t, v, window = 2, 12, 6, 3
  teacher = types.SimpleNamespace(target_logits=jnp.asarray(r.randn(n, t, v), jnp.float32))
  dp = types.SimpleNamespace(logits=jnp.asarray(r.randn(n, t, v), jnp.float32))
  d2t = jnp.zeros(v, jnp.int32)
  valid = jnp.ones((n, t), bool)
  slots = np.zeros((n, t), bool)
  slots[0, 4:] = True
  slots[1, 1:5] = slots[1, 8:] = True
  s_any, ok_any = step.candidate_scores(teacher, dp, d2t, valid, window, 1)
  s_in, ok_in = step.candidate_scores(teacher, dp, d2t, valid, window, 1, slots=jnp.asarray(slots))
  starts = lambda ok: [np.flatnonzero(row).tolist() for row in np.asarray(ok)]
  assert starts(ok_any) == [list(range(1, 9))] * 2  # p + K < length only
  # p..p+K-1 all marked: windows inside the answer, none reaching into the user turn.
  assert starts(ok_in) == [[4, 5, 6, 7, 8], [1, 2, 8]]
  np.testing.assert_array_equal(np.where(ok_in, s_in, 0), np.where(ok_in, s_any, 0))
  assert float(np.asarray(s_in)[1, 3]) == -1.0  # a window over the user turn scores -1
