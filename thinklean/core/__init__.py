"""Pure tensor maths shared by every trainer: masked/group statistics, rewards, advantage
estimators, policy losses and the name registries. No model, no I/O.

Importing this package registers the built-in rewards, advantage estimators and losses.
"""

from thinklean.core.masked import (
    group_index,
    group_max,
    group_mean,
    group_median,
    group_min,
    group_size,
    group_std,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)
from thinklean.core.registry import (
    UnknownNameError,
    get_advantage,
    get_loss,
    get_reward,
    list_advantages,
    list_losses,
    list_rewards,
    register_advantage,
    register_loss,
    register_reward,
)
from thinklean.core.rewards import (
    correctness_reward,
    cosine_reward,
    efficiency_reward,
    hmpo_budgets,
    hmpo_reward,
    kimi_reward,
    l1_reward,
    overlong_penalty,
    overlong_reward,
    shorterbetter_reward,
    thinkprune_budget,
    thinkprune_reward,
)
from thinklean.core.advantages import (
    drgrpo_advantages,
    group_normalised_scores,
    grpo_advantages,
    hgpo_advantages,
    iapo_advantages,
    rloo_advantages,
    sequence_l2_normalise,
)
from thinklean.core.losses import (
    AGG_MODES,
    aggregate_loss,
    entropy_from_logits,
    kl_penalty,
    logprobs_from_logits,
    policy_loss,
)

__all__ = [
    # masked
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "group_index",
    "group_size",
    "group_mean",
    "group_std",
    "group_min",
    "group_max",
    "group_median",
    # registry
    "UnknownNameError",
    "register_reward",
    "register_advantage",
    "register_loss",
    "get_reward",
    "get_advantage",
    "get_loss",
    "list_rewards",
    "list_advantages",
    "list_losses",
    # rewards
    "correctness_reward",
    "hmpo_budgets",
    "hmpo_reward",
    "kimi_reward",
    "l1_reward",
    "thinkprune_reward",
    "thinkprune_budget",
    "shorterbetter_reward",
    "cosine_reward",
    "efficiency_reward",
    "overlong_penalty",
    "overlong_reward",
    # advantages
    "group_normalised_scores",
    "grpo_advantages",
    "drgrpo_advantages",
    "rloo_advantages",
    "sequence_l2_normalise",
    "iapo_advantages",
    "hgpo_advantages",
    # losses
    "AGG_MODES",
    "aggregate_loss",
    "policy_loss",
    "kl_penalty",
    "entropy_from_logits",
    "logprobs_from_logits",
]
