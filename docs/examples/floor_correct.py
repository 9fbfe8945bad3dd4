"""floor_correct: an advantage estimator in one file, loaded without editing thinklean.

GRPO's advantages with every correct response's raised to at least ``floor`` (default 0), so a
length-shaped reward never pushes a correct response down. The control arm of docs/task.md
("Flooring the correct responses' advantages"); there it did not change HMPO's accuracy:

    thinklean train --plugin floor_correct.py --method hmpo --set advantage=grpo_floor_correct --output runs/floor
"""

import torch
from torch import Tensor

from thinklean.core import grpo_advantages, register_advantage


@register_advantage("grpo_floor_correct")
def grpo_floor_correct(rewards: Tensor, group_ids: Tensor, response_mask: Tensor, correct: Tensor,
                       floor: float = 0.0) -> Tensor:
    """``float32 [B, T]``: GRPO's advantages, a correct response's (``correct`` ``[B]``) raised to ``floor``."""
    advantages = grpo_advantages(rewards, group_ids, response_mask)
    lift = correct.bool().to(advantages.device)[:, None] & response_mask.bool()
    return torch.where(lift, advantages.clamp(min=floor), advantages)
