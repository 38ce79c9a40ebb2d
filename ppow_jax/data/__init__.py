"""Data: prompt and conversation files for decoding, evaluation and training."""

from ppow_jax.data.prompts import (
    Conversation,
    Prompt,
    PromptFileError,
    encode_prompt,
    encode_prompts,
    load_conversations,
    load_prompts,
)

__all__ = ["Conversation", "Prompt", "PromptFileError", "encode_prompt", "encode_prompts",
           "load_conversations", "load_prompts"]
