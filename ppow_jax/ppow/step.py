"""One PPOW training step: choose windows, roll out groups, verify, reward, update (pure).

  state, target_params, d2t, batch, rng -> new state, metrics

Window choice (adaptive divergence-aware windowing): every prefix end p of a sequence is a
candidate; its score is the mean of v_t = C(P_t)·KL(P_t‖Q_t) over the K slots the window would
cover, with P_t the target's distribution along the stored sequence and Q_t the drafter's
one-step prediction from target features (our choice: scoring windows with the drafter's own
multi-step rollouts would cost a rollout per candidate). Before `windowing_start` (or with
windowing off) prefixes are chosen uniformly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from ppow_jax.eagle3 import model as e3
from ppow_jax.eagle3 import ttt
from ppow_jax.ppow import objective, rewards, rollout, windowing


@dataclasses.dataclass(frozen=True)
class PPOWSettings:
  """The static settings of a PPOW step. No defaults here: configs/ppow.py's `ppow` block is the
  one place they are set and explained (see `from_config`)."""
  window: int  # K
  group_size: int  # G windows per prefix
  prefixes_per_seq: int  # M prefixes chosen per sequence
  min_prefix: int
  windows_in: str  # "response": every window slot a trained (answer) slot; "any"
  gamma: float  # drafter/target step-cost ratio in R_speedup (resolved: never "measure" here)
  eta: float
  epsilon: float
  use_proximity: bool
  windowing: bool
  windowing_mode: str
  windowing_start: int
  clip_eps: float
  policy_coef: float  # weight of the clipped policy-gradient term (0: anchors only)
  beta: float
  aux_coef: float
  loss_tokens: str  # policy-gradient tokens
  anchor_tokens: str  # KL / soft-CE tokens
  aux_loss: str  # "window" (soft CE on window tokens) or "ttt" (EAGLE-3's loss on the batch)
  ttt_steps: int
  ttt_decay: float
  ppo_epochs: int
  temperature: float

  @classmethod
  def from_config(cls, ppow_config, **resolved) -> "PPOWSettings":
    """Every field from the config's `ppow` block by name; `resolved` replaces values the caller
    worked out (e.g. a measured gamma). A missing field is a config error, not a silent default."""
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in resolved and n not in ppow_config]
    if missing:
      raise KeyError(f"config.ppow lacks {missing}: start from configs/ppow.py")
    return cls(**{n: resolved[n] if n in resolved else ppow_config[n] for n in names})


def candidate_scores(teacher, dp: rollout.DraftPass, d2t, valid, window: int, min_prefix: int,
                     slots=None):
  """Window score [N, T] per prefix end p (-1 where no full window fits). `slots` [N, T] (bool):
  where given, a window must lie wholly on them: its K slots p..p+K-1 (slot s predicts token
  s+1) all marked, e.g. the batch's loss mask, so windows draft answers, never user turns."""
  n, t, v = teacher.target_logits.shape
  q = e3.draft_to_target_logits(d2t, dp.logits, v)
  # Slot s: target P at s vs drafter prediction from slot s-1 (both predict token s+1).
  vt = windowing.divergence_scores(teacher.target_logits[:, 1:], q[:, :-1])  # [N, T-1] for s>=1
  vt = jnp.pad(vt, ((0, 0), (1, 0)))
  csum = jnp.pad(jnp.cumsum(vt, axis=1), ((0, 0), (1, 0)))
  p = jnp.arange(t)
  end = jnp.minimum(p + window, t)
  score = (csum[:, end] - csum[:, p]) / window
  length = jnp.sum(valid, axis=1)
  ok = (p[None] >= min_prefix) & (p[None] + window < length[:, None])
  if slots is not None:
    marked = jnp.pad(jnp.cumsum(slots.astype(jnp.int32), axis=1), ((0, 0), (1, 0)))
    ok = ok & (marked[:, end] - marked[:, p] == window)
  return jnp.where(ok, score, -1.0), ok


def choose_prefixes(rng, scores, ok, m: int, s: PPOWSettings, step):
  """M prefix ends per sequence: by score once windowing is on, else uniformly (valid ones)."""
  uniform = (not s.windowing) | (step < s.windowing_start)
  keys = jax.random.split(rng, scores.shape[0])
  pick_scored = jax.vmap(lambda k, sc: windowing.select_windows(
      k, sc, m, mode=s.windowing_mode, uniform=False))(keys, scores)
  # Uniform among valid prefixes: proportional selection over the 0/1 validity mask.
  pick_uniform = jax.vmap(lambda k, o: windowing.select_windows(
      k, o.astype(jnp.float32), m, mode="proportional", uniform=False))(keys, ok)
  return jnp.where(uniform, pick_uniform, pick_scored)


AUX_LOSSES = ("window", "ttt")
WINDOW_REGIONS = ("response", "any")


def signal_diagnostics(reward, adv, k, window, row_ok, group_size, scores, ok, picks, valid):
  """Whether a step carries a learning signal (all [rows] over rows = groups x G, masked by
  row_ok): the share of groups whose rewards are all equal (zero advantage: no policy
  gradient), reward / |advantage| quantiles, the rollouts' accepted-length histogram [K+1], the
  candidate window scores' quantiles and where in the sequence the chosen prefixes sit."""
  okf = row_ok.astype(jnp.float32)
  n_ok = jnp.maximum(okf.sum(), 1.0)
  grouped = reward.reshape(-1, group_size)
  group_ok = row_ok.reshape(-1, group_size)[:, 0]
  flat = (jnp.max(grouped, -1) - jnp.min(grouped, -1)) < 1e-6
  zero_var = jnp.sum(flat & group_ok) / jnp.maximum(group_ok.sum(), 1)
  masked = lambda x: jnp.where(row_ok, x, jnp.nan)
  q = jnp.array([0.1, 0.5, 0.9])
  r_q = jnp.nanquantile(masked(reward), q)
  a_q = jnp.nanquantile(masked(jnp.abs(adv)), q)
  hist = jnp.sum(jax.nn.one_hot(k, window + 1) * okf[:, None], 0) / n_ok
  s_q = jnp.nanquantile(jnp.where(ok, scores, jnp.nan), q)
  length = jnp.maximum(jnp.sum(valid, axis=1, keepdims=True), 1)
  rel_pos = jnp.mean(picks / length)
  return {
      "zero_var_groups": zero_var,
      "reward_p10": r_q[0], "reward_p50": r_q[1], "reward_p90": r_q[2],
      "reward_std": jnp.sqrt(jnp.sum(okf * (reward - jnp.sum(reward * okf) / n_ok) ** 2) / n_ok),
      "adv_abs_p10": a_q[0], "adv_abs_p50": a_q[1], "adv_abs_p90": a_q[2],
      "k_hist": hist,
      "window_score_p10": s_q[0], "window_score_p50": s_q[1], "window_score_p90": s_q[2],
      "selected_relative_position": rel_pos,
  }


def make_ppow_step(tcfg, dcfg, optimizer, s: PPOWSettings, capacity: int):
  k_win, g, m = s.window, s.group_size, s.prefixes_per_seq
  if s.aux_loss not in AUX_LOSSES:
    raise ValueError(f"ppow.aux_loss={s.aux_loss!r}: expected one of {AUX_LOSSES}")
  if s.windows_in not in WINDOW_REGIONS:
    raise ValueError(f"ppow.windows_in={s.windows_in!r}: expected one of {WINDOW_REGIONS}")

  def step_fn(state, target_params, d2t, batch, rng):
    tokens = batch["tokens"]
    n = tokens.shape[0]
    embed = target_params["embed"]
    v = tcfg.vocab_size
    r_pick, r_roll = jax.random.split(rng)
    teacher = rollout.target_pass(tcfg, target_params, tokens, dcfg.aux_layers, capacity)
    dp = jax.lax.stop_gradient(
        rollout.draft_pass(dcfg, state["params"], embed, tokens, teacher.aux, capacity))

    scores, ok = candidate_scores(
        teacher, dp, d2t, batch["valid"], k_win, s.min_prefix,
        slots=batch["loss_mask"] if s.windows_in == "response" else None)
    picks = choose_prefixes(r_pick, scores, ok, m, s, state["step"])  # [N, M]
    pick_ok = jnp.take_along_axis(ok, picks, axis=1)
    pick_score = jnp.take_along_axis(scores, picks, axis=1)
    # Rows r = (sequence, prefix, group member).
    seq = jnp.repeat(jnp.arange(n), m * g)
    prefix = jnp.repeat(picks.reshape(-1), g)
    row_ok = jnp.repeat(pick_ok.reshape(-1), g)

    draft, _, logp_old = rollout.draft_windows(
        dcfg, state["params"], embed, d2t, v, dp, seq, prefix, k_win, rng=r_roll,
        temperature=s.temperature)
    k, vlogits = rollout.verify_windows(tcfg, target_params, teacher, tokens, seq, prefix, draft)
    logp_t_draft = jnp.take_along_axis(jax.nn.log_softmax(vlogits[:, :-1], -1),
                                       draft[..., None], -1)[..., 0]
    pseq, pprefix = jnp.repeat(jnp.arange(n), m), picks.reshape(-1)
    greedy_lp = rollout.target_greedy_logp(tcfg, target_params, teacher, pseq, pprefix, k_win)
    delta = rewards.likelihood_gap(jnp.repeat(greedy_lp, g, axis=0), logp_t_draft)
    reward = rewards.window_rewards(k, delta, gamma=s.gamma, eta=s.eta, epsilon=s.epsilon,
                                    use_proximity=s.use_proximity)
    adv = objective.group_advantages(reward.reshape(-1, g)).reshape(-1)
    mask = objective.loss_token_mask(k, k_win, s.loss_tokens) & row_ok[:, None]
    anchor_mask = objective.loss_token_mask(k, k_win, s.anchor_tokens) & row_ok[:, None]
    target_window = jax.lax.stop_gradient(vlogits[:, :-1])

    def loss_fn(params):
      dp_new = rollout.draft_pass(dcfg, params, embed, tokens, teacher.aux, capacity)
      _, logits_new, logp_new = rollout.draft_windows(
          dcfg, params, embed, d2t, v, dp_new, seq, prefix, k_win, tokens=draft)
      window_aux = s.aux_coef if s.aux_loss == "window" else 0.0
      # The clipped surrogate is linear in the advantage: scaling it scales the policy term.
      loss, lm = objective.ppow_loss(logp_new, logp_old, s.policy_coef * adv, mask, logits_new,
                                     target_window,
                                     clip_eps=s.clip_eps, beta=s.beta, aux_coef=window_aux,
                                     anchor_mask=anchor_mask)
      if s.aux_loss == "ttt":
        lm["aux_ce"], _ = ttt.ttt_loss(dcfg, params, embed, d2t, tokens, teacher.aux,
                                       teacher.target_logits, batch["loss_mask"],
                                       steps=s.ttt_steps, decay=s.ttt_decay)
        loss = loss + s.aux_coef * lm["aux_ce"]
      return loss, lm

    def epoch(carry, _):
      params, opt_state = carry
      (loss, lm), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), (loss, lm, optax.tree.norm(grads))

    (params, opt_state), (loss, lm, gnorm) = jax.lax.scan(
        epoch, (state["params"], state["opt_state"]), None, length=s.ppo_epochs)
    okf = row_ok.astype(jnp.float32)
    mean_ok = lambda x: jnp.sum(x * okf) / jnp.maximum(okf.sum(), 1.0)
    kf = k.astype(jnp.float32)
    metrics = {
        "loss": loss[-1], "policy_loss": lm["policy_loss"][-1], "kl": lm["kl"][-1],
        "clip_fraction": lm["clip_fraction"][-1], "aux_ce": lm["aux_ce"][-1], "grad_norm": gnorm[-1],
        "reward": mean_ok(reward), "mean_k": mean_ok(kf), "rollout_tau": mean_ok(kf) + 1.0,
        "k0_share": mean_ok((k == 0).astype(jnp.float32)),
        "window_score_selected": jnp.sum(pick_score * pick_ok) / jnp.maximum(pick_ok.sum(), 1),
        "window_score_mean": jnp.sum(jnp.where(ok, scores, 0)) / jnp.maximum(ok.sum(), 1),
        "window_score_max": jnp.max(jnp.where(ok, scores, -jnp.inf)),
        "valid_windows": okf.mean(),
        **signal_diagnostics(reward, adv, k, k_win, row_ok, g, scores, ok, picks, batch["valid"]),
    }
    new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1}
    return new_state, metrics

  return step_fn
