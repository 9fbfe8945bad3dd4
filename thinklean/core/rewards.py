"""Sequence-level rewards: correctness and length shaping (HMPO and the length baselines).

Every registered reward has the call signature ``fn(correct, lengths, group_ids, **config)``
so the trainer swaps them by name (see :mod:`thinklean.core.registry`):

- ``correct``: ``[B]`` bool or 0/1 numbers;
- ``lengths``: ``[B]`` response lengths in tokens (everything generated, no padding), >= 0;
- ``group_ids``: ``[B]`` integer ids, responses to the same prompt share one (any order);
- returns ``float32 [B]``: the *total* reward, correctness included.

Formulas: hmpo.md and baselines-and-eval.md. Arithmetic is done in float64 so boundary cases
(a length exactly at a budget) are exact, then cast to float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from thinklean.core.masked import group_max, group_mean, group_median, group_min, group_std
from thinklean.core.registry import register_reward

__all__ = [
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
]


def _check_sequence_inputs(correct: Tensor, lengths: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Validate the common inputs; return ``(correct as bool [B], lengths as float64 [B])``."""
    for name, tensor in (("correct", correct), ("lengths", lengths), ("group_ids", group_ids)):
        if tensor.dim() != 1:
            raise ValueError(f"{name} must be a 1-D [B] tensor, got shape {tuple(tensor.shape)}")
    if not (correct.shape == lengths.shape == group_ids.shape):
        raise ValueError(
            f"correct {tuple(correct.shape)}, lengths {tuple(lengths.shape)} and group_ids "
            f"{tuple(group_ids.shape)} must have the same shape [B]"
        )
    if correct.dtype != torch.bool and not bool(((correct == 0) | (correct == 1)).all()):
        raise ValueError("correct must be bool or contain only 0 and 1")
    if bool((lengths < 0).any()):
        raise ValueError("lengths must be >= 0 (token counts)")
    return correct.bool(), lengths.to(torch.float64)


def _check_positive(name: str, value: float) -> None:
    if not (value > 0):
        raise ValueError(f"{name} must be > 0, got {value!r}")


@register_reward("correctness")
def correctness_reward(correct: Tensor, lengths: Tensor, group_ids: Tensor) -> Tensor:
    """1.0 for a correct response, 0.0 otherwise. Returns ``float32 [B]``."""
    is_correct, _ = _check_sequence_inputs(correct, lengths, group_ids)
    return is_correct.to(torch.float32)


# ----------------------------------------------------------------------------------- HMPO


def hmpo_budgets(
    correct: Tensor, lengths: Tensor, group_ids: Tensor, budget_stat: str = "median"
) -> tuple[Tensor, Tensor]:
    """HMPO's adaptive per-group budget: a statistic of the group's *correct* lengths.

    Args:
        correct: ``[B]`` bool or 0/1 (see the module docstring).
        lengths: ``[B]`` response lengths in tokens.
        group_ids: ``[B]`` group (prompt) ids.
        budget_stat: ``"median"`` (the paper; ``numpy.median`` semantics, even count -> mean
            of the two middle values) or ``"mean"`` (thinklean extra).
    Returns:
        ``budget``: ``float32 [B]`` in tokens, the budget of each sample's group; NaN where
            the group has no correct response.
        ``has_budget``: ``bool [B]``, True where the group has at least one correct response.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    budget = _group_budget(is_correct, lengths64, group_ids, budget_stat)
    return budget.to(torch.float32), ~torch.isnan(budget)


def _group_budget(is_correct: Tensor, lengths64: Tensor, group_ids: Tensor, budget_stat: str) -> Tensor:
    """float64 [B] budget per sample's group; NaN where the group has no correct response."""
    if budget_stat == "median":
        return group_median(lengths64, group_ids, mask=is_correct)
    if budget_stat == "mean":
        return group_mean(lengths64, group_ids, mask=is_correct)
    raise ValueError(f"budget_stat must be 'median' or 'mean', got {budget_stat!r}")


def _cosine_token_reward(lengths64: Tensor, budget64: Tensor, beta: float, lam: float) -> Tensor:
    """HMPO ``R_tok``: 0 above the budget, else ``clip(beta*cos(pi*n/(2b)) + lam, 0, 1)``."""
    # A budget of 0 only admits n = 0, whose phase is 0 (avoids 0/0).
    phase = torch.where(budget64 > 0, lengths64 / (2 * budget64.clamp(min=1e-12)), torch.zeros_like(lengths64))
    shaped = (beta * torch.cos(math.pi * phase) + lam).clamp(0.0, 1.0)
    within = lengths64 <= budget64  # False for a NaN budget
    return torch.where(within, shaped, torch.zeros_like(shaped))


@register_reward("hmpo")
def hmpo_reward(
    correct: Tensor,
    lengths: Tensor,
    group_ids: Tensor,
    beta: float = 1.0,
    lam: float = 0.8,
    combine: str = "multiply",
    budget: float | None = None,
    budget_stat: str = "median",
) -> Tensor:
    """HMPO reward (hmpo.md): correctness times a cosine-decay token reward under a budget.

    ``b_g`` = median length of the correct responses of the group (``budget_stat="mean"``:
    their mean; ``budget=<number>``: that constant for every group). ``R_tok = 0`` if
    ``n > b_g`` else ``clip(beta * cos(pi * n / (2 b_g)) + lam, 0, 1)``.
    ``combine="multiply"``: ``R = R_acc * R_tok``; ``"add"``: ``R = R_acc + R_acc * R_tok``.
    A wrong response gets 0; so does every response of a group with no correct one.

    Args:
        correct: ``[B]`` bool or 0/1.
        lengths: ``[B]`` response lengths in tokens.
        group_ids: ``[B]`` group (prompt) ids.
    Returns: ``float32 [B]``.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    if combine not in ("multiply", "add"):
        raise ValueError(f"combine must be 'multiply' or 'add', got {combine!r}")
    if budget is None:
        budget64 = _group_budget(is_correct, lengths64, group_ids, budget_stat)
    else:
        _check_positive("budget", budget)
        budget64 = torch.full_like(lengths64, float(budget))
    token_reward = _cosine_token_reward(lengths64, budget64, beta, lam)
    accuracy = is_correct.to(torch.float64)
    total = accuracy * token_reward if combine == "multiply" else accuracy + accuracy * token_reward
    return total.to(torch.float32)


# ------------------------------------------------------------------------- length baselines


@register_reward("kimi")
def kimi_reward(correct: Tensor, lengths: Tensor, group_ids: Tensor, weight: float = 1.0) -> Tensor:
    """Kimi k1.5 length reward added to correctness.

    In a group, ``lambda_i = 0.5 - (n_i - n_min) / (n_max - n_min)`` (0 when all lengths are
    equal, including a group of one); the length reward is ``lambda_i`` if correct else
    ``min(0, lambda_i)``. Returns ``float32 [B] = 1[correct] + weight * length_reward``.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    shortest = group_min(lengths64, group_ids)
    longest = group_max(lengths64, group_ids)
    spread = longest - shortest
    lam = torch.where(spread > 0, 0.5 - (lengths64 - shortest) / spread.clamp(min=1e-12), torch.zeros_like(spread))
    length_reward = torch.where(is_correct, lam, lam.clamp(max=0.0))
    return (is_correct.to(torch.float64) + weight * length_reward).to(torch.float32)


@register_reward("l1")
def l1_reward(
    correct: Tensor, lengths: Tensor, group_ids: Tensor, targets: Tensor | float, alpha: float = 0.0003
) -> Tensor:
    """L1 / LCPO-exact: ``1[correct] - alpha * |target - n|``.

    Args:
        targets: ``[B]`` target lengths in tokens (the "Think for N tokens." of each prompt),
            or one number for all.
    Returns: ``float32 [B]``.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    target64 = torch.as_tensor(targets, dtype=torch.float64, device=lengths.device)
    if target64.dim() != 0 and target64.shape != lengths.shape:
        raise ValueError(f"targets must be a number or have shape {tuple(lengths.shape)}, got {tuple(target64.shape)}")
    return (is_correct.to(torch.float64) - alpha * (target64 - lengths64).abs()).to(torch.float32)


@register_reward("thinkprune")
def thinkprune_reward(correct: Tensor, lengths: Tensor, group_ids: Tensor, budget: int) -> Tensor:
    """ThinkPrune hard budget: 1 if correct and ``n <= budget`` else 0. ``float32 [B]``.

    Truncating generation at the budget is the rollout's job; this only scores. Use
    :func:`thinkprune_budget` for a schedule over training steps.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    _check_positive("budget", budget)
    return (is_correct & (lengths64 <= budget)).to(torch.float32)


def thinkprune_budget(step: int, schedule: list[tuple[int, int]]) -> int:
    """Piecewise-constant budget schedule, e.g. ``[(0, 4096), (200, 3072), (400, 2048)]``.

    Entry ``(start_step, budget)`` applies from ``start_step`` on, until the next entry; steps
    before the first entry use the first budget. Start steps must strictly increase and
    budgets be positive. Returns the budget (tokens) at ``step``.
    """
    if not schedule:
        raise ValueError("schedule must contain at least one (start_step, budget) entry")
    starts = [int(start) for start, _ in schedule]
    if any(later <= earlier for earlier, later in zip(starts, starts[1:])):
        raise ValueError(f"schedule start steps must strictly increase, got {starts}")
    for _, entry_budget in schedule:
        _check_positive("schedule budget", entry_budget)
    current = schedule[0][1]
    for start, entry_budget in schedule:
        if step >= start:
            current = entry_budget
    return int(current)


@register_reward("shorterbetter")
def shorterbetter_reward(
    correct: Tensor, lengths: Tensor, group_ids: Tensor, alpha: float = 1.0, beta: float = 0.001
) -> Tensor:
    """ShorterBetter: ``alpha * 1[correct] - beta * |n - l*|``.

    ``l*`` = shortest correct length of the group, or the group's mean length (all responses)
    when none is correct. Returns ``float32 [B]``.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    shortest_correct = group_min(lengths64, group_ids, mask=is_correct)
    reference = torch.where(torch.isnan(shortest_correct), group_mean(lengths64, group_ids), shortest_correct)
    return (alpha * is_correct.to(torch.float64) - beta * (lengths64 - reference).abs()).to(torch.float32)


@register_reward("cosine")
def cosine_reward(
    correct: Tensor,
    lengths: Tensor,
    group_ids: Tensor,
    max_len: int,
    r0_correct: float = 2.0,
    rL_correct: float = 1.0,
    r0_wrong: float = -10.0,
    rL_wrong: float = 0.0,
    exceed: float = -10.0,
) -> Tensor:
    """Cosine length-scaled reward (Yeo et al.).

    ``r(n) = r_L + 0.5 (r_0 - r_L)(1 + cos(pi n / L))`` with ``(r_0, r_L)`` of the correct or
    wrong case, and ``exceed`` when ``n > max_len`` (a response of exactly ``max_len`` tokens
    gets ``r_L``). The authors apply the exceed value a small margin below the generation cap;
    to penalise truncated responses pass ``max_len`` a little below the cap. ``float32 [B]``.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    _check_positive("max_len", max_len)
    r0 = torch.where(is_correct, torch.full_like(lengths64, r0_correct), torch.full_like(lengths64, r0_wrong))
    rL = torch.where(is_correct, torch.full_like(lengths64, rL_correct), torch.full_like(lengths64, rL_wrong))
    shaped = rL + 0.5 * (r0 - rL) * (1 + torch.cos(math.pi * lengths64 / max_len))
    return torch.where(lengths64 > max_len, torch.full_like(shaped, exceed), shaped).to(torch.float32)


@register_reward("efficiency")
def efficiency_reward(
    correct: Tensor, lengths: Tensor, group_ids: Tensor, alpha: float = 0.2, eps: float = 1e-6
) -> Tensor:
    """Arora & Zanette: ``1 - alpha * sigmoid((n - mean_c) / (std_c + eps))`` if correct, else 0.

    ``mean_c``, ``std_c``: mean and population (biased) std of the lengths of the group's
    correct responses. ``eps`` keeps the z-score finite: a group with one correct response,
    or with all correct lengths equal, has ``std_c = 0`` and z = 0, so those responses get
    ``1 - alpha / 2``. Returns ``float32 [B]``.
    """
    is_correct, lengths64 = _check_sequence_inputs(correct, lengths, group_ids)
    mean_correct = group_mean(lengths64, group_ids, mask=is_correct)
    std_correct = group_std(lengths64, group_ids, unbiased=False, mask=is_correct)
    z = (lengths64 - torch.nan_to_num(mean_correct)) / (std_correct + eps)
    reward = 1.0 - alpha * torch.sigmoid(z)
    return torch.where(is_correct, reward, torch.zeros_like(reward)).to(torch.float32)


def overlong_penalty(lengths: Tensor, max_len: int, cache: int) -> Tensor:
    """DAPO soft overlong penalty. ``float32 [B]``, in [-1, 0].

    With ``L = max_len`` and ``c = cache``: 0 if ``n <= L - c``; ``((L - c) - n) / c`` if
    ``L - c < n <= L``; -1 if ``n > L``. ``cache = 0`` gives a hard step at ``L``.
    """
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be a 1-D [B] tensor, got shape {tuple(lengths.shape)}")
    _check_positive("max_len", max_len)
    if not (0 <= cache <= max_len):
        raise ValueError(f"cache must be in [0, max_len={max_len}], got {cache!r}")
    lengths64 = lengths.to(torch.float64)
    free_len = max_len - cache
    ramp = (free_len - lengths64) / max(cache, 1)
    penalty = torch.where(lengths64 <= free_len, torch.zeros_like(lengths64), ramp)
    penalty = torch.where(lengths64 > max_len, torch.full_like(lengths64, -1.0), penalty)
    return penalty.to(torch.float32)


@register_reward("overlong")
def overlong_reward(correct: Tensor, lengths: Tensor, group_ids: Tensor, max_len: int, cache: int) -> Tensor:
    """DAPO reward: ``1[correct] + overlong_penalty(n)`` (the penalty applies to every response)."""
    is_correct, _ = _check_sequence_inputs(correct, lengths, group_ids)
    return is_correct.to(torch.float32) + overlong_penalty(lengths, max_len, cache)
