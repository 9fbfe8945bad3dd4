"""Length baselines that need more than a reward function: L1 and ThinkPrune.

- **L1 / LCPO-exact**: every prompt states a target length ("Think for N tokens.") and the
  reward is ``1[correct] - alpha * |N - n|`` (the ``l1`` reward, given ``targets``). The target
  of a prompt is a pure function of the prompt text and the seed, so the rollout and the
  reward agree on it without extra state.
- **ThinkPrune**: a hard budget — generation is cut at the budget (``max_new_tokens``) and a
  response longer than the budget scores 0; the budget follows a schedule over steps, e.g.
  ``[[0, 200], [30, 150], [60, 100]]`` (``thinklean.core.rewards.thinkprune_budget``; the
  ``thinkprune`` reward, given ``budget``).

The other length rewards (``kimi``, ``shorterbetter``, ``cosine``, ``efficiency``,
``overlong``, ``hmpo``) are plain registered rewards: ``thinklean train --method grpo
--reward kimi``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from thinklean.core.rewards import thinkprune_budget
from thinklean.data.formats import format_prompt
from thinklean.data.jsonl import Example
from thinklean.methods.registry import MethodSpec, register_method
from thinklean.rollout import RolloutBatch, SamplingConfig
from thinklean.train.rl import RLTrainer
from thinklean.train.settings import ConfigError


def l1_target(prompt: str, seed: int, low: int, high: int) -> int:
    """Deterministic target length in ``[low, high]`` (multiples of 8) for a prompt."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    steps = (high - low) // 8
    return low + 8 * (int.from_bytes(digest[:4], "big") % (steps + 1))


def with_length_target(question: str, target: int) -> str:
    """The L1 prompt augmentation."""
    return f"{question} Think for {target} tokens."


@dataclass(frozen=True)
class L1Settings:
    """``method_kwargs`` of L1: prompt targets are drawn in ``[low, high]`` (multiples of 8 from ``low``)."""

    low: int = 16
    high: int = 160

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ConfigError(f"method_kwargs: l1 needs 1 <= low <= high, got low {self.low}, high {self.high}")


class L1Trainer(RLTrainer):
    """GRPO with L1's target-length prompts; the reward gets each sample's target as ``targets``
    (``reward_kwargs``: alpha; ``method_kwargs``: low, high)."""

    Settings = L1Settings

    def _target(self, example: Example) -> int:
        return l1_target(example.prompt, self.config.seed, self.settings.low, self.settings.high)

    def _targets(self, batch: RolloutBatch, examples: Sequence[Example]) -> torch.Tensor:
        return torch.tensor([self._target(examples[g]) for g in batch.group_ids.tolist()], dtype=torch.float32)

    def build_prompts(self, examples: Sequence[Example]) -> tuple[list[str], list[str] | None]:
        return [format_prompt(with_length_target(e.prompt, self._target(e)), self.tokenizer) for e in examples], None

    def reward_inputs(self, batch: RolloutBatch, examples: Sequence[Example]) -> dict[str, Any]:
        return {"targets": self._targets(batch, examples)}

    def compute_rewards(self, batch: RolloutBatch, examples: Sequence[Example], correct: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        rewards, info = super().compute_rewards(batch, examples, correct)
        targets = self._targets(batch, examples)
        return rewards, {**info, "target_mean": float(targets.mean()),
                         "target_error": float((targets - batch.lengths).abs().mean())}


@dataclass(frozen=True)
class ThinkPruneSettings:
    """``method_kwargs`` of ThinkPrune: ``schedule`` of ``[start_step, budget]`` entries (None:
    ``max_new_tokens`` throughout)."""

    schedule: list | None = None

    def __post_init__(self) -> None:
        if self.schedule is not None:
            try:
                thinkprune_budget(0, [tuple(entry) for entry in self.schedule])
            except (TypeError, ValueError) as e:
                raise ConfigError(f"method_kwargs.schedule: {e} (expected [[start_step, budget], ...])") from None


class ThinkPruneTrainer(RLTrainer):
    """GRPO with a hard, scheduled length budget; the reward gets it as ``budget``
    (``method_kwargs``: schedule)."""

    Settings = ThinkPruneSettings

    def budget(self, step: int) -> int:
        """The hard token budget at ``step``: the ``schedule`` entry in force
        (:func:`~thinklean.core.rewards.thinkprune_budget`; without a schedule, ``max_new_tokens``
        throughout). It caps sampling and is the reward's budget."""
        schedule = self.settings.schedule or [[0, self.config.max_new_tokens]]
        return thinkprune_budget(step, [tuple(s) for s in schedule])

    def sampling_config(self, step: int) -> SamplingConfig:
        sampling = super().sampling_config(step)
        return dataclasses.replace(sampling, max_new_tokens=min(sampling.max_new_tokens, self.budget(step)))

    def reward_inputs(self, batch: RolloutBatch, examples: Sequence[Example]) -> dict[str, Any]:
        return {"budget": self.budget(self.step_index)}

    def compute_rewards(self, batch: RolloutBatch, examples: Sequence[Example], correct: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        rewards, info = super().compute_rewards(batch, examples, correct)
        return rewards, {**info, "budget": float(self.budget(self.step_index))}


register_method(MethodSpec("l1", L1Trainer, "L1 / LCPO-exact: 'Think for N tokens.' prompts, reward -alpha|N - n|",
                           reward_inputs=("targets",)))
register_method(MethodSpec("thinkprune", ThinkPruneTrainer, "ThinkPrune: hard scheduled length budget with truncation",
                           reward_inputs=("budget",)))
