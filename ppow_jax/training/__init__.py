"""Drafter training shared by token-level (SFT) and PPOW runs.

`drafter_run` is a run from start to end (prepare_start, train, finish); `startup` (devices and
the frozen target), `data_feed` (self-distillation data), `drafter_init` (initial weights and the
optimizer) and `final_eval` (export and tau) are its parts; `loop` is the resume-first loop,
`checkpoints` and `metrics` its files.
"""
