"""The decoding engine: greedy losslessness, EOS/max_new handling, distribution preservation at
temperature 1 (with a check that a wrong acceptance rule is caught), sampling processing, the
acceptance rules on hand-built arrays, and no retracing across prompt contents.
"""

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ppow_jax.decoding import engine, sampling, verify
from ppow_jax.decoding.drafter import LMDrafter
from ppow_jax.models.transformer import Transformer

from conftest import (GREEDY, MAX_NEW, NEW, PROMPTS, T1, TINY, TINY_PROMPT, N, V, check_accounting,
                      chisquare_pvalues, greedy_reference, pad)


@pytest.fixture(scope="module")
def batches():
  """batch size -> (prompts, prompt_lens, indices into PROMPTS)."""
  return {4: (*pad(PROMPTS, 12), [0, 1, 2, 3]), 1: (*pad(PROMPTS[:1], 8, seed=1), [0])}


@pytest.fixture(scope="module")
def plain_greedy(target):
  return greedy_reference(*target, PROMPTS, MAX_NEW)


@pytest.fixture(scope="module")
def random_drafter(target):
  cfg, _ = target
  dcfg = cfg.replace(num_layers=1)
  return LMDrafter(dcfg), Transformer(dcfg, rngs=nnx.Rngs(0)).params()


@pytest.fixture(scope="module")
def ar_out(target, batches):
  cfg, params = target
  return {b: engine.generate(cfg, params, prompts, lens, jax.random.key(0), max_new_tokens=MAX_NEW)
          for b, (prompts, lens, _) in batches.items()}


# --- 1. Greedy speculative decoding is lossless --------------------------------------------------


@pytest.mark.parametrize("bsz", [4, 1])
def test_autoregressive_matches_plain_loop(ar_out, batches, plain_greedy, bsz):
  out = ar_out[bsz]
  rows = batches[bsz][2]
  np.testing.assert_array_equal(np.asarray(out.tokens), plain_greedy[rows])
  assert (np.asarray(out.num_tokens) == MAX_NEW).all()
  # Autoregressive: one token per verification step (the first comes from the prefill).
  assert (np.asarray(out.num_steps) == MAX_NEW - 1).all()
  assert (np.asarray(out.accept_lengths)[:, :MAX_NEW - 1] == 1).all()
  check_accounting(out, MAX_NEW)


@pytest.mark.parametrize("bsz,kind,k", [(4, "random", 1), (4, "random", 6), (1, "random", 3),
                                        (4, "self", 3), (4, "self", 6), (1, "self", 1)])
def test_greedy_speculative_is_lossless(target, batches, plain_greedy, ar_out, random_drafter,
                                        bsz, kind, k):
  cfg, params = target
  prompts, lens, rows = batches[bsz]
  drafter, dparams = random_drafter if kind == "random" else (LMDrafter(cfg), params)
  out = engine.generate(cfg, params, prompts, lens, jax.random.key(1), drafter=drafter,
                        drafter_params=dparams, window=k, max_new_tokens=MAX_NEW)
  toks = np.asarray(out.tokens)
  np.testing.assert_array_equal(toks, plain_greedy[rows])
  np.testing.assert_array_equal(toks, np.asarray(ar_out[bsz].tokens))
  assert (np.asarray(out.num_tokens) == MAX_NEW).all()
  check_accounting(out, MAX_NEW)
  acc, steps = np.asarray(out.accept_lengths), np.asarray(out.num_steps)
  if kind == "random":
    # A random drafter almost never matches the target: tau near 1.
    assert acc[acc > 0].mean() < 1.5
  else:
    # The target drafting for itself: every window fully accepted; only the last step is cut.
    assert (steps == -(-(MAX_NEW - 1) // (k + 1))).all()
    for a, s in zip(acc, steps):
      assert (a[:s - 1] == k + 1).all()


# --- 2. EOS and max_new_tokens -------------------------------------------------------------------

EOS = (265, 269)


@pytest.mark.parametrize("kind", ["autoregressive", "self"])
def test_eos_stops_each_row(target, batches, plain_greedy, kind):
  cfg, params = target
  prompts, lens, rows = batches[4]
  ref = plain_greedy[rows]
  # Expected stop: through the first EOS the target greedily emits, else at MAX_NEW.
  want = [next((i + 1 for i, t in enumerate(r) if t in EOS), MAX_NEW) for r in ref]
  # The chosen EOS ids give distinct stops, incl. the very first token and a row that never stops.
  assert len(set(want)) == len(want) and 1 in want and MAX_NEW in want
  kw = dict(drafter=LMDrafter(cfg), drafter_params=params, window=3) if kind == "self" else {}
  out = engine.generate(cfg, params, prompts, lens, jax.random.key(2), max_new_tokens=MAX_NEW,
                        eos_ids=EOS, pad_id=-1, **kw)
  toks, ntok = np.asarray(out.tokens), np.asarray(out.num_tokens)
  np.testing.assert_array_equal(ntok, want)
  for r, n, t in zip(ref, ntok, toks):
    np.testing.assert_array_equal(t[:n], r[:n])
    assert (t[n:] == -1).all()
    if n < MAX_NEW:
      assert t[n - 1] in EOS
  # A row whose first (prefill) token is EOS takes no verification step.
  assert np.asarray(out.num_steps)[want.index(1)] == 0
  check_accounting(out, MAX_NEW)


# --- 3. No retracing across prompt contents ------------------------------------------------------


def test_generate_does_not_retrace(target, batches, random_drafter):
  cfg, params = target
  prompts, lens, _ = batches[4]
  drafter, dparams = random_drafter
  run = lambda pr, ln, seed: engine.generate(  # noqa: E731
      cfg, params, pr, ln, jax.random.key(seed), drafter=drafter, drafter_params=dparams,
      window=6, max_new_tokens=MAX_NEW)
  first = run(prompts, lens, 0)
  size = engine.generate._cache_size()
  other = [[1, 2, 3, 4, 5, 6, 7], [1, 9], [1, 44, 45, 46], [1]]  # New contents and lengths.
  other_prompts, other_lens = pad(other, 12, seed=3)
  second = run(other_prompts, other_lens, 5)
  assert engine.generate._cache_size() == size
  assert not np.array_equal(np.asarray(first.tokens), np.asarray(second.tokens))


# --- 4. Sampling at temperature 1 follows the target's distribution -------------------------------

K = 2


def _sample_tiny(tparams, dparams, seed=0):
  prompts = jnp.asarray(np.broadcast_to(TINY_PROMPT, (N, len(TINY_PROMPT))), jnp.int32)
  return engine.generate(TINY, tparams, prompts, jnp.full((N,), len(TINY_PROMPT), jnp.int32),
                         jax.random.key(seed), drafter=LMDrafter(TINY), drafter_params=dparams,
                         window=K, max_new_tokens=NEW, sp=T1)


def test_sampling_follows_target_distribution(tiny):
  tparams, dparams, joint = tiny
  assert 2 / V < joint.sum(axis=(1, 2, 3)).max() < 0.7  # Far from uniform, not deterministic.
  out = _sample_tiny(tparams, dparams)
  assert (np.asarray(out.num_tokens) == NEW).all()
  # Every path is exercised often: rejection at d_1, at d_2, and the bonus token.
  first = np.bincount(np.asarray(out.accept_lengths)[:, 0], minlength=K + 2)[1:]
  assert (first > 0.1 * N).all(), first
  pvals = chisquare_pvalues(np.asarray(out.tokens), joint)
  assert min(pvals) > 1e-3, pvals


verify_accept_sampling = verify.accept_sampling  # The real rule, before any monkeypatching.


def _resample_from_p(rng, draft_tokens, draft_logp, target_logp):
  """Wrong: the right acceptance test, but a rejection resamples from p, not the residual."""
  n, _ = verify_accept_sampling(rng, draft_tokens, draft_logp, target_logp)
  p_n = jnp.take_along_axis(target_logp, n[:, None, None], axis=1)[:, 0]
  return n, jax.random.categorical(jax.random.fold_in(rng, 1), p_n).astype(jnp.int32)


def _bonus_from_previous(rng, draft_tokens, draft_logp, target_logp):
  """Wrong: the bonus token is drawn from p_{K-1} instead of p_K."""
  return verify_accept_sampling(rng, draft_tokens, draft_logp,
                                target_logp.at[:, -1].set(target_logp[:, -2]))


@pytest.mark.parametrize("wrong", [_resample_from_p, _bonus_from_previous])
def test_wrong_acceptance_rule_is_caught(tiny, monkeypatch, wrong):
  tparams, dparams, joint = tiny
  monkeypatch.setattr(verify, "accept_sampling", wrong)
  engine.generate.clear_cache()  # Retrace with the patched rule...
  try:
    out = _sample_tiny(tparams, dparams)
  finally:
    engine.generate.clear_cache()  # ...and keep it out of later tests' cache.
  pvals = chisquare_pvalues(np.asarray(out.tokens), joint)
  assert min(pvals) < 1e-3, pvals


# --- 5. Sampling processing ----------------------------------------------------------------------


def _kept(logp):
  return np.asarray(logp) > -1e20


def test_top_k_keeps_the_k_largest():
  logits = jnp.asarray([[0.3, 2.0, -1.0, 1.5, 0.9], [5.0, 4.0, 3.0, 2.0, 1.0]])
  logp = sampling.log_probs(logits, sampling.SamplingParams(temperature=1.0, top_k=2))
  np.testing.assert_array_equal(_kept(logp), [[0, 1, 0, 1, 0], [1, 1, 0, 0, 0]])
  kept = np.asarray(logits)[[0, 0, 1, 1], [1, 3, 0, 1]].reshape(2, 2)
  want = kept - np.log(np.exp(kept).sum(-1, keepdims=True))
  np.testing.assert_allclose(np.asarray(logp)[_kept(logp)].reshape(2, 2), want, rtol=1e-5)
  # top_k >= V is off.
  full = sampling.log_probs(logits, sampling.SamplingParams(temperature=1.0, top_k=5))
  np.testing.assert_allclose(full, jax.nn.log_softmax(logits), rtol=1e-6)


def test_top_p_keeps_smallest_prefix_reaching_p():
  probs = np.array([0.15, 0.5, 0.05, 0.3])  # sorted: 0.5 (1), 0.3 (3), 0.15 (0), 0.05 (2)
  logits = jnp.log(jnp.asarray(probs, jnp.float32))[None]
  for top_p, want in [(0.45, [0, 1, 0, 0]), (0.75, [0, 1, 0, 1]), (0.9, [1, 1, 0, 1]),
                      (0.97, [1, 1, 1, 1])]:
    logp = sampling.log_probs(logits, sampling.SamplingParams(temperature=1.0, top_p=top_p))
    np.testing.assert_array_equal(_kept(logp)[0], want, err_msg=f"top_p={top_p}")
    renorm = np.where(want, probs, 0) / np.where(want, probs, 0).sum()
    np.testing.assert_allclose(np.exp(np.asarray(logp)[0]), renorm, atol=1e-6)


def test_temperature_scales_logits():
  logits = jnp.asarray([[1.0, -0.5, 2.0, 0.0]])
  for t in (0.5, 2.0):
    logp = sampling.log_probs(logits, sampling.SamplingParams(temperature=t))
    np.testing.assert_allclose(logp, jax.nn.log_softmax(logits / t), rtol=1e-6)
  # Greedy reports the untempered distribution and samples the argmax.
  np.testing.assert_allclose(sampling.log_probs(logits, GREEDY), jax.nn.log_softmax(logits))
  tok, _ = sampling.sample(jax.random.key(0), logits, GREEDY)
  assert int(tok[0]) == 2


def test_draw_follows_the_weights_and_never_picks_a_zero_weight():
  # 700 entries: three 256-blocks, the last one partly padding; weights spread over 1e4 in scale.
  rng = np.random.default_rng(0)
  w = rng.random((2, 700)) ** 4
  w[0, rng.choice(700, 300, replace=False)] = 0.0
  w[1, :600] = 0.0  # all of row 1's mass in the last, partly padded block
  n = 40000
  draws = np.asarray(jax.jit(jax.vmap(lambda k: sampling.draw(k, jnp.asarray(w, jnp.float32))))(
      jax.random.split(jax.random.key(1), n)))  # [n, 2]
  for r in range(2):
    assert (w[r, draws[:, r]] > 0).all(), f"row {r} drew a zero-weight index"
    freq = np.bincount(draws[:, r], minlength=700) / n
    p = w[r] / w[r].sum()
    # Each frequency within 5 standard errors of its probability.
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-9)
  # categorical(): softmax of logits, -1e30 entries never drawn, leading batch dims kept.
  logits = jnp.asarray([[0.0, np.log(3.0), -1e30, -jnp.inf]] * 3)
  toks = np.asarray(jax.vmap(lambda k: sampling.categorical(k, logits))(
      jax.random.split(jax.random.key(2), 20000)))
  assert toks.shape == (20000, 3) and set(np.unique(toks)) <= {0, 1}
  assert abs((toks == 1).mean() - 0.75) < 0.01


@pytest.mark.parametrize("kw", [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5),
                                dict(top_k=-1)])
def test_sampling_params_reject_bad_values(kw):
  with pytest.raises(ValueError):
    sampling.SamplingParams(**kw)


# --- 6. Acceptance rules on hand-built arrays ----------------------------------------------------

NEG = -1e30


def _onehot_logits(tokens, v=6):
  """Logits [B, T, v] whose argmax (and only support) is `tokens`."""
  return jnp.where(jax.nn.one_hot(jnp.asarray(tokens), v) > 0, 0.0, NEG)


def test_accept_greedy_hand_cases():
  draft = jnp.asarray([[1, 2, 3], [1, 2, 3], [1, 2, 3]], jnp.int32)
  best = [[1, 2, 3, 4],  # all accepted: bonus 4
          [5, 2, 3, 0],  # first rejected: the target's 5
          [1, 2, 0, 3]]  # two accepted, then the target's 0
  n, nxt = verify.accept_greedy(draft, _onehot_logits(best))
  np.testing.assert_array_equal(n, [3, 0, 2])
  np.testing.assert_array_equal(nxt, [4, 5, 0])
  # A window of 0 (autoregressive) just takes the argmax.
  n, nxt = verify.accept_greedy(jnp.zeros((1, 0), jnp.int32), _onehot_logits([[3]]))
  assert int(n[0]) == 0 and int(nxt[0]) == 3


_accept_sampling = jax.jit(verify.accept_sampling)  # One compile instead of many eager ops.


def test_accept_sampling_hand_cases():
  draft = jnp.asarray([[1, 2], [1, 2]], jnp.int32)
  q = jax.nn.log_softmax(_onehot_logits([[1, 2], [1, 2]]), -1)
  # Row 0: p puts all mass on the drafts, bonus 4. Row 1: p gives d_1 zero mass and puts it on 5,
  # so d_1 is always rejected and the residual max(0, p - q) is all on 5.
  p = jax.nn.log_softmax(_onehot_logits([[1, 2, 4], [5, 2, 4]]), -1)
  for seed in range(5):
    n, nxt = _accept_sampling(jax.random.key(seed), draft, q, p)
    np.testing.assert_array_equal(n, [2, 0])
    np.testing.assert_array_equal(nxt, [4, 5])


def test_accept_sampling_q_equals_p_accepts_all():
  b, k, v = 256, 4, 6
  rng = np.random.default_rng(0)
  logits = 2.0 * rng.standard_normal((b, k + 1, v))
  logp = jnp.asarray(logits - np.log(np.exp(logits).sum(-1, keepdims=True)), jnp.float32)
  draft = jnp.asarray(rng.integers(0, v, (b, k)), jnp.int32)
  n, nxt = _accept_sampling(jax.random.key(2), draft, logp[:, :k], logp)
  np.testing.assert_array_equal(n, np.full(b, k))
  assert ((nxt >= 0) & (nxt < v)).all()


def test_accept_sampling_one_step_is_lossless():
  """K=1 over many independent rows: the emitted token ~ p_0, the bonus ~ p_1, P(accept) = 1-TV."""
  m = 40000
  p0, q0 = np.array([0.1, 0.4, 0.2, 0.3, 0.0]), np.array([0.5, 0.1, 0.1, 0.1, 0.2])
  p1 = np.array([0.05, 0.05, 0.6, 0.1, 0.2])
  lp = jnp.log(jnp.maximum(jnp.asarray(np.stack([p0, p1]), jnp.float32), 1e-38))
  lq = jnp.log(jnp.asarray(q0, jnp.float32))
  draft = jnp.asarray(np.random.default_rng(0).choice(5, (m, 1), p=q0), jnp.int32)
  n, nxt = _accept_sampling(jax.random.key(1), draft, jnp.broadcast_to(lq, (m, 1, 5)),
                            jnp.broadcast_to(lp, (m, 2, 5)))
  n, nxt, draft = map(np.asarray, (n, nxt, draft[:, 0]))
  emitted = np.where(n == 1, draft, nxt)
  assert stats.chisquare(np.bincount(emitted, minlength=5)[:4], p0[:4] * m).pvalue > 1e-3
  assert (emitted != 4).all()  # p_0 gives token 4 no mass.
  bonus = nxt[n == 1]
  assert stats.chisquare(np.bincount(bonus, minlength=5), p1 * len(bonus)).pvalue > 1e-3
  accept = np.minimum(p0, q0).sum()
  assert abs(n.mean() - accept) < 4 * np.sqrt(accept * (1 - accept) / m)
