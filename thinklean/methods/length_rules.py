"""The 2026 length-shaping rules as methods: GRPO with one of the rewards (or, for OPO, the
estimator) of :mod:`thinklean.core.length_rules`, each with ``thinklean/configs/NAME.yaml`` and a
demo row, so ``thinklean demo --methods all`` compares them with HMPO, IAPO, Kimi and L1 under one
budget. docs/length-shaping.md has the table.

Only ``linear_passrate`` needs more than the generic loop: its reward divides by the response
cap, which :class:`ResponseCapTrainer` passes as the reward input ``max_new_tokens`` (the cap the
rollout of that step used).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from thinklean.data.jsonl import Example
from thinklean.methods.registry import MethodSpec, register_method
from thinklean.rollout import RolloutBatch
from thinklean.train.rl import RLTrainer


class ResponseCapTrainer(RLTrainer):
    """GRPO whose reward also gets ``max_new_tokens``: the response cap of the step's rollout."""

    def reward_inputs(self, batch: RolloutBatch, examples: Sequence[Example]) -> dict[str, Any]:
        return {"max_new_tokens": self.sampling_config(self.step_index).max_new_tokens}


register_method(MethodSpec("linear_passrate", ResponseCapTrainer,
                           "prime-rl linear penalty: c - coef * pass_rate * n / max_new_tokens",
                           reward_inputs=("max_new_tokens",)))
register_method(MethodSpec("efficiency_bonus", RLTrainer,
                           "prime-rl efficiency bonus: correct x (1 + clamp(1 - n / mean correct n, 0, 1))"))
register_method(MethodSpec("gr3", RLTrainer,
                           "GR3: c / (1 + alpha * n / mean n), group-relative, calibrated (Li et al. 2026)"))
register_method(MethodSpec("lead", RLTrainer,
                           "GRPO-LEAD: exp(-alpha z) for correct (z of length among correct), -1 for wrong"))
register_method(MethodSpec("opo", RLTrainer, "OPO: length-weighted baseline sum(n r) / sum(n), no std"))
register_method(MethodSpec("quantile_penalty", RLTrainer,
                           "Search-R1 (miles): capped penalty above a quantile of correct lengths"))
register_method(MethodSpec("shortest_bonus", RLTrainer,
                           "prime-rl: +bonus for the shortest response of a fully correct group"))
