"""Advantage estimators: sequence rewards -> per-token advantages ``float32 [B, T]``.

All estimators take ``group_ids: LongTensor[B]`` (arbitrary, unsorted ids; unequal group
sizes) and ``response_mask: [B, T]`` (1 real response token, 0 padding) and return advantages
that are exactly 0 outside the mask. Group statistics are computed in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

from thinklean.core.masked import group_index, group_sum
from thinklean.core.registry import register_advantage

__all__ = [
    "group_normalised_scores",
    "grpo_advantages",
    "drgrpo_advantages",
    "rloo_advantages",
    "sequence_l2_normalise",
    "iapo_advantages",
    "hgpo_advantages",
]


def _check_batch(rewards: Tensor, group_ids: Tensor, response_mask: Tensor) -> None:
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must be 1-D [B] of equal shape, got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    if response_mask.dim() != 2 or response_mask.shape[0] != rewards.shape[0]:
        raise ValueError(f"response_mask must be [B={rewards.shape[0]}, T], got {tuple(response_mask.shape)}")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError("rewards contain NaN or inf")


def _broadcast(scores: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` -> ``float32 [B, T]``: the score on every valid token, 0 elsewhere."""
    expanded = scores.to(torch.float32)[:, None].expand(mask.shape)
    return torch.where(mask.bool(), expanded, torch.zeros((), dtype=torch.float32, device=scores.device))


def group_normalised_scores(values: Tensor, group_ids: Tensor, norm_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO score per sample: ``(v - group mean) / (group std + eps)``, float64 ``[B]``.

    std is unbiased (Bessel). ``norm_by_std=False`` drops the division (Dr.GRPO). A group of
    one sample, or whose values are all equal, gets exactly 0.
    """
    inverse, num_groups = group_index(group_ids)
    v64 = values.to(torch.float64)
    counts = group_sum(torch.ones_like(v64), inverse, num_groups)
    means = group_sum(v64, inverse, num_groups) / counts
    centred = v64 - means[inverse]
    if norm_by_std:
        squares = group_sum(centred**2, inverse, num_groups)
        std = (squares / (counts - 1).clamp(min=1)).sqrt()
        centred = centred / (std[inverse] + eps)
    lowest = torch.full_like(counts, float("inf")).scatter_reduce(0, inverse, v64, reduce="amin")
    highest = torch.full_like(counts, float("-inf")).scatter_reduce(0, inverse, v64, reduce="amax")
    constant = (highest == lowest)[inverse]  # also covers groups of one
    return torch.where(constant, torch.zeros_like(centred), centred)


@register_advantage("grpo")
def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, response_mask: Tensor, norm_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO: per group ``(r - mean) / (std_unbiased + eps)`` broadcast over the response tokens.

    Args:
        rewards: ``[B]`` float sequence rewards.
        group_ids: ``[B]`` integer ids.
        response_mask: ``[B, T]``.
        norm_by_std: False gives Dr.GRPO's ``r - mean``.
    Returns: ``float32 [B, T]``; a group of one (or with all-equal rewards) gets 0.
    """
    _check_batch(rewards, group_ids, response_mask)
    return _broadcast(group_normalised_scores(rewards, group_ids, norm_by_std, eps), response_mask)


@register_advantage("drgrpo")
def drgrpo_advantages(rewards: Tensor, group_ids: Tensor, response_mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Dr.GRPO: ``r - group mean`` (no std division), ``float32 [B, T]``. Pair with the
    ``seq-mean-token-sum-norm`` loss aggregation."""
    return grpo_advantages(rewards, group_ids, response_mask, norm_by_std=False, eps=eps)


@register_advantage("rloo")
def rloo_advantages(rewards: Tensor, group_ids: Tensor, response_mask: Tensor) -> Tensor:
    """RLOO: ``r_i - mean of the other rewards of its group`` = ``n/(n-1) (r_i - mean)``.

    Args / shapes as :func:`grpo_advantages`. A group of one gets 0. ``float32 [B, T]``.
    """
    _check_batch(rewards, group_ids, response_mask)
    inverse, num_groups = group_index(group_ids)
    r64 = rewards.to(torch.float64)
    counts = group_sum(torch.ones_like(r64), inverse, num_groups)
    sums = group_sum(r64, inverse, num_groups)
    n = counts[inverse]
    others_mean = (sums[inverse] - r64) / (n - 1).clamp(min=1)
    scores = torch.where(n > 1, r64 - others_mean, torch.zeros_like(r64))
    return _broadcast(scores, response_mask)


def sequence_l2_normalise(values: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Per row of ``[B, T]``: centre over the masked tokens, then divide by the L2 norm of the
    centred masked values (+ eps). Equivalent to z-scoring then L2-normalising.

    Rows with one valid token, none, or all-equal valid values give exactly 0 (no NaN).
    Returns float64 ``[B, T]``, 0 outside ``mask``. Values outside the mask are ignored.
    """
    keep = mask.bool()
    zero = torch.zeros((), dtype=torch.float64, device=values.device)
    v64 = torch.where(keep, values.to(torch.float64), zero)
    if not bool(torch.isfinite(v64).all()):
        raise ValueError("token values contain NaN or inf at valid (masked-in) positions")
    count = keep.sum(dim=1, keepdim=True).to(torch.float64)
    mean = v64.sum(dim=1, keepdim=True) / count.clamp(min=1)
    centred = torch.where(keep, v64 - mean, zero)
    norm = centred.pow(2).sum(dim=1, keepdim=True).sqrt()
    highest = torch.where(keep, v64, torch.full_like(v64, float("-inf"))).amax(dim=1, keepdim=True)
    lowest = torch.where(keep, v64, torch.full_like(v64, float("inf"))).amin(dim=1, keepdim=True)
    varies = highest > lowest  # False for empty, single-token and constant rows
    return torch.where(varies & keep, centred / (norm + eps), zero)


@register_advantage("iapo")
def iapo_advantages(
    rewards: Tensor,
    correct: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    info_gain: Tensor,
    token_entropy: Tensor,
    w_s: float = 1e-2,
    w_c: float = 1e-2,
    eps: float = 1e-6,
    token_mask: Tensor | None = None,
) -> Tensor:
    """IAPO token advantages (iapo.md, "Advantage").

    ``A[i, t] = grpo(r)_i + w_s * s~[i, t] - sigma_i * w_c * h~[i, t]`` where ``s~``/``h~`` are
    ``info_gain``/``token_entropy`` centred and L2-normalised per sequence over its token-mask
    tokens (:func:`sequence_l2_normalise`; padding never enters a statistic), and
    ``sigma_i = +1`` if correct else -1. The token terms apply only where ``token_mask``.

    Args:
        rewards: ``[B]`` sequence rewards (format + correctness).
        correct: ``[B]`` bool or 0/1.
        group_ids: ``[B]`` integer ids.
        response_mask: ``[B, T]``.
        info_gain: ``[B, T]`` smoothed answer-entropy drop ``s_t`` (nats).
        token_entropy: ``[B, T]`` policy next-token entropy ``h_t`` (nats, detached).
        token_mask: ``[B, T]`` where token terms are normalised and applied; default
            ``response_mask``; intersected with ``response_mask``.
    Returns: ``float32 [B, T]``, 0 outside ``response_mask``.
    """
    _check_batch(rewards, group_ids, response_mask)
    for name, tensor in (("info_gain", info_gain), ("token_entropy", token_entropy)):
        if tensor.shape != response_mask.shape:
            raise ValueError(
                f"{name} must have the shape of response_mask {tuple(response_mask.shape)}, got {tuple(tensor.shape)}"
            )
    if correct.shape != rewards.shape:
        raise ValueError(f"correct must have shape {tuple(rewards.shape)}, got {tuple(correct.shape)}")
    valid = response_mask.bool()
    if token_mask is None:
        token_valid = valid
    elif token_mask.shape != response_mask.shape:
        raise ValueError(
            f"token_mask must have the shape of response_mask {tuple(response_mask.shape)}, got {tuple(token_mask.shape)}"
        )
    else:
        token_valid = token_mask.bool() & valid
    sequence_score = group_normalised_scores(rewards, group_ids, norm_by_std=True, eps=eps)
    info_term = sequence_l2_normalise(info_gain, token_valid, eps)
    confidence_term = sequence_l2_normalise(token_entropy, token_valid, eps)
    sign = torch.where(correct.bool(), 1.0, -1.0).to(torch.float64)[:, None]
    advantages = sequence_score[:, None] + w_s * info_term - sign * w_c * confidence_term
    return torch.where(valid, advantages, torch.zeros_like(advantages)).to(torch.float32)


@register_advantage("hgpo")
def hgpo_advantages(
    rewards: Tensor,
    lengths: Tensor,
    modes: Tensor,
    group_ids: Tensor,
    response_mask: Tensor,
    mode_token_mask: Tensor,
    alpha: float = 1.0,
    delta: float = 0.2,
    eps: float = 1e-6,
    success_threshold: float | None = 0.0,
) -> Tensor:
    """HGPO advantages (lhrm.md, "Stage 2 — HGPO").

    Per group (prompt): winning mode = think iff ``mean_think > mean_no_think + delta``.
    ``r_inter = 1`` for rollouts in the winning mode, else 0. ``r_intra = 1`` for the best
    rollout of its (group, mode) half — highest reward, ties broken by shorter length, then
    lower batch index — else 0. The length tie-break applies where the best reward is above
    ``success_threshold`` (a success: the cheaper of equally good answers wins); at or below it
    every rollout tied at the half's best reward gets ``r_intra = 1`` (the paper's indicator of
    the best), so a half that failed throughout teaches nothing rather than rewarding its
    shortest failure. ``None``: the tie-break everywhere (lhrm.md as written).
    ``A[i, t] = norm_mode(r_intra)_i * response_mask + alpha * mode_token_mask *
    norm_all(r_inter)_i`` with both norms as in GRPO (unbiased std + eps; one sample or
    all-equal values -> 0). A group where only one mode was sampled has no winner to learn:
    its ``r_inter`` is constant, so its inter term is 0.

    Args:
        rewards: ``[B]`` task rewards; lengths: ``[B]`` tokens; modes: ``[B]`` 1 think, 0 no-think.
        group_ids: ``[B]``; response_mask, mode_token_mask: ``[B, T]`` (the tag token; it is
            intersected with response_mask).
    Returns: ``float32 [B, T]``.
    """
    _check_batch(rewards, group_ids, response_mask)
    if lengths.shape != rewards.shape or modes.shape != rewards.shape:
        raise ValueError(f"lengths and modes must have shape {tuple(rewards.shape)}")
    if mode_token_mask.shape != response_mask.shape:
        raise ValueError(f"mode_token_mask must have the shape of response_mask {tuple(response_mask.shape)}")
    if not bool(((modes == 0) | (modes == 1)).all()):
        raise ValueError("modes must contain only 1 (think) and 0 (no-think)")
    inverse, num_groups = group_index(group_ids)
    modes = modes.long()
    r64 = rewards.to(torch.float64)
    is_think = modes == 1

    think_count = group_sum(is_think.to(torch.float64), inverse, num_groups)
    no_count = group_sum((~is_think).to(torch.float64), inverse, num_groups)
    think_mean = group_sum(torch.where(is_think, r64, 0.0), inverse, num_groups) / think_count.clamp(min=1)
    no_mean = group_sum(torch.where(is_think, 0.0, r64), inverse, num_groups) / no_count.clamp(min=1)
    both_modes = (think_count > 0) & (no_count > 0)
    think_wins = (think_mean > no_mean + delta)[inverse]
    in_winner = torch.where(think_wins, is_think, ~is_think)
    r_inter = torch.where(both_modes[inverse], in_winner, torch.ones_like(in_winner)).to(torch.float64)

    # Best of each (group, mode) half: sort by length, then reward (desc), then half, each
    # sort stable, so the first entry of a half wins ties by length, then by batch index.
    half_key = inverse * 2 + modes
    order = torch.sort(lengths.to(torch.float64), stable=True).indices
    order = order[torch.sort(-r64[order], stable=True).indices]
    order = order[torch.sort(half_key[order], stable=True).indices]
    sorted_keys = half_key[order]
    is_first = torch.ones_like(sorted_keys, dtype=torch.bool)
    is_first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    winners = order[is_first]
    r_intra = torch.zeros_like(r64)
    r_intra[winners] = 1.0
    if success_threshold is not None:
        half_best = r64.new_zeros(2 * num_groups)
        half_best[half_key[winners]] = r64[winners]
        row_best = half_best[half_key]
        r_intra = torch.where(row_best <= success_threshold, (r64 == row_best).to(torch.float64), r_intra)

    intra_score = group_normalised_scores(r_intra, half_key, norm_by_std=True, eps=eps)
    inter_score = group_normalised_scores(r_inter, group_ids, norm_by_std=True, eps=eps)
    valid = response_mask.bool()
    tag = mode_token_mask.bool() & valid
    advantages = intra_score[:, None] + alpha * tag.to(torch.float64) * inter_score[:, None]
    return torch.where(valid, advantages, torch.zeros_like(advantages)).to(torch.float32)
