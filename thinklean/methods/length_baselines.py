"""Length baselines that need more than a reward function: L1 and ThinkPrune.

- **L1 / LCPO-exact**: every prompt states a target length ("Think for N tokens.") and the
  reward is ``1[correct] - alpha * |N - n|`` (``thinklean.core.rewards.l1_reward``). The target
  of a prompt is a pure function of the prompt text and the seed, so the rollout and the
  reward agree on it without extra state.
- **ThinkPrune**: a hard budget — generation is cut at the budget (``max_new_tokens``) and a
  response longer than the budget scores 0; the budget follows a schedule over steps, e.g.
  ``[[0, 200], [30, 150], [60, 100]]`` (``thinklean.core.rewards.thinkprune_budget``).

The other length rewards (``kimi``, ``shorterbetter``, ``cosine``, ``efficiency``,
``overlong``, ``hmpo``) are plain registered rewards: ``thinklean train --method grpo
--reward kimi``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import torch

from thinklean.core.rewards import l1_reward, thinkprune_budget, thinkprune_reward
from thinklean.data.formats import format_prompt
from thinklean.data.jsonl import Example
from thinklean.rollout import RolloutBatch, SamplingConfig
from thinklean.train.rl import RLTrainer


def l1_target(prompt: str, seed: int, low: int, high: int) -> int:
    """Deterministic target length in ``[low, high]`` (multiples of 8) for a prompt."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    steps = (high - low) // 8
    return low + 8 * (int.from_bytes(digest[:4], "big") % (steps + 1))


def with_length_target(question: str, target: int) -> str:
    """The L1 prompt augmentation."""
    return f"{question} Think for {target} tokens."


class L1Trainer(RLTrainer):
    """GRPO with L1's target-length prompts and reward (``reward_kwargs``: alpha, low, high)."""

    def _target(self, example: Example) -> int:
        kw = self.config.reward_kwargs
        return l1_target(example.prompt, self.config.seed, int(kw.get("low", 16)), int(kw.get("high", 160)))

    def build_prompts(self, examples: Sequence[Example]) -> tuple[list[str], list[str] | None]:
        return [format_prompt(with_length_target(e.prompt, self._target(e)), self.tokenizer) for e in examples], None

    def compute_rewards(self, batch: RolloutBatch, examples: Sequence[Example], correct: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        targets = torch.tensor([self._target(examples[g]) for g in batch.group_ids.tolist()], dtype=torch.float32)
        alpha = float(self.config.reward_kwargs.get("alpha", 0.0003))
        rewards = l1_reward(correct, batch.lengths, batch.group_ids, targets, alpha)
        return rewards, {"target_mean": float(targets.mean()), "target_error": float((targets - batch.lengths).abs().mean())}


class ThinkPruneTrainer(RLTrainer):
    """GRPO with a hard, scheduled length budget (``reward_kwargs``: schedule)."""

    def budget(self, step: int) -> int:
        """The hard token budget at ``step``: the ``reward_kwargs["schedule"]`` entry in force
        (:func:`~thinklean.core.rewards.thinkprune_budget`; without a schedule, ``max_new_tokens``
        throughout). It caps sampling and is the reward's budget."""
        schedule = self.config.reward_kwargs.get("schedule", [[0, self.config.max_new_tokens]])
        return thinkprune_budget(step, [tuple(s) for s in schedule])

    def sampling_config(self, step: int) -> SamplingConfig:
        sampling = super().sampling_config(step)
        return dataclasses.replace(sampling, max_new_tokens=min(sampling.max_new_tokens, self.budget(step)))

    def compute_rewards(self, batch: RolloutBatch, examples: Sequence[Example], correct: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        budget = self.budget(self.step_index)
        return thinkprune_reward(correct, batch.lengths, batch.group_ids, budget), {"budget": float(budget)}
