"""The length-shaping rules the RL stacks shipped in 2026, as registered rewards and one estimator.

Each is a pure tensor function with thinklean's reward convention (:mod:`thinklean.core.rewards`):
``correct[B]`` (bool or 0/1), ``lengths[B]`` (response tokens, >= 0), ``group_ids[B]`` (integer
ids, any order, unequal group sizes) and keyword settings; rewards return ``float32 [B]``, the
total reward with correctness included, and the trainer's advantage estimator (GRPO by default)
takes its baseline from them, so a rule that rescales rewards is centred on the mean of the
*rescaled* rewards. Group statistics are float64.

| name | rule | source |
|---|---|---|
| ``linear_passrate`` | ``c - coef * pass_rate * n / max_new_tokens`` | prime-rl PR 2702 / 2901 |
| ``efficiency_bonus`` | ``c * (1 + c * clamp(1 - n / mean_correct_n, 0, 1))`` | prime-rl PR 2265 |
| ``gr3`` | ``c / (1 + alpha * n / mean_n)`` | Li et al. 2026 (arXiv 2603.10535); prime-rl PR 2029 / 2040 |
| ``lead`` | ``exp(-alpha z)`` if correct else ``incorrect_reward`` | GRPO-LEAD (arXiv 2504.09696) |
| ``quantile_penalty`` | ``max(min(floor, c), c - min(cap, beta * excess / ref))`` | miles PR 1573 (Search-R1) |
| ``shortest_bonus`` | ``c + bonus`` for the shortest of a fully correct group | prime-rl PR 638 |
| ``opo`` (estimator) | ``A = r - sum(n r) / sum(n)`` per group | OPO; prime-rl PR 2702 |

(``c`` = 1 for a correct response, else 0; ``n`` = its length in tokens.) docs/length-shaping.md
compares them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from thinklean.core.advantages import _broadcast, _check_batch
from thinklean.core.masked import (group_index, group_max, group_mean, group_min, group_quantile, group_size, group_std,
                                   group_sum)
from thinklean.core.registry import register_advantage, register_reward
from thinklean.core.rewards import _check_positive, _check_sequence_inputs

__all__ = [
    "linear_passrate_reward",
    "efficiency_bonus_reward",
    "gr3_constraint_rate",
    "gr3_reward",
    "lead_reward",
    "quantile_penalty_reward",
    "shortest_bonus_reward",
    "opo_advantages",
]


@register_reward("linear_passrate")
def linear_passrate_reward(
    correct: Tensor,
    lengths: Tensor,
    group_ids: Tensor,
    max_new_tokens: int,
    coef: float = 0.25,
    gate_by_correctness: bool = False,
) -> Tensor:
    """prime-rl's linear length penalty (PR 2702, kept as the completion-token term of PR 2901):
    ``c - coef * pass_rate * n / max_new_tokens``.

    ``pass_rate`` is the group's mean correctness reward, so a prompt the group always solves
    gets the full penalty and one it never solves gets none. ``gate_by_correctness`` applies the
    penalty to correct responses only (a wrong one keeps 0). prime-rl divides by its sequence
    length; thinklean's response cap is ``max_new_tokens`` (the ``linear_passrate`` method's
    trainer supplies the rollout's cap). PR 2901 later divides by the group's longest response
    instead; this is PR 2702's fixed-denominator form.

    Args:
        correct: ``[B]`` bool or 0/1.
        lengths: ``[B]`` response tokens.
        group_ids: ``[B]`` integer group ids.
        max_new_tokens: the response cap in tokens (> 0).
        coef: penalty at pass rate 1 for a response of ``max_new_tokens`` tokens (default 0.25).
    Returns: ``float32 [B]``.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    _check_positive("max_new_tokens", max_new_tokens)
    accuracy = is_correct.to(torch.float64)
    pass_rate = group_mean(accuracy, group_ids)
    penalty = coef * pass_rate * lengths64 / max_new_tokens
    if gate_by_correctness:
        penalty = penalty * accuracy
    return (accuracy - penalty).to(torch.float32)


@register_reward("efficiency_bonus")
def efficiency_bonus_reward(correct: Tensor, lengths: Tensor, group_ids: Tensor) -> Tensor:
    """prime-rl's correctness-gated efficiency shaping (PR 2265): ``c * (1 + c * bonus)`` with
    ``bonus = clamp(1 - n / mean_correct_n, 0, 1)``.

    ``mean_correct_n`` is the mean length of the group's correct responses. A correct response
    shorter than that mean earns up to twice the reward; one at or above it, and every wrong
    one, is unchanged. A group without a correct response, or whose correct responses are all
    empty (mean 0), gets no bonus. Returns ``float32 [B]``.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    accuracy = is_correct.to(torch.float64)
    mean_correct = group_mean(lengths64, group_ids, mask=is_correct)  # NaN without a correct one
    has_mean = mean_correct > 0  # False for NaN
    ratio = torch.where(has_mean, lengths64 / torch.where(has_mean, mean_correct, 1.0), torch.ones_like(lengths64))
    bonus = (1 - ratio).clamp(0.0, 1.0)
    return (accuracy * (1 + bonus * accuracy)).to(torch.float32)


def gr3_constraint_rate(correct: Tensor, lengths: Tensor, group_ids: Tensor, alpha: float = 0.33) -> float:
    """GR3's constraint satisfaction rate (CSR, Li et al. 2026, section 3.3): the share of groups
    where a response with the group's maximum reward and its average length keeps a non-negative
    advantage, ``r_max / (1 + alpha) >= mean(rescaled rewards)`` (their Eq. 16).

    The paper calibrates ``alpha`` with it once, before training: the largest ``alpha`` whose
    CSR stays >= 99.9% on a short run, then fixed. Counted over the groups with a correct and a
    wrong response (an unsolved group satisfies it trivially; fully solved groups are filtered
    out in the paper, see :func:`gr3_reward`); NaN when there is none.
    correct, lengths, group_ids: ``[B]``. Returns a Python float in [0, 1].
    """
    is_correct, _ = _check_sequence_inputs(correct, lengths, group_ids)
    accuracy = is_correct.to(torch.float64)
    rescaled = gr3_reward(correct, lengths, group_ids, alpha, shape_solved=True).to(torch.float64)
    pass_rate = group_mean(accuracy, group_ids)
    mixed = (pass_rate > 0) & (pass_rate < 1)
    if not bool(mixed.any()):
        return float("nan")
    holds = group_max(accuracy, group_ids) / (1 + alpha) >= group_mean(rescaled, group_ids) - 1e-12
    weight = 1.0 / group_size(group_ids).to(torch.float64)  # each group counts once
    return float((weight * (holds & mixed)).sum() / (weight * mixed).sum())


@register_reward("gr3")
def gr3_reward(
    correct: Tensor, lengths: Tensor, group_ids: Tensor, alpha: float = 0.33, shape_solved: bool = False
) -> Tensor:
    """Group Relative Reward Rescaling (GR3, Li et al. 2026, arXiv 2603.10535, Eq. 6):
    ``c / (1 + alpha * n / mean_n)``.

    Multiplicative: the length factor scales the task reward, so a wrong response (reward 0)
    cannot gain by being short. Group-relative: ``mean_n`` is the mean length of the whole
    group (every response), so the budget follows the prompt's difficulty; a group whose
    responses are all empty uses ``n / mean_n = 1``. ``alpha`` is one fixed coefficient (0.33,
    the paper's value for math and code); the paper's advantage-aware calibration chooses it
    before training with :func:`gr3_constraint_rate`, which the GR3 method logs as
    ``gr3_csr``. A fully solved group cannot satisfy that constraint when its lengths differ,
    and the paper filters such groups out online; ``shape_solved=False`` (the default) keeps
    their rewards at 1, so their advantages are 0 (and DAPO's ``dynamic_sampling`` drops them,
    as the paper's filter does). The estimator's baseline is the mean of the rescaled rewards
    (prime-rl PR 2040: a raw-reward baseline gave long correct responses negative advantages).
    Returns ``float32 [B]``.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    accuracy = is_correct.to(torch.float64)
    mean_length = group_mean(lengths64, group_ids)
    relative = torch.where(mean_length > 0, lengths64 / mean_length.clamp(min=1e-12), torch.ones_like(lengths64))
    rescaled = accuracy / (1 + alpha * relative)
    if not shape_solved:
        rescaled = torch.where(group_min(accuracy, group_ids) == 1, accuracy, rescaled)
    return rescaled.to(torch.float32)


@register_reward("lead")
def lead_reward(
    correct: Tensor,
    lengths: Tensor,
    group_ids: Tensor,
    alpha: float = 0.05,
    incorrect_reward: float = -1.0,
    eps: float = 1e-6,
) -> Tensor:
    """GRPO-LEAD's length-dependent accuracy reward with its explicit penalty for wrong answers
    (Zhang & Zuo 2025, arXiv 2504.09696): ``exp(-alpha * z)`` if correct, else ``incorrect_reward``.

    ``z = (n - mu) / (sigma + eps)`` with ``mu``, ``sigma`` the mean and sample (Bessel)
    standard deviation of the lengths of the group's *correct* responses, as the authors' code
    computes them; a group with one correct response, or equal correct lengths, gives z = 0
    (reward 1). ``alpha`` 0.05 and ``eps`` 1e-6 are the authors' code's (TRL's proposal, issue
    6221, uses 0.5); ``incorrect_reward`` -1 is the paper's penalty (0 gives the reward without
    it). Not included: the authors' code's gate (no shaping in a group whose three shortest
    responses average <= 4000 tokens, which would switch it off under a small response cap), its
    penalty tiers (0 for an unparseable answer, -2 for repetition) and the paper's
    difficulty-aware advantage reweighting. Returns ``float32 [B]``.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    mean_correct = torch.nan_to_num(group_mean(lengths64, group_ids, mask=is_correct))
    std_correct = group_std(lengths64, group_ids, unbiased=True, mask=is_correct)
    z = (lengths64 - mean_correct) / (std_correct + eps)
    reward = torch.where(is_correct, torch.exp(-alpha * z), torch.full_like(z, float(incorrect_reward)))
    return reward.to(torch.float32)


@register_reward("quantile_penalty")
def quantile_penalty_reward(
    correct: Tensor,
    lengths: Tensor,
    group_ids: Tensor,
    quantile: float = 0.5,
    relative_slack: float = 0.25,
    absolute_slack: float = 0.0,
    beta: float = 0.5,
    cap: float = 0.5,
    floor: float = 0.5,
    min_successes: int = 2,
) -> Tensor:
    """The Search-R1 group-relative length penalty (miles PR 1573).

    In a group with at least ``min_successes`` correct responses: ``ref`` = the ``quantile`` of
    their lengths (``numpy.quantile`` linear interpolation), ``allowed = ref * (1 +
    relative_slack) + absolute_slack``; a correct response longer than ``allowed`` loses
    ``penalty = min(cap, beta * (n - allowed) / ref)`` and its reward becomes
    ``max(min(floor, c), c - penalty)``, so a penalised success never drops below ``floor``. Wrong
    responses, and every response of a group with fewer successes (or ``ref = 0``), keep ``c``.
    The PR names these knobs without fixing values in its description; the defaults here are
    thinklean's (median reference, 25% slack, at most 0.5 off, never below 0.5).
    Returns ``float32 [B]``.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    for name, value in (("beta", beta), ("cap", cap), ("relative_slack", relative_slack),
                        ("absolute_slack", absolute_slack)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    accuracy = is_correct.to(torch.float64)
    inverse, num_groups = group_index(group_ids)
    successes = group_sum(accuracy, inverse, num_groups)[inverse]
    reference = group_quantile(lengths64, group_ids, quantile, mask=is_correct)  # NaN without a success
    eligible = is_correct & (successes >= min_successes) & (reference > 0)
    safe_reference = torch.where(eligible, reference, 1.0)
    excess = lengths64 - (safe_reference * (1 + relative_slack) + absolute_slack)
    penalty = torch.where(eligible & (excess > 0), (beta * excess / safe_reference).clamp(max=cap), 0.0)
    return torch.maximum(accuracy.clamp(max=floor), accuracy - penalty).to(torch.float32)


@register_reward("shortest_bonus")
def shortest_bonus_reward(correct: Tensor, lengths: Tensor, group_ids: Tensor, bonus: float = 0.5) -> Tensor:
    """prime-rl's shortest-correct bonus (PR 638, merged as ``length_bonus`` in PR 710):
    ``c + bonus`` for the shortest response(s) of a group whose responses are all correct.

    Ties for the shortest all get the bonus; a group with one wrong response gets none (so a
    group of one correct response gets it, which moves no advantage). ``bonus`` 0.5: the PR's
    default. Returns ``float32 [B]``.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    accuracy = is_correct.to(torch.float64)
    all_correct = group_min(accuracy, group_ids) == 1
    shortest = lengths64 == group_min(lengths64, group_ids)
    return (accuracy + bonus * (all_correct & shortest).to(torch.float64)).to(torch.float32)


@register_advantage("opo")
def opo_advantages(rewards: Tensor, group_ids: Tensor, response_mask: Tensor, lengths: Tensor) -> Tensor:
    """OPO's length-weighted baseline (Hao et al. 2025, "On-Policy RL with Optimal Reward
    Baseline"; prime-rl's ``length_weighted_baseline``, PR 2702): per group
    ``b = sum(n_i r_i) / sum(n_i)`` and ``A_i = r_i - b`` on every response token.

    The baseline that minimises the gradient variance of a token-summed loss when the gradient
    norm grows with length; no std division. A group whose lengths sum to 0 uses the plain mean;
    a group of one gets 0.

    Args:
        rewards: ``[B]``; group_ids: ``[B]``; response_mask: ``[B, T]``; lengths: ``[B]`` tokens.
    Returns: ``float32 [B, T]``, 0 outside the mask.
    """
    _check_batch(rewards, group_ids, response_mask)
    if lengths.shape != rewards.shape:
        raise ValueError(f"lengths must have shape {tuple(rewards.shape)}, got {tuple(lengths.shape)}")
    if bool((lengths < 0).any()):
        raise ValueError("lengths must be >= 0 (token counts)")
    inverse, num_groups = group_index(group_ids)
    r64, n64 = rewards.to(torch.float64), lengths.to(torch.float64)
    length_sums = group_sum(n64, inverse, num_groups)
    weighted = group_sum(n64 * r64, inverse, num_groups) / length_sums.clamp(min=1e-12)
    baseline = torch.where(length_sums[inverse] > 0, weighted[inverse], group_mean(r64, group_ids))
    return _broadcast(r64 - baseline, response_mask)
