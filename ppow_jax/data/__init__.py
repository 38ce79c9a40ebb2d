"""Data: prompt files for decoding and evaluation."""

from ppow_jax.data.prompts import (
    Prompt,
    PromptFileError,
    encode_prompt,
    encode_prompts,
    load_prompts,
)

__all__ = ["Prompt", "PromptFileError", "encode_prompt", "encode_prompts", "load_prompts"]
