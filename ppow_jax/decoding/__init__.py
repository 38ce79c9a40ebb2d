"""Speculative decoding: draft rollout, target verification, acceptance and the generation loop."""
