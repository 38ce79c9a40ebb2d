"""PPOW math (arXiv 2605.14978): window rewards, divergence-aware window selection, objective."""

from ppow_jax.ppow.objective import (clipped_policy_loss, group_advantages, kl_to_target,
                                     loss_token_mask, ppow_loss, soft_cross_entropy)
from ppow_jax.ppow.rewards import (likelihood_gap, proximity_reward, speedup_reward,
                                   window_rewards)
from ppow_jax.ppow.windowing import (confidence, divergence_scores, masked_mean, select_windows,
                                     token_kl, window_scores)

__all__ = [
    "clipped_policy_loss", "group_advantages", "kl_to_target", "loss_token_mask", "ppow_loss",
    "soft_cross_entropy", "likelihood_gap", "proximity_reward", "speedup_reward",
    "window_rewards", "confidence", "divergence_scores", "masked_mean", "select_windows",
    "token_kl", "window_scores",
]
