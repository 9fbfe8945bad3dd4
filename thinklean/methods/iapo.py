"""IAPO (iapo.md): token advantages from the information each token carries about the answer.

Per rollout step: the sequence reward is format (+0.5 / -0.5) + correctness (+1 / -1); the
early-exit probe (:mod:`thinklean.methods.iapo_probe`) gives the answer entropy ``H^A_t`` before
every response token, smoothed into the information gain ``s_t``; ``h_t`` is the sampling
policy's own next-token entropy (read off the probe's forward over prompt + response, so IAPO
adds one no-grad pass in all); the ``iapo`` estimator
(:func:`thinklean.core.advantages.iapo_advantages`, ``advantage: iapo``) combines them.

``config.method_kwargs`` (:class:`IAPOSettings`): ``exit_string`` (default ``" </think> \\boxed{"``),
``chunk_size`` (16), ``max_batch_tokens`` (2048), ``probe_stride`` (1: exact; ``s``: probe every ``s``-th token
and interpolate, about ``1/s`` of the exit-token work), ``w_s`` / ``w_c`` (1e-2),
``reasoning_only`` (False: token terms on every response token, as the authors do; True: only
inside ``<think>...</think>``), ``gain_discount`` (0: each token's own information gain, the
spec; ``g`` in ``(0, 1)``: a token is credited with the discounted gain of the tokens it leads to,
:func:`~thinklean.methods.iapo_probe.discounted_gain`, a thinklean extension).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from thinklean.core.advantages import sequence_l2_normalise
from thinklean.data.formats import THINK_END, boxed, format_prompt
from thinklean.data.grading import format_ok
from thinklean.data.jsonl import Example
from thinklean.methods.iapo_probe import answer_entropies, discounted_gain, information_gain
from thinklean.methods.registry import MethodSpec, register_method
from thinklean.rollout import RolloutBatch, SamplingConfig, generate
from thinklean.train.rl import RLTrainer, StepBatch
from thinklean.train.settings import ConfigError

DEFAULT_EXIT = f" {THINK_END} {boxed('')[:-1]}"  # " </think> \boxed{"


def iapo_reward(correct: torch.Tensor, well_formed: torch.Tensor) -> torch.Tensor:
    """``±0.5`` for format plus ``±1`` for correctness, ``float32 [B]``."""
    return (well_formed.float() - 0.5) + (2 * correct.float() - 1)


@dataclass(frozen=True)
class IAPOSettings:
    """``method_kwargs`` of IAPO (see the module docstring)."""

    exit_string: str = DEFAULT_EXIT
    chunk_size: int = 16
    max_batch_tokens: int | None = 2048
    probe_stride: int = 1
    w_s: float = 1e-2
    w_c: float = 1e-2
    reasoning_only: bool = False
    gain_discount: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.gain_discount < 1.0:
            raise ConfigError(f"method_kwargs: iapo needs 0 <= gain_discount < 1, got {self.gain_discount}")


class IAPOTrainer(RLTrainer):
    """GRPO loop with IAPO's reward and the inputs of information-gain token advantages."""

    Settings = IAPOSettings

    def compute_rewards(self, batch: RolloutBatch, examples: Sequence[Example], correct: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        well_formed = torch.tensor([format_ok(t) for t in batch.texts])
        return iapo_reward(correct, well_formed), {}

    def _reasoning_mask(self, rollout: RolloutBatch) -> torch.Tensor:
        """1 on response tokens before the first ``</think>`` token (inclusive of reasoning only)."""
        end_id = self.tokenizer.convert_tokens_to_ids(THINK_END)
        is_end = (rollout.response_ids == end_id).long().cumsum(1) > 0
        return rollout.response_mask * (~is_end).long()

    def advantage_inputs(self, step_batch: StepBatch) -> dict[str, Any]:
        """The generic inputs plus ``info_gain`` and ``token_entropy`` from the early-exit probe,
        ``token_mask`` and the weights ``w_s`` / ``w_c``; logs ``answer_entropy``."""
        settings = self.settings
        rollout = step_batch.rollout
        exit_ids = self.tokenizer(settings.exit_string, add_special_tokens=False).input_ids
        model = self.accelerator.unwrap_model(self.model)
        device = self.accelerator.device
        entropy_answer, entropy_token = answer_entropies(
            model, rollout.prompt_ids.to(device), rollout.prompt_mask.to(device), rollout.response_ids.to(device),
            rollout.response_mask.to(device), exit_ids, chunk_size=settings.chunk_size,
            temperature=self.config.temperature, max_batch_tokens=settings.max_batch_tokens,
            stride=settings.probe_stride, with_token_entropy=True,
        )
        entropy_answer, entropy_token = entropy_answer.cpu(), entropy_token.cpu()
        step_batch.info["answer_entropy"] = float((entropy_answer * rollout.response_mask).sum() / rollout.response_mask.sum())
        return {**super().advantage_inputs(step_batch),
                "info_gain": discounted_gain(information_gain(entropy_answer, rollout.response_mask, smooth=True),
                                             rollout.response_mask, settings.gain_discount),
                "token_entropy": entropy_token,
                "token_mask": self._reasoning_mask(rollout) if settings.reasoning_only else None,
                "w_s": settings.w_s, "w_c": settings.w_c}


def explain_tokens(model: Any, tokenizer: Any, examples: list[Example], max_new_tokens: int = 200,
                   temperature: float = 0.0, seed: int = 0, exit_string: str = DEFAULT_EXIT) -> list[dict[str, Any]]:
    """Per response: ``prompt``, ``tokens`` (strings), ``answer_entropy``, ``gain`` and ``score`` (s̃) lists."""
    prompts = [format_prompt(e.prompt, tokenizer) for e in examples]
    batch = generate(model, tokenizer, prompts, 1, SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature),
                     generator=torch.Generator().manual_seed(seed))
    exit_ids = tokenizer(exit_string, add_special_tokens=False).input_ids
    entropy = answer_entropies(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask, exit_ids)
    gain = information_gain(entropy, batch.response_mask)
    score = sequence_l2_normalise(gain, batch.response_mask)
    out = []
    for i, example in enumerate(examples):
        n = int(batch.lengths[i])
        ids = batch.response_ids[i, :n].tolist()
        out.append({
            "prompt": example.prompt,
            "tokens": [tokenizer.decode([t]) for t in ids],
            "answer_entropy": entropy[i, :n].tolist(),
            "gain": gain[i, :n].tolist(),
            "score": score[i, :n].tolist(),
        })
    return out


register_method(MethodSpec("iapo", IAPOTrainer, "IAPO: token advantages from information gain about the answer",
                           advantage_inputs=("info_gain", "token_entropy", "token_mask", "w_s", "w_c")))
