"""Masked reductions and group statistics: hand-computed values, plus invariance properties."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thinklean.core.masked import (
    group_index,
    group_max,
    group_mean,
    group_median,
    group_min,
    group_quantile,
    group_size,
    group_std,
    group_sum,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

FAST = settings(max_examples=50, deadline=None)


def close(actual, expected, tol=1e-6):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    actual = actual.to(torch.float64)
    both_nan = torch.isnan(actual) & torch.isnan(expected)
    assert torch.equal(torch.isnan(actual), torch.isnan(expected)), (actual, expected)
    assert torch.allclose(actual[~both_nan], expected[~both_nan], atol=tol, rtol=0), (actual, expected)


# ------------------------------------------------------------------------ masked reductions

X = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 1]])


def test_masked_sum_ignores_padding_even_nan_and_inf():
    # valid: 1 + 2 + 4 + 6 = 13; per row: 1 + 2 = 3, 4 + 6 = 10
    close(masked_sum(X, MASK), 13.0)
    close(masked_sum(X, MASK, dim=1), [3.0, 10.0])


def test_masked_mean_over_valid_positions_only():
    # 13 / 4 valid = 3.25; rows: 3 / 2 = 1.5, 10 / 2 = 5
    close(masked_mean(X, MASK), 3.25)
    close(masked_mean(X, MASK, dim=1), [1.5, 5.0])


def test_masked_mean_of_a_fully_padded_row_is_zero():
    x = torch.tensor([[1.0, 3.0], [7.0, 9.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    # row 0: (1 + 3) / 2 = 2; row 1 has nothing -> 0 by definition
    close(masked_mean(x, mask, dim=1), [2.0, 0.0])


def test_masked_var_unbiased_and_biased():
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, -5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # valid 1,2,3,4: mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5
    close(masked_var(x, mask), 5 / 3)
    close(masked_var(x, mask, unbiased=False), 5 / 4)


def test_masked_var_of_one_valid_value_is_zero():
    x = torch.tensor([[4.0, 8.0]])
    close(masked_var(x, torch.tensor([[1, 0]])), 0.0)


def test_masked_whiten_standardises_valid_values_and_zeroes_padding():
    x = torch.tensor([[1.0, 2.0], [3.0, 50.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # valid 1,2,3: mean 2, unbiased var ((1)+(0)+(1))/2 = 1 -> (x - 2) / 1
    close(masked_whiten(x, mask, eps=0.0), [[-1.0, 0.0], [1.0, 0.0]])
    # shift_mean=False adds the mean back: -1+2, 0+2, 1+2
    close(masked_whiten(x, mask, shift_mean=False, eps=0.0), [[1.0, 2.0], [3.0, 0.0]])


def test_masked_functions_do_not_mutate_inputs():
    x = X.clone()
    mask = MASK.clone()
    masked_whiten(x, mask)
    masked_var(x, mask)
    assert torch.equal(torch.isnan(x), torch.isnan(X))
    assert torch.equal(x[~torch.isnan(x)], X[~torch.isnan(X)])
    assert torch.equal(mask, MASK)


# ------------------------------------------------------------------------- group statistics

# Unsorted, non-contiguous ids, unequal sizes: group 7 = {0, 2}, group 3 = {1, 3}, group 100 = {4}
VALUES = torch.tensor([1.0, 10.0, 3.0, 20.0, 5.0])
IDS = torch.tensor([7, 3, 7, 3, 100])


def test_group_mean_with_unsorted_non_contiguous_ids():
    # group 7: (1 + 3) / 2 = 2; group 3: (10 + 20) / 2 = 15; group 100: 5
    close(group_mean(VALUES, IDS), [2.0, 15.0, 2.0, 15.0, 5.0])


def test_group_std_is_bessel_corrected_and_zero_for_a_group_of_one():
    # group 7: deviations +-1 -> 2 / (2 - 1) = 2 -> sqrt 2; group 3: +-5 -> 50 -> sqrt 50
    s2, s50 = math.sqrt(2), math.sqrt(50)
    close(group_std(VALUES, IDS), [s2, s50, s2, s50, 0.0])
    # biased: 2 / 2 = 1 -> 1; 50 / 2 = 25 -> 5
    close(group_std(VALUES, IDS, unbiased=False), [1.0, 5.0, 1.0, 5.0, 0.0])


def test_group_size_counts_members_of_each_samples_group():
    assert group_size(IDS).tolist() == [2, 2, 2, 2, 1]


def test_group_sum_sums_each_group_in_the_values_dtype():
    inverse, num_groups = group_index(torch.tensor([7, 3, 7, 9]))  # dense indices in sorted id order: 3, 7, 9
    sums = group_sum(torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64), inverse, num_groups)
    assert sums.dtype == torch.float64 and sums.tolist() == [2.0, 5.0, 8.0]
    assert group_sum(torch.tensor([1, 1, 1, 1]), inverse, num_groups).tolist() == [1, 2, 1]


def test_group_min_and_max():
    close(group_min(VALUES, IDS), [1.0, 10.0, 1.0, 10.0, 5.0])
    close(group_max(VALUES, IDS), [3.0, 20.0, 3.0, 20.0, 5.0])


def test_group_min_with_mask_ignores_unselected_and_gives_nan_for_empty_groups():
    selected = torch.tensor([0, 1, 1, 1, 0])
    # group 7: only 3; group 3: min(10, 20) = 10; group 100: nobody -> NaN
    close(group_min(VALUES, IDS, mask=selected), [3.0, 10.0, 3.0, 10.0, float("nan")])


def test_group_mean_with_mask_averages_selected_members_only():
    selected = torch.tensor([1, 0, 1, 1, 0])
    # group 7: (1 + 3) / 2 = 2; group 3: only 20; group 100: nobody -> NaN
    close(group_mean(VALUES, IDS, mask=selected), [2.0, 20.0, 2.0, 20.0, float("nan")])


def test_group_median_even_count_is_mean_of_two_middle_values():
    values = torch.tensor([4.0, 1.0, 7.0, 10.0, 2.0, 8.0, 5.0])
    ids = torch.tensor([3, 3, 3, 3, 9, 9, 1])
    # group 3 sorted 1,4,7,10 -> (4 + 7) / 2 = 5.5; group 9: (2 + 8) / 2 = 5; group 1: 5
    close(group_median(values, ids), [5.5, 5.5, 5.5, 5.5, 5.0, 5.0, 5.0])


def test_group_median_with_mask_uses_selected_members_and_nan_when_none():
    values = torch.tensor([4.0, 1.0, 7.0, 10.0, 2.0, 8.0, 5.0])
    ids = torch.tensor([3, 3, 3, 3, 9, 9, 1])
    selected = torch.tensor([True, False, True, True, False, False, True])
    # group 3 selected 4,7,10 -> 7; group 9 none -> NaN; group 1: 5
    nan = float("nan")
    close(group_median(values, ids, mask=selected), [7.0, 7.0, 7.0, 7.0, nan, nan, 5.0])


def test_group_quantile_interpolates_linearly_between_sorted_selected_values():
    values = torch.tensor([4.0, 1.0, 7.0, 10.0, 2.0, 8.0, 5.0])
    ids = torch.tensor([3, 3, 3, 3, 9, 9, 1])
    # group 3 sorted 1,4,7,10: q 0.25 -> position 0.75 -> 1 + 0.75 * 3 = 3.25; group 9 sorted 2,8:
    # position 0.25 -> 3.5; group 1: 5
    close(group_quantile(values, ids, 0.25), [3.25, 3.25, 3.25, 3.25, 3.5, 3.5, 5.0])
    selected = torch.tensor([True, False, True, True, False, False, True])
    # selected 4,7,10 at q 1 -> 10; q 0.5 is the median; group 9 has none -> NaN
    nan = float("nan")
    close(group_quantile(values, ids, 1.0, mask=selected), [10.0, 10.0, 10.0, 10.0, nan, nan, 5.0])
    close(group_quantile(values, ids, 0.5, mask=selected), group_median(values, ids, mask=selected).tolist())
    with pytest.raises(ValueError, match=r"q must be in \[0, 1\]"):
        group_quantile(values, ids, 1.5)


def test_group_median_of_integer_lengths_returns_float():
    lengths = torch.tensor([3, 4])
    out = group_median(lengths, torch.tensor([0, 0]))
    assert out.dtype == torch.float32
    close(out, [3.5, 3.5])  # (3 + 4) / 2


def test_group_index_rejects_float_ids():
    with pytest.raises(ValueError, match="integer"):
        group_index(torch.tensor([0.0, 1.0]))


# ------------------------------------------------------------------------------- properties


@st.composite
def grouped_values(draw):
    size = draw(st.integers(1, 12))
    values = draw(st.lists(st.integers(-50, 50), min_size=size, max_size=size))
    ids = draw(st.lists(st.integers(0, 4), min_size=size, max_size=size))
    selected = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    order = draw(st.permutations(range(size)))
    return (
        torch.tensor(values, dtype=torch.float64),
        torch.tensor(ids),
        torch.tensor(selected),
        torch.tensor(order),
    )


def _group_stats(values, ids, selected):
    return [
        group_mean(values, ids),
        group_std(values, ids),
        group_min(values, ids),
        group_max(values, ids),
        group_median(values, ids),
        group_median(values, ids, mask=selected),
        group_size(ids).to(torch.float64),
    ]


@FAST
@given(grouped_values())
def test_permuting_samples_permutes_group_statistics(data):
    values, ids, selected, order = data
    before = _group_stats(values, ids, selected)
    after = _group_stats(values[order], ids[order], selected[order])
    for stat_before, stat_after in zip(before, after):
        close(stat_after, stat_before[order], tol=1e-9)


@FAST
@given(grouped_values(), st.integers(-1000, 1000))
def test_relabelling_group_ids_does_not_change_group_statistics(data, offset):
    values, ids, selected, _ = data
    relabelled = ids * 37 + offset  # injective map to other, unsorted-looking ids
    for stat_before, stat_after in zip(_group_stats(values, ids, selected), _group_stats(values, relabelled, selected)):
        close(stat_after, stat_before, tol=1e-9)


@FAST
@given(
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(1, 5),
    st.integers(0, 2**16),
)
def test_extra_padding_columns_do_not_change_masked_statistics(rows, cols, extra, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    mask = torch.rand(rows, cols, generator=generator) > 0.3
    padded_x = torch.cat([x, torch.full((rows, extra), 1e6, dtype=torch.float64)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(rows, extra, dtype=torch.bool)], dim=1)
    close(masked_mean(padded_x, padded_mask), masked_mean(x, mask), tol=1e-9)
    close(masked_mean(padded_x, padded_mask, dim=1), masked_mean(x, mask, dim=1), tol=1e-9)
    close(masked_var(padded_x, padded_mask), masked_var(x, mask), tol=1e-9)
    close(masked_whiten(padded_x, padded_mask)[:, :cols], masked_whiten(x, mask), tol=1e-9)
