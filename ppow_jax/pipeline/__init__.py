"""The default end-to-end pipeline's stages (target LM, drafter training, PPOW, evaluation).

Each stage writes its output directory atomically with a `DONE` marker, so a rerun skips
finished stages.
"""
