"""gamma of PPOW's speedup reward measured as the engine runs drafter and target."""

import flax.nnx as nnx
import numpy as np
import pytest

from ppow_jax.decoding import step_cost
from ppow_jax.eagle3 import model as e3
from ppow_jax.eagle3.engine_adapter import Eagle3EngineDrafter
from ppow_jax.models import hf_checkpoint


@pytest.mark.slow
def test_measured_gamma_is_a_positive_ratio_of_its_two_costs(stories_path):
  target = hf_checkpoint.load_model(stories_path)
  cfg = e3.Eagle3Config.from_target(target.cfg, draft_vocab_size=target.cfg.vocab_size)
  drafter = e3.Eagle3Drafter(cfg, rngs=nnx.Rngs(0))
  drafter.set_vocab_maps(np.zeros(cfg.draft_vocab_size, np.int64),
                         np.ones(target.cfg.vocab_size, bool))
  m = step_cost.measure_gamma(target.cfg, target.params(), Eagle3EngineDrafter(drafter.cfg),
                              Eagle3EngineDrafter.bind(drafter, target.params()), context=16, windows=(1, 3),
                              inner=2, repeats=2)
  assert m["target_ms"] > 0 and m["draft_token_ms"] > 0 and m["method"] in ("marginal", "average")
  assert np.isclose(m["gamma"], m["draft_token_ms"] / m["target_ms"])
  # No bound on the value: on this 260K-parameter target per-call overheads dominate both costs,
  # so a draft token can cost about a target step (measured 0.4-3.5 under load).
  assert np.isfinite(m["gamma"]) and m["gamma"] > 0


def test_draft_token_cost_is_the_slope_or_else_the_per_token_average():
  # Times of a 1..5-token proposal: 2 ms fixed + 0.5 ms a token, plus noise that sums to zero.
  noisy = {k: 2e-3 + 5e-4 * k + e for k, e in zip(range(1, 6), (1e-5, -1e-5, 0, 1e-5, -1e-5))}
  cost, method = step_cost.draft_token_cost(noisy)
  assert method == "marginal" and abs(cost - 5e-4) < 2e-5
  # Overheads swamp the marginal cost: the slope is <= 0, so the per-token cost of the longest
  # window (an upper bound) is used, never a zero or negative gamma.
  flat = {1: 3.0e-3, 2: 3.1e-3, 3: 2.9e-3, 4: 2.95e-3}
  cost, method = step_cost.draft_token_cost(flat)
  assert method == "average" and cost == 2.95e-3 / 4
  with pytest.raises(ValueError, match="two windows"):
    step_cost.draft_token_cost({3: 1e-3})
