"""IAPO (iapo.md): token advantages from the information each token carries about the answer.

Per rollout step: the sequence reward is format (+0.5 / -0.5) + correctness (+1 / -1); the
early-exit probe (:mod:`thinklean.methods.iapo_probe`) gives the answer entropy ``H^A_t`` before
every response token, smoothed into the information gain ``s_t``; ``h_t`` is the sampling
policy's own next-token entropy (read off the probe's forward over prompt + response, so IAPO
adds one no-grad pass in all); :func:`thinklean.core.advantages.iapo_advantages` combines them.

``config.method_kwargs``: ``exit_string`` (default ``" </think> \\boxed{"``), ``chunk_size``
(16), ``max_batch_tokens`` (2048), ``probe_stride`` (1: exact; ``s``: probe every ``s``-th token
and interpolate, about ``1/s`` of the exit-token work), ``w_s`` / ``w_c`` (1e-2),
``reasoning_only`` (False: token terms on every response token, as the authors do; True: only
inside ``<think>...</think>``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from thinklean.core.advantages import iapo_advantages
from thinklean.data.formats import THINK_END, boxed
from thinklean.data.grading import format_ok
from thinklean.data.jsonl import Example
from thinklean.methods.iapo_probe import answer_entropies, information_gain
from thinklean.rollout import RolloutBatch
from thinklean.train.rl import RLTrainer, StepBatch

DEFAULT_EXIT = f" {THINK_END} {boxed('')[:-1]}"  # " </think> \boxed{"


def iapo_reward(correct: torch.Tensor, well_formed: torch.Tensor) -> torch.Tensor:
    """``±0.5`` for format plus ``±1`` for correctness, ``float32 [B]``."""
    return (well_formed.float() - 0.5) + (2 * correct.float() - 1)


class IAPOTrainer(RLTrainer):
    """GRPO loop with IAPO's reward and information-gain token advantages."""

    def compute_rewards(self, batch: RolloutBatch, examples: Sequence[Example], correct: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        well_formed = torch.tensor([format_ok(t) for t in batch.texts])
        return iapo_reward(correct, well_formed), {}

    def _reasoning_mask(self, rollout: RolloutBatch) -> torch.Tensor:
        """1 on response tokens before the first ``</think>`` token (inclusive of reasoning only)."""
        end_id = self.tokenizer.convert_tokens_to_ids(THINK_END)
        is_end = (rollout.response_ids == end_id).long().cumsum(1) > 0
        return rollout.response_mask * (~is_end).long()

    def compute_advantages(self, step_batch: StepBatch) -> torch.Tensor:
        kw = self.config.method_kwargs
        rollout = step_batch.rollout
        exit_ids = self.tokenizer(kw.get("exit_string", DEFAULT_EXIT), add_special_tokens=False).input_ids
        model = self.accelerator.unwrap_model(self.model)
        device = self.accelerator.device
        entropy_answer, entropy_token = answer_entropies(
            model, rollout.prompt_ids.to(device), rollout.prompt_mask.to(device), rollout.response_ids.to(device),
            rollout.response_mask.to(device), exit_ids, chunk_size=int(kw.get("chunk_size", 16)),
            temperature=self.config.temperature, stride=int(kw.get("probe_stride", 1)), with_token_entropy=True,
            **({"max_batch_tokens": kw["max_batch_tokens"]} if "max_batch_tokens" in kw else {}),
        )
        entropy_answer, entropy_token = entropy_answer.cpu(), entropy_token.cpu()
        gain = information_gain(entropy_answer, rollout.response_mask, smooth=True)
        token_mask = self._reasoning_mask(rollout) if kw.get("reasoning_only", False) else None
        step_batch.info["answer_entropy"] = float((entropy_answer * rollout.response_mask).sum() / rollout.response_mask.sum())
        return iapo_advantages(
            step_batch.rewards, step_batch.correct, rollout.group_ids, rollout.response_mask, gain,
            entropy_token, w_s=float(kw.get("w_s", 1e-2)), w_c=float(kw.get("w_c", 1e-2)),
            token_mask=token_mask,
        )
