"""Decode a prompt file with a target and (optionally) a drafter.

  python -m ppow_jax.main --config configs/decode.py --workdir /tmp/decode \
    --config.target.path=ppow_jax/assets/stories260k \
    --config.drafter.path=ppow_jax/assets/stories260k \
    --config.data.prompts=ppow_jax/assets/gsm8k/test.jsonl --config.data.limit=8 \
    --config.decode.window=6 --config.decode.temperature=0 --config.decode.max_new_tokens=64 \
    --config.decode.batch_size=4

Without --config.drafter.path it decodes autoregressively through the same engine.
--config.decode.tree=depth,topk,num_nodes (e.g. 6,4,24) drafts a dynamic tree (EAGLE-2) instead
of a chain of decode.window tokens: `depth` draft steps, `topk` branches expanded per step, the
best `num_nodes` tokens (root included; at most 1 + topk + (depth-1)*topk^2) verified at once.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.mode = "decode"
  c.workdir = ""
  c.seed = 0
  c.target = ml_collections.ConfigDict(dict(path="", dtype=""))  # dtype "" = checkpoint's own
  c.drafter = ml_collections.ConfigDict(dict(path=""))  # "" = autoregressive
  c.data = ml_collections.ConfigDict(dict(
      prompts="", limit=0, max_prompt_len=256, truncation="left"))  # limit 0 = all
  c.decode = ml_collections.ConfigDict(dict(
      window=6, temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=128, batch_size=1,
      tree=""))  # "depth,topk,num_nodes" = tree decoding; "" = a chain of `window`
  return c
