"""BuPO (bupo.md): Internal Policy Alignment on layer ``l`` for the first ``s_inter`` rollout
steps, then plain GRPO on the full model.

During IPA both the old and the new log-probs come from the internal layer policy
``softmax(h^l E_u^T)`` (no final norm by default); rollouts still come from the full model and
advantages are the usual group-normalised ones. Only layers ``1..l`` run in the update, so the
layers above get no gradient (they are not frozen: the optimizer and its state carry on into
the GRPO phase).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from thinklean.models.internal import layer_policy_logits
from thinklean.train.rl import RLTrainer


@dataclass(frozen=True)
class BuPOSchedule:
    """IPA on ``layer`` (1-based) for the first ``s_inter`` steps; ``apply_final_norm`` option."""

    layer: int = 2
    s_inter: int = 10
    apply_final_norm: bool = False


class BuPOTrainer(RLTrainer):
    """GRPO whose policy log-probs come from an internal layer policy during the IPA phase.

    ``config.method_kwargs``: ``layer`` (default 2), ``s_inter`` (default 10),
    ``apply_final_norm`` (default False).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.schedule = BuPOSchedule(**self.config.method_kwargs)
        if self.schedule.s_inter > 0.1 * self.config.steps:
            warnings.warn(
                f"BuPO: s_inter={self.schedule.s_inter} is more than 10% of {self.config.steps} steps; "
                "a long IPA phase degrades training (bupo.md)", stacklevel=2,
            )

    @property
    def in_ipa_phase(self) -> bool:
        return self.step_index < self.schedule.s_inter

    def response_logits(self, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        position_ids: torch.Tensor, T: int) -> torch.Tensor:
        if not self.in_ipa_phase:
            return super().response_logits(model, input_ids, attention_mask, position_ids, T)
        inner = self.accelerator.unwrap_model(model)
        return layer_policy_logits(inner, input_ids, attention_mask, position_ids, self.schedule.layer,
                                   self.schedule.apply_final_norm, logits_to_keep=T + 1)[:, :-1]

    def step(self) -> dict[str, float]:
        metrics = super().step()
        metrics["ipa_phase"] = float(self.step_index - 1 < self.schedule.s_inter)
        return metrics
