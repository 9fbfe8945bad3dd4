"""HMPO: the registered ``hmpo`` reward on the generic loop, plus budget logging.

Everything HMPO changes lives in :func:`thinklean.core.rewards.hmpo_reward` and
``configs/hmpo.yaml``; this module only adds the per-step budget statistics so a user can
watch the budget tighten (mean budget over groups with a correct answer, and the fraction of
correct responses longer than their group's budget).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from thinklean.core.rewards import hmpo_budgets
from thinklean.data.jsonl import Example
from thinklean.methods.registry import MethodSpec, register_method
from thinklean.rollout import RolloutBatch
from thinklean.train.rl import RLTrainer


def budget_stats(correct: torch.Tensor, lengths: torch.Tensor, group_ids: torch.Tensor, budget_stat: str = "median") -> dict[str, float]:
    """``budget_mean`` (tokens, over groups with a budget) and ``above_budget`` (fraction of correct)."""
    budget, has_budget = hmpo_budgets(correct, lengths, group_ids, budget_stat)
    if not bool(has_budget.any()):
        return {"budget_mean": float("nan"), "above_budget": float("nan"), "groups_with_budget": 0.0}
    first_of_group = torch.zeros_like(has_budget)
    seen: set[int] = set()
    for i, g in enumerate(group_ids.tolist()):
        if g not in seen:
            seen.add(g)
            first_of_group[i] = True
    groups = first_of_group & has_budget
    correct = correct.bool()
    above = (lengths.float() > budget) & correct
    return {
        "budget_mean": float(budget[groups].mean()),
        "above_budget": float(above.sum()) / max(1, int(correct.sum())),
        "groups_with_budget": float(groups.sum()),
    }


class HMPOTrainer(RLTrainer):
    """GRPO loop with the ``hmpo`` reward (from the config) and budget metrics."""

    def compute_rewards(self, batch: RolloutBatch, examples: Sequence[Example], correct: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        rewards, info = super().compute_rewards(batch, examples, correct)
        stat = self.config.reward_kwargs.get("budget_stat", "median")
        return rewards, {**info, **budget_stats(correct, batch.lengths, batch.group_ids, stat)}


register_method(MethodSpec("hmpo", HMPOTrainer, "HMPO: median-of-correct budget, cosine-decay length reward"))
