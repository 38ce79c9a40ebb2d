"""Evaluation: drafters against the autoregressive baseline on benchmark prompts.

`ppow_jax.modes.eval` decodes; `parsing` reads its settings and prompt files, `statistics` turns
decode results into per-category figures and speedups, `report` writes report.md and PNG plots.
`truncated_lm` makes a small LM drafter out of a target without any download.
"""

from __future__ import annotations

import jax
from flax import nnx

from ppow_jax.models import hf_checkpoint
from ppow_jax.models.transformer import Transformer


def truncated_lm(src: str, dst: str, num_layers: int) -> str:
  """Writes the first `num_layers` decoder layers of the HF LM at `src` (embeddings, final norm
  and head kept) to `dst`: a smaller LM with the same vocabulary, usable as a drafter.

  Returns dst."""
  model = hf_checkpoint.load_model(src)
  if not 1 <= num_layers <= model.cfg.num_layers:
    raise ValueError(f"num_layers={num_layers}: {src} has {model.cfg.num_layers} layers")
  cfg = model.cfg.replace(num_layers=num_layers)
  params = model.params()
  params["layers"] = jax.tree.map(lambda w: w[:num_layers], params["layers"])
  small = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(small, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(small, state)
  hf_checkpoint.save_model(small, dst)
  return dst
