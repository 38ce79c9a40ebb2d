"""Configs sized for real targets (one file per model; `_base` is what they share)."""
