"""The 2026 length-shaping rules as methods: GRPO with one of the rewards (or, for OPO, the
estimator) of :mod:`thinklean.core.length_rules`, each with ``thinklean/configs/NAME.yaml`` and a
demo row, so ``thinklean demo --methods all`` compares them with HMPO, IAPO, Kimi and L1 under one
budget. docs/length-shaping.md has the table.

Two need more than the generic loop: ``linear_passrate``'s reward divides by the response cap,
which :class:`ResponseCapTrainer` passes as the reward input ``max_new_tokens`` (the cap the
rollout of that step used); ``gr3`` logs its constraint satisfaction rate (:class:`GR3Trainer`),
with which the paper calibrates ``alpha``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from thinklean.core.length_rules import gr3_constraint_rate, gr3_reward
from thinklean.data.jsonl import Example
from thinklean.methods.registry import MethodSpec, register_method
from thinklean.rollout import RolloutBatch
from thinklean.train.rl import RLTrainer


class ResponseCapTrainer(RLTrainer):
    """GRPO whose reward also gets ``max_new_tokens``: the response cap of the step's rollout."""

    def reward_inputs(self, batch: RolloutBatch, examples: Sequence[Example]) -> dict[str, Any]:
        return {"max_new_tokens": self.sampling_config(self.step_index).max_new_tokens}


class GR3Trainer(RLTrainer):
    """GRPO with the GR3 reward, logging ``gr3_csr``: the share of mixed groups whose
    best-at-average-length response keeps a non-negative advantage (NaN steps: no mixed group)."""

    def compute_rewards(self, batch: RolloutBatch, examples: Sequence[Example], correct: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        rewards, info = super().compute_rewards(batch, examples, correct)
        alpha = self.config.reward_kwargs.get("alpha", inspect.signature(gr3_reward).parameters["alpha"].default)
        return rewards, {**info, "gr3_csr": gr3_constraint_rate(correct, batch.lengths, batch.group_ids, alpha)}


register_method(MethodSpec("linear_passrate", ResponseCapTrainer,
                           "prime-rl linear penalty: c - coef * pass_rate * n / max_new_tokens",
                           reward_inputs=("max_new_tokens",)))
register_method(MethodSpec("efficiency_bonus", RLTrainer,
                           "prime-rl efficiency bonus: correct x (1 + clamp(1 - n / mean correct n, 0, 1))"))
register_method(MethodSpec("gr3", GR3Trainer,
                           "GR3: c / (1 + alpha * n / mean n), group-relative (Li et al. 2026)"))
register_method(MethodSpec("lead", RLTrainer,
                           "GRPO-LEAD: exp(-alpha z) for correct (z of length among correct), -1 for wrong"))
register_method(MethodSpec("opo", RLTrainer, "OPO: length-weighted baseline sum(n r) / sum(n), no std"))
register_method(MethodSpec("quantile_penalty", RLTrainer,
                           "Search-R1 (miles): capped penalty above a quantile of correct lengths"))
register_method(MethodSpec("shortest_bonus", RLTrainer,
                           "prime-rl: +bonus for the shortest response of a fully correct group"))
