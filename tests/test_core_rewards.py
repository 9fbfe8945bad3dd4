"""Sequence rewards (HMPO and the length baselines) against hand-computed values."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thinklean.core.registry import get_reward, list_rewards
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

FAST = settings(max_examples=50, deadline=None)
NAN = float("nan")


def close(actual, expected, tol=1e-5):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    actual = actual.to(torch.float64)
    assert torch.equal(torch.isnan(actual), torch.isnan(expected)), (actual, expected)
    keep = ~torch.isnan(expected)
    assert torch.allclose(actual[keep], expected[keep], atol=tol, rtol=0), (actual, expected)


def t(values, dtype=None):
    return torch.tensor(values, dtype=dtype)


# ------------------------------------------------------------------------------------- HMPO

# The three worked examples of hmpo.md, interleaved in one batch with unsorted ids:
#   group 40: lengths [10, 20, 30, 40], all correct          -> budget 25
#   group 7:  lengths [12, 30 (wrong), 18]                    -> budget median(12, 18) = 15
#   group 2:  lengths [9, 10, 11], all correct                -> budget 10
WORKED_LENGTHS = t([10, 12, 9, 20, 30, 10, 30, 18, 40, 11])
WORKED_CORRECT = t([1, 1, 1, 1, 0, 1, 1, 1, 1, 1], torch.bool)
WORKED_IDS = t([40, 7, 2, 40, 7, 2, 40, 7, 40, 2])


def test_hmpo_budget_is_median_of_correct_lengths():
    budget, has_budget = hmpo_budgets(WORKED_CORRECT, WORKED_LENGTHS, WORKED_IDS)
    close(budget, [25, 15, 10, 25, 15, 10, 25, 15, 25, 10])
    assert has_budget.all()
    assert budget.dtype == torch.float32 and has_budget.dtype == torch.bool


def test_hmpo_reward_reproduces_the_worked_examples():
    # group 40 (b=25): 10 -> cos(0.2pi)+0.8 = 1.609 -> 1; 20 -> cos(0.4pi)+0.8 = 1.109 -> 1; 30, 40 > 25 -> 0
    # group 7 (b=15): 12 -> cos(0.4pi)+0.8 = 1.109 -> 1; wrong -> 0; 18 > 15 -> 0
    # group 2 (b=10): 9 -> cos(0.45pi)+0.8 = 0.156434+0.8 = 0.956434; 10 (at the budget) -> 0+0.8; 11 -> 0
    rewards = hmpo_reward(WORKED_CORRECT, WORKED_LENGTHS, WORKED_IDS)
    assert rewards.dtype == torch.float32
    close(rewards, [1.0, 1.0, 0.956434, 1.0, 0.0, 0.8, 0.0, 0.0, 0.0, 0.0])


def test_hmpo_response_exactly_at_the_budget_gets_lam():
    # single group, correct lengths 4, 8, 12 -> budget 8; n = 8: cos(pi/2) + lam = lam
    correct = t([1, 1, 1], torch.bool)
    rewards = hmpo_reward(correct, t([4, 8, 12]), t([0, 0, 0]), lam=0.3)
    # n = 4: cos(pi/4) + 0.3 = 0.707107 + 0.3 = 1.007107 -> clipped to 1; n = 12 > 8 -> 0
    close(rewards, [1.0, 0.3, 0.0])


def test_hmpo_even_count_of_correct_uses_mean_of_middle_lengths():
    # correct lengths 8, 20, 12, 16 -> sorted 8 12 16 20 -> budget (12 + 16) / 2 = 14; one wrong of length 5
    correct = t([1, 1, 1, 1, 0], torch.bool)
    lengths = t([8, 20, 12, 16, 5])
    ids = t([3, 3, 3, 3, 3])
    budget, _ = hmpo_budgets(correct, lengths, ids)
    close(budget, [14.0] * 5)
    # lam = 0 exposes the cosine: 8 -> cos(8pi/28) = cos(2pi/7) = 0.623490; 12 -> cos(3pi/7) = 0.222521
    # 20, 16 > 14 -> 0; wrong -> 0
    close(hmpo_reward(correct, lengths, ids, lam=0.0), [0.623490, 0.0, 0.222521, 0.0, 0.0])


def test_hmpo_group_without_correct_response_has_no_budget_and_zero_reward():
    correct = t([0, 0, 1, 0], torch.bool)
    lengths = t([5, 6, 10, 3])
    ids = t([8, 8, 1, 8])
    budget, has_budget = hmpo_budgets(correct, lengths, ids)
    close(budget, [NAN, NAN, 10.0, NAN])
    assert has_budget.tolist() == [False, False, True, False]
    # group 1: single correct at its own budget -> 0.8; group 8: all zero
    close(hmpo_reward(correct, lengths, ids), [0.0, 0.0, 0.8, 0.0])


def test_hmpo_single_correct_response_sets_the_budget_to_its_length():
    # group: [7 correct, 3 wrong, 12 wrong] -> budget 7; the short wrong answer earns nothing
    correct = t([1, 0, 0], torch.bool)
    lengths = t([7, 3, 12])
    budget, _ = hmpo_budgets(correct, lengths, t([5, 5, 5]))
    close(budget, [7.0, 7.0, 7.0])
    close(hmpo_reward(correct, lengths, t([5, 5, 5])), [0.8, 0.0, 0.0])


def test_hmpo_add_combine_adds_token_reward_to_accuracy():
    # group 2 of the worked example with R = R_acc + R_acc * R_tok: 1 + 0.956434, 1 + 0.8, 1 + 0
    correct = t([1, 1, 1, 0], torch.bool)
    lengths = t([9, 10, 11, 2])
    rewards = hmpo_reward(correct, lengths, t([2, 2, 2, 2]), combine="add")
    close(rewards, [1.956434, 1.8, 1.0, 0.0])


def test_hmpo_fixed_budget_replaces_group_median():
    # correct lengths 10, 30, 40 would have median 30; budget=20 instead, lam = 0.2:
    # 10 -> cos(pi * 10 / 40) + 0.2 = 0.707107 + 0.2 = 0.907107; 30, 40 > 20 -> 0; wrong 5 -> 0
    correct = t([1, 1, 1, 0], torch.bool)
    lengths = t([10, 30, 40, 5])
    rewards = hmpo_reward(correct, lengths, t([0, 0, 0, 0]), lam=0.2, budget=20)
    close(rewards, [0.907107, 0.0, 0.0, 0.0])


def test_hmpo_mean_budget_stat_uses_mean_of_correct_lengths():
    # correct 10, 20, 60 -> mean 30 (median would be 20); wrong 100 ignored
    correct = t([1, 1, 1, 0], torch.bool)
    lengths = t([10, 20, 60, 100])
    budget, _ = hmpo_budgets(correct, lengths, t([1, 1, 1, 1]), budget_stat="mean")
    close(budget, [30.0] * 4)
    # 20 <= 30: cos(pi * 20 / 60) = cos(pi/3) = 0.5, lam = 0 -> 0.5; with the median budget 20 it would be 0
    rewards = hmpo_reward(correct, lengths, t([1, 1, 1, 1]), lam=0.0, budget_stat="mean")
    close(rewards[1:2], [0.5])


def test_hmpo_accepts_float_correct_and_rejects_bad_options():
    rewards = hmpo_reward(t([1.0, 0.0]), t([4, 4]), t([0, 0]))
    close(rewards, [0.8, 0.0])  # single correct at its own budget
    with pytest.raises(ValueError, match="combine"):
        hmpo_reward(t([1.0]), t([4]), t([0]), combine="sum")
    with pytest.raises(ValueError, match="budget_stat"):
        hmpo_budgets(t([1.0]), t([4]), t([0]), budget_stat="mode")
    with pytest.raises(ValueError, match="correct"):
        hmpo_reward(t([0.5]), t([4]), t([0]))


def test_hmpo_does_not_mutate_inputs():
    correct, lengths, ids = WORKED_CORRECT.clone(), WORKED_LENGTHS.clone(), WORKED_IDS.clone()
    hmpo_reward(correct, lengths, ids)
    assert torch.equal(correct, WORKED_CORRECT)
    assert torch.equal(lengths, WORKED_LENGTHS)
    assert torch.equal(ids, WORKED_IDS)


@st.composite
def reward_batch(draw):
    size = draw(st.integers(1, 12))
    correct = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    lengths = draw(st.lists(st.integers(1, 60), min_size=size, max_size=size))
    ids = draw(st.lists(st.integers(0, 3), min_size=size, max_size=size))
    order = draw(st.permutations(range(size)))
    return t(correct, torch.bool), t(lengths), t(ids), t(order)


@FAST
@given(reward_batch())
def test_permuting_samples_permutes_hmpo_rewards(batch):
    correct, lengths, ids, order = batch
    before = hmpo_reward(correct, lengths, ids)
    after = hmpo_reward(correct[order], lengths[order], ids[order])
    assert torch.equal(after, before[order])


@FAST
@given(reward_batch(), st.integers(-500, 500))
def test_relabelling_group_ids_does_not_change_rewards(batch, offset):
    correct, lengths, ids, _ = batch
    relabelled = 1000 - ids * 13 + offset
    for name in ("hmpo", "kimi", "shorterbetter", "efficiency"):
        reward = get_reward(name)
        assert torch.equal(reward(correct, lengths, relabelled), reward(correct, lengths, ids)), name


# -------------------------------------------------------------------------------- baselines


def test_correctness_reward_is_one_or_zero():
    close(correctness_reward(t([True, False, True]), t([3, 4, 5]), t([0, 0, 1])), [1.0, 0.0, 1.0])


def test_kimi_length_reward_is_group_relative():
    # group 5: lengths 10, 20, 30 (min 10, max 30): lambda = 0.5 - (n - 10)/20 = 0.5, 0, -0.5
    #   correct 10 -> 1 + 0.5; wrong 20 -> 0 + min(0, 0) = 0; correct 30 -> 1 - 0.5
    # group 9: single response -> lambda 0 -> 1
    # group 1: wrong 10 (lambda 0.5 -> min(0, 0.5) = 0) and correct 30 (lambda -0.5 -> 0.5)
    correct = t([1, 0, 1, 1, 0, 1], torch.bool)
    lengths = t([10, 20, 30, 50, 10, 30])
    ids = t([5, 5, 5, 9, 1, 1])
    close(kimi_reward(correct, lengths, ids), [1.5, 0.0, 0.5, 1.0, 0.0, 0.5])
    # weight 2 doubles the length term: 1 + 1, 0, 1 - 1, 1, 0, 1 - 1
    close(kimi_reward(correct, lengths, ids, weight=2.0), [2.0, 0.0, 0.0, 1.0, 0.0, 0.0])


def test_kimi_group_with_equal_lengths_gets_no_length_term():
    close(kimi_reward(t([1, 0], torch.bool), t([7, 7]), t([0, 0])), [1.0, 0.0])


def test_l1_reward_penalises_distance_to_target():
    # 1 - 0.01 * |100 - 120| = 0.8; wrong and on target: 0 - 0 = 0; scalar target 50: 1 - 0.01*|50-20| = 0.7
    close(l1_reward(t([1, 0], torch.bool), t([120, 50]), t([0, 1]), targets=t([100, 50]), alpha=0.01), [0.8, 0.0])
    close(l1_reward(t([1], torch.bool), t([20]), t([0]), targets=50, alpha=0.01), [0.7])


def test_thinkprune_reward_is_hard_budget_including_the_boundary():
    # budget 20: correct 20 -> 1 (n <= budget); correct 21 -> 0; wrong 5 -> 0
    close(thinkprune_reward(t([1, 1, 0], torch.bool), t([20, 21, 5]), t([0, 0, 0]), budget=20), [1.0, 0.0, 0.0])


def test_thinkprune_budget_schedule_is_piecewise_constant():
    schedule = [(0, 4096), (100, 3072), (200, 2048)]
    assert [thinkprune_budget(s, schedule) for s in (0, 99, 100, 199, 200, 10_000)] == [
        4096, 4096, 3072, 3072, 2048, 2048
    ]
    assert thinkprune_budget(0, [(50, 1000), (80, 500)]) == 1000  # before the first entry
    with pytest.raises(ValueError, match="at least one"):
        thinkprune_budget(0, [])
    with pytest.raises(ValueError, match="increase"):
        thinkprune_budget(0, [(10, 100), (10, 50)])


def test_shorterbetter_targets_shortest_correct_or_group_mean():
    # group 0: correct 30, wrong 10, correct 20 -> l* = 20: 1 - 0.01*10 = 0.9, 0 - 0.01*10 = -0.1, 1 - 0 = 1
    # group 4: nobody correct, lengths 10, 30 -> l* = mean 20: -0.01*10 = -0.1 each
    correct = t([1, 0, 1, 0, 0], torch.bool)
    lengths = t([30, 10, 20, 10, 30])
    ids = t([0, 0, 0, 4, 4])
    close(shorterbetter_reward(correct, lengths, ids, alpha=1.0, beta=0.01), [0.9, -0.1, 1.0, -0.1, -0.1])


def test_cosine_reward_interpolates_and_penalises_exceeding():
    # L = 100; correct: r = 1 + 0.5 (2 - 1)(1 + cos(pi n / 100)): n=0 -> 2, n=50 -> 1.5, n=100 -> 1
    # wrong: r = 0 + 0.5 (-10 - 0)(1 + cos): n=0 -> -10, n=50 -> -5, n=100 -> 0; n=101 -> exceed -10
    correct = t([1, 1, 1, 1, 0, 0, 0, 0], torch.bool)
    lengths = t([0, 50, 100, 101, 0, 50, 100, 101])
    rewards = cosine_reward(correct, lengths, t([0] * 8), max_len=100)
    close(rewards, [2.0, 1.5, 1.0, -10.0, -10.0, -5.0, 0.0, -10.0])


def test_efficiency_reward_uses_sigmoid_of_standardised_correct_length():
    # group 0: correct 10 and 30 -> mean 20, population std 10 -> z = -1, +1 (eps 1e-6 negligible)
    #   1 - 0.2 * sigmoid(-1) = 1 - 0.2 * 0.268941 = 0.946212; 1 - 0.2 * 0.731059 = 0.853788; wrong -> 0
    # group 3: one correct -> std 0, z = 0 / (0 + eps) = 0 -> 1 - 0.2 * 0.5 = 0.9; wrong -> 0
    # group 6: nobody correct -> 0, 0
    correct = t([1, 1, 0, 1, 0, 0, 0], torch.bool)
    lengths = t([10, 30, 50, 40, 5, 7, 9])
    ids = t([0, 0, 0, 3, 3, 6, 6])
    rewards = efficiency_reward(correct, lengths, ids)
    assert not torch.isnan(rewards).any()
    close(rewards, [0.946212, 0.853788, 0.0, 0.9, 0.0, 0.0, 0.0])


def test_overlong_penalty_is_piecewise_with_inclusive_boundaries():
    # L = 100, cache 20 -> free up to 80: 0 for n <= 80; (80 - n)/20 for 80 < n <= 100; -1 above
    lengths = t([0, 80, 81, 90, 100, 101, 500])
    close(overlong_penalty(lengths, max_len=100, cache=20), [0.0, 0.0, -0.05, -0.5, -1.0, -1.0, -1.0])


def test_overlong_penalty_with_zero_cache_is_a_hard_step():
    close(overlong_penalty(t([100, 101]), max_len=100, cache=0), [0.0, -1.0])


def test_overlong_reward_adds_penalty_to_correctness():
    # correct at 90: 1 - 0.5 = 0.5; wrong at 90: 0 - 0.5; correct at 50: 1
    rewards = overlong_reward(t([1, 0, 1], torch.bool), t([90, 90, 50]), t([0, 0, 0]), max_len=100, cache=20)
    close(rewards, [0.5, -0.5, 1.0])


def test_every_registered_reward_shares_the_call_signature():
    config = {
        "l1": {"targets": t([5, 5, 5])},
        "thinkprune": {"budget": 10},
        "cosine": {"max_len": 20},
        "overlong": {"max_len": 20, "cache": 5},
    }
    expected = {"correctness", "hmpo", "kimi", "l1", "thinkprune", "shorterbetter", "cosine", "efficiency", "overlong"}
    assert expected <= set(list_rewards())
    correct, lengths, ids = t([1, 0, 1], torch.bool), t([4, 8, 12]), t([2, 2, 9])
    for name in expected:
        rewards = get_reward(name)(correct, lengths, ids, **config.get(name, {}))
        assert rewards.shape == (3,) and rewards.dtype == torch.float32, name
        assert rewards[1] <= 0, name  # a wrong answer never earns a positive total here


# --------------------------------------------------------------------------------- registry


def test_unknown_reward_name_error_names_it_and_lists_valid_ones():
    with pytest.raises(KeyError) as caught:
        get_reward("hmpoo")
    message = str(caught.value)
    assert "'hmpoo'" in message and "hmpo" in message and "kimi" in message
    assert isinstance(caught.value, ValueError)  # also catchable as a bad config value


def test_registering_a_duplicate_reward_name_is_an_error():
    from thinklean.core.registry import register_reward

    with pytest.raises(ValueError, match="already registered"):

        @register_reward("hmpo")
        def another_hmpo(correct, lengths, group_ids):  # pragma: no cover - never registered
            return correct.float()

    assert get_reward("hmpo") is hmpo_reward


def test_a_user_registered_reward_is_found_by_name():
    from thinklean.core import registry

    @registry.register_reward("test_only_constant")
    def constant_reward(correct, lengths, group_ids, value=0.5):
        return torch.full(correct.shape, value)

    try:
        assert "test_only_constant" in list_rewards()
        close(get_reward("test_only_constant")(t([1]), t([3]), t([0]), value=2.0), [2.0])
    finally:
        registry._REWARDS.pop("test_only_constant")
