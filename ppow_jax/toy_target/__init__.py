"""The embedded toy target (`configs/default.py:toy`): a small LLaMA trained here, no download.

`corpus` reads the interpreter's standard library as text; `target_lm` trains a byte-level BPE
tokenizer and the LM on it and writes a Hugging Face directory; `prompts_from_corpus` cuts
training and held-out prompt files from the same text. The pipeline that uses them is
`ppow_jax.modes.pipeline`.
"""
