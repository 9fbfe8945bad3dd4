"""Masked reductions over padded ``[B, T]`` tensors and statistics by group id.

Conventions (architecture.md, "Core conventions"): ``mask`` is 1 for real tokens and 0 for
padding; ``group_ids`` is a ``LongTensor[B]`` whose ids need not be sorted, contiguous or of
equal multiplicity. Values under a 0 in the mask never enter a statistic, even when they are
NaN or inf.

Group statistics are computed in float64 and returned broadcast back to ``[B]`` (one value
per sample, the statistic of the sample's group), in ``values``' dtype when it is floating and
float32 otherwise. They use ``scatter_add``; on CUDA bitwise reproducibility of those sums
follows ``torch.use_deterministic_algorithms``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "group_index",
    "group_sum",
    "group_size",
    "group_mean",
    "group_std",
    "group_min",
    "group_max",
    "group_median",
    "group_quantile",
]

DimArg = int | tuple[int, ...] | None


def _float_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def _check_same_shape(x: Tensor, mask: Tensor) -> None:
    if x.shape != mask.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but mask has shape {tuple(mask.shape)}; they must match")


def masked_sum(x: Tensor, mask: Tensor, dim: DimArg = None) -> Tensor:
    """Sum of ``x`` over positions where ``mask`` is nonzero.

    Args:
        x: any shape, floating.
        mask: same shape as ``x``; bool or 0/1 numbers.
        dim: dimension(s) to reduce; ``None`` reduces everything to a 0-d tensor.
    Returns: ``x``'s dtype, the reduced shape. Masked-out entries (even NaN/inf) count as 0.
    """
    _check_same_shape(x, mask)
    kept = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: DimArg = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is nonzero.

    Args / shapes as :func:`masked_sum`. A slice with no valid position has mean 0 (not NaN),
    so fully padded rows are harmless.
    """
    total = masked_sum(x, mask, dim)
    count = masked_sum(mask.bool().to(total.dtype), mask, dim)
    return total / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of all valid entries of ``x`` (one number, 0-d tensor of ``x``'s dtype).

    ``unbiased`` applies Bessel's correction ``n / (n - 1)``. With fewer than 2 valid entries
    (unbiased) or none (biased) the variance is defined as 0, so callers never see NaN.
    """
    mean = masked_mean(x, mask)
    centred_sq = (x - mean) ** 2
    total = masked_sum(centred_sq, mask)
    count = mask.bool().sum().to(total.dtype)
    denominator = count - 1 if unbiased else count
    return torch.where(denominator > 0, total / denominator.clamp(min=1), torch.zeros_like(total))


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten ``x`` with the mean and unbiased variance of its valid entries.

    Returns ``(x - mean) / sqrt(var + eps)`` (plus ``mean`` back when ``shift_mean`` is False),
    same shape/dtype as ``x``; masked-out positions are set to 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros((), dtype=whitened.dtype, device=x.device))


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary group ids to dense indices.

    Args:
        group_ids: ``[B]`` integer ids (any order, gaps allowed).
    Returns: ``(inverse [B] int64 in [0, G), G)`` where equal ids share an index.
    """
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D [B], got shape {tuple(group_ids.shape)}")
    if group_ids.is_floating_point() or group_ids.is_complex():
        raise ValueError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    unique, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(unique.numel())


def _check_values(values: Tensor, group_ids: Tensor) -> None:
    if values.dim() != 1 or values.shape != group_ids.shape:
        raise ValueError(
            f"values must be 1-D with the shape of group_ids {tuple(group_ids.shape)}, got {tuple(values.shape)}"
        )


def group_sum(values: Tensor, inverse: Tensor, num_groups: int) -> Tensor:
    """Per-group sum ``[G]`` of a ``[B]`` tensor, in its dtype; ``inverse, num_groups`` as
    :func:`group_index` returns them."""
    out = torch.zeros(num_groups, dtype=values.dtype, device=values.device)
    return out.scatter_add(0, inverse, values)


def group_size(group_ids: Tensor) -> Tensor:
    """Number of samples in each sample's group.

    Args:
        group_ids: ``[B]`` integer ids.
    Returns: ``[B]`` int64.
    """
    inverse, num_groups = group_index(group_ids)
    counts = torch.bincount(inverse, minlength=num_groups)
    return counts[inverse]


def _selection(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones(values.shape, dtype=torch.bool, device=values.device)
    if mask.shape != values.shape:
        raise ValueError(f"mask must have shape {tuple(values.shape)}, got {tuple(mask.shape)}")
    return mask.bool()


def group_mean(values: Tensor, group_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``values`` over each sample's group, broadcast to ``[B]``.

    Args:
        values: ``[B]`` numbers (bool/int are promoted).
        group_ids: ``[B]`` integer ids.
        mask: optional ``[B]`` bool / 0-1 selecting which members count (e.g. only correct
            responses). A group with no selected member has mean NaN.
    """
    _check_values(values, group_ids)
    selected = _selection(values, mask)
    inverse, num_groups = group_index(group_ids)
    v64 = torch.where(selected, values.to(torch.float64), torch.zeros((), dtype=torch.float64, device=values.device))
    sums = group_sum(v64, inverse, num_groups)
    counts = group_sum(selected.to(torch.float64), inverse, num_groups)
    means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
    return means[inverse].to(_float_dtype(values))


def group_std(values: Tensor, group_ids: Tensor, unbiased: bool = True, mask: Tensor | None = None) -> Tensor:
    """Standard deviation of ``values`` over each sample's group, broadcast to ``[B]``.

    ``unbiased`` uses Bessel's correction (divide by ``n - 1``); a group of one sample then has
    std 0 (by definition here, not NaN). ``mask`` (optional ``[B]``) selects which members
    count; a group with too few selected members (< 2 unbiased, 0 biased) has std 0.
    Two-pass (centre first) for accuracy.
    """
    _check_values(values, group_ids)
    selected = _selection(values, mask)
    inverse, num_groups = group_index(group_ids)
    zero = torch.zeros((), dtype=torch.float64, device=values.device)
    v64 = torch.where(selected, values.to(torch.float64), zero)
    counts = group_sum(selected.to(torch.float64), inverse, num_groups)
    means = group_sum(v64, inverse, num_groups) / counts.clamp(min=1)
    centred = torch.where(selected, v64 - means[inverse], zero)
    squares = group_sum(centred**2, inverse, num_groups)
    denominator = counts - 1 if unbiased else counts
    var = torch.where(denominator > 0, squares / denominator.clamp(min=1), torch.zeros_like(squares))
    return var.sqrt()[inverse].to(_float_dtype(values))


def _group_extreme(values: Tensor, group_ids: Tensor, reduce: str, mask: Tensor | None) -> Tensor:
    _check_values(values, group_ids)
    selected = _selection(values, mask)
    inverse, num_groups = group_index(group_ids)
    v64 = values.to(torch.float64)
    out = torch.full((num_groups,), float("nan"), dtype=torch.float64, device=values.device)
    # Unselected members are routed to an extra dummy slot so they never reach a real group.
    target = torch.where(selected, inverse, torch.full_like(inverse, num_groups))
    out = torch.cat([out, out.new_full((1,), float("nan"))])
    out = out.scatter_reduce(0, target, v64, reduce=reduce, include_self=False)[:num_groups]
    return out[inverse].to(_float_dtype(values))


def group_min(values: Tensor, group_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Minimum of the selected ``values`` of each sample's group, broadcast to ``[B]``.

    ``mask`` (optional ``[B]``) selects which members count; no selected member -> NaN.
    """
    return _group_extreme(values, group_ids, "amin", mask)


def group_max(values: Tensor, group_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Maximum of the selected ``values`` of each sample's group, broadcast to ``[B]``.

    ``mask`` (optional ``[B]``) selects which members count; no selected member -> NaN.
    """
    return _group_extreme(values, group_ids, "amax", mask)


def _sorted_by_group(values: Tensor, group_ids: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(sorted float64 values [B], group start [G], selected count [G], inverse [B])``: every
    group is one contiguous block of ``sorted``, its ``count`` selected values first, ascending."""
    _check_values(values, group_ids)
    selected = _selection(values, mask)
    inverse, num_groups = group_index(group_ids)
    v64 = values.to(torch.float64)
    # Sort by (group, unselected-last, value) with two stable sorts.
    sort_key = torch.where(selected, v64, torch.full_like(v64, float("inf")))
    by_value = torch.sort(sort_key, stable=True).indices
    order = by_value[torch.sort(inverse[by_value], stable=True).indices]
    sizes = torch.bincount(inverse, minlength=num_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    counts = torch.bincount(inverse, weights=selected.to(torch.float64), minlength=num_groups).long()
    return v64[order], starts, counts, inverse


def group_median(values: Tensor, group_ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Median of the selected ``values`` of each sample's group, broadcast to ``[B]``.

    ``numpy.median`` semantics: with an even number of selected members the median is the
    mean of the two middle values.

    Args:
        values: ``[B]`` numbers (e.g. response lengths in tokens).
        group_ids: ``[B]`` integer ids.
        mask: optional ``[B]`` bool / 0-1; only selected members count (e.g. only correct
            responses). ``None`` selects everyone.
    Returns: ``[B]`` float; **NaN** for samples whose group has no selected member (test with
        ``torch.isnan`` or count the selected members yourself).
    """
    sorted_values, starts, counts, inverse = _sorted_by_group(values, group_ids, mask)
    low = starts + ((counts - 1).clamp(min=0) // 2)
    high = starts + counts // 2
    median = (sorted_values[low] + sorted_values[high]) / 2
    median = torch.where(counts > 0, median, torch.full_like(median, float("nan")))
    return median[inverse].to(_float_dtype(values))


def group_quantile(values: Tensor, group_ids: Tensor, q: float, mask: Tensor | None = None) -> Tensor:
    """The ``q``-quantile of the selected ``values`` of each sample's group, broadcast to ``[B]``.

    ``numpy.quantile`` "linear" semantics: with ``n`` sorted selected values ``v``, position
    ``p = q (n - 1)`` and the result ``v[floor p] + (p - floor p) (v[ceil p] - v[floor p])``
    (``q = 0.5`` is :func:`group_median`).

    Args:
        values: ``[B]`` numbers; group_ids: ``[B]`` integer ids; q: in ``[0, 1]``.
        mask: optional ``[B]`` bool / 0-1; only selected members count.
    Returns: ``[B]`` float; NaN for samples whose group has no selected member.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    sorted_values, starts, counts, inverse = _sorted_by_group(values, group_ids, mask)
    position = q * (counts - 1).clamp(min=0).to(torch.float64)
    low = position.floor()
    frac = position - low
    below = sorted_values[starts + low.long()]
    above = sorted_values[starts + position.ceil().long()]
    quantile = below + frac * (above - below)
    quantile = torch.where(counts > 0, quantile, torch.full_like(quantile, float("nan")))
    return quantile[inverse].to(_float_dtype(values))
