"""Training infrastructure shared by token-level (SFT) and PPOW training: checkpoints, metrics."""
