"""Rollout engine: batched sampling with a KV cache, per-token log-probs, forced prefixes."""

from thinklean.rollout.engine import RolloutBatch, SamplingConfig, generate

__all__ = ["RolloutBatch", "SamplingConfig", "generate"]
