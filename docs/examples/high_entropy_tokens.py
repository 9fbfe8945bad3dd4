"""high_entropy_tokens: a policy loss in one file, loaded without editing thinklean.

PPO-clip on the response tokens of highest entropy only: of each call's valid tokens, those whose
entropy is in the top ``top_fraction`` (the update of Wang et al. 2025, "Beyond the 80/20 rule",
restricted to the top 20% of tokens by entropy). The trainer calls a loss once per micro-batch,
so the cut is taken per micro-batch. The control arm of docs/task.md ("Where HMPO's checks
break"); there HMPO's checks broke as often as with every token in the loss:

    thinklean train --plugin high_entropy_tokens.py --method hmpo --set loss=ppo_clip_high_entropy --output runs/ent
"""

import torch
from torch import Tensor

from thinklean.core import policy_loss, register_loss


@register_loss("ppo_clip_high_entropy")
def ppo_clip_high_entropy(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor,
                          entropy: Tensor, top_fraction: float = 0.2, clip_low: float = 0.2, clip_high: float = 0.2,
                          dual_clip: float | None = None, agg: str = "token-mean",
                          max_len: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`~thinklean.core.policy_loss` over the valid tokens (``response_mask`` ``[b, T]``) whose
    ``entropy`` (``[b, T]``, nats) is at least the ``1 - top_fraction`` quantile of the valid ones."""
    valid = response_mask.bool()
    cut = torch.quantile(entropy[valid].float(), 1.0 - top_fraction) if valid.any() else 0.0
    keep = response_mask * (entropy >= cut).to(response_mask.dtype)
    return policy_loss(logprobs, old_logprobs, advantages, keep, clip_low, clip_high, dual_clip, agg, max_len)
