"""The EAGLE-3 drafter (fused low/mid/high target features + one decoder layer) and its checkpoints."""

from ppow_jax.eagle3.checkpoint import load_eagle3, read_embed_tokens, save_eagle3
from ppow_jax.eagle3.model import (
    NEG_LOGIT, DraftOutput, Eagle3Config, Eagle3Drafter, VocabMap, default_aux_layers,
    draft_to_target_logits, forward, fuse, init_cache)
from ppow_jax.eagle3.vocab import build_vocab_maps

__all__ = [
    "NEG_LOGIT", "DraftOutput", "Eagle3Config", "Eagle3Drafter", "VocabMap", "build_vocab_maps",
    "default_aux_layers", "draft_to_target_logits", "forward", "fuse", "init_cache", "load_eagle3",
    "read_embed_tokens", "save_eagle3",
]
