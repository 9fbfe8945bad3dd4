"""Advantage estimators (GRPO, Dr.GRPO, RLOO, IAPO, HGPO) against hand-computed values."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thinklean.core.advantages import (
    drgrpo_advantages,
    grpo_advantages,
    hgpo_advantages,
    iapo_advantages,
    rloo_advantages,
)
from thinklean.core.registry import get_advantage, list_advantages

FAST = settings(max_examples=50, deadline=None)
R2 = 1 / math.sqrt(2)  # 0.707107
R3 = math.sqrt(3) / 2  # 0.866025


def close(actual, expected, tol=1e-5):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert not torch.isnan(actual).any(), actual
    assert torch.allclose(actual.to(torch.float64), expected, atol=tol, rtol=0), (actual, expected)


def t(values, dtype=None):
    return torch.tensor(values, dtype=dtype)


# Unequal, unsorted groups: group 4 = rows {0, 3, 5} with rewards 1, 0, 2; group 9 = rows {1, 4}
# with rewards 0, 1; group 2 = row {2} alone.
REWARDS = t([1.0, 0.0, 5.0, 0.0, 1.0, 2.0])
IDS = t([4, 9, 2, 4, 9, 4])
MASK = t([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])


def per_row(values):
    """Expected [B, T]: each row's value on its valid tokens, 0 on padding."""
    return torch.tensor(values, dtype=torch.float64)[:, None] * MASK.to(torch.float64)


def test_grpo_normalises_within_unequal_unsorted_groups():
    # group 4: mean 1, deviations 0, -1, 1, unbiased var (0 + 1 + 1) / 2 = 1 -> 0, -1, 1
    # group 9: mean 0.5, deviations -+0.5, var 0.5 / 1 -> std 0.707107 -> -0.707107, 0.707107
    # group 2: a single sample -> 0
    adv = grpo_advantages(REWARDS, IDS, MASK)
    assert adv.dtype == torch.float32 and adv.shape == (6, 3)
    close(adv, per_row([0.0, -R2, 0.0, -1.0, R2, 1.0]))


def test_grpo_group_with_all_equal_rewards_gets_exactly_zero():
    adv = grpo_advantages(t([0.3, 0.3, 0.3, 1.0, 0.0]), t([1, 1, 1, 2, 2]), torch.ones(5, 2))
    assert torch.equal(adv[:3], torch.zeros(3, 2))
    close(adv[3:], [[R2, R2], [-R2, -R2]])  # +-0.5 / 0.707107


def test_drgrpo_only_centres_rewards():
    # group 4: 1 - 1, 0 - 1, 2 - 1; group 9: 0 - 0.5, 1 - 0.5; group 2: 0
    expected = per_row([0.0, -0.5, 0.0, -1.0, 0.5, 1.0])
    close(drgrpo_advantages(REWARDS, IDS, MASK), expected)
    close(grpo_advantages(REWARDS, IDS, MASK, norm_by_std=False), expected)


def test_rloo_subtracts_mean_of_the_other_samples():
    # group 4: 1 - (0 + 2)/2 = 0; 0 - (1 + 2)/2 = -1.5; 2 - (1 + 0)/2 = 1.5
    # group 9: 0 - 1 = -1; 1 - 0 = 1; group 2 alone -> 0
    close(rloo_advantages(REWARDS, IDS, MASK), per_row([0.0, -1.0, 0.0, -1.5, 1.0, 1.5]))


def test_advantage_estimators_are_registered_by_name():
    assert {"grpo", "drgrpo", "rloo", "iapo", "hgpo"} <= set(list_advantages())
    assert get_advantage("grpo") is grpo_advantages
    with pytest.raises(KeyError, match="grpoo.*drgrpo"):
        get_advantage("grpoo")


def test_advantages_do_not_mutate_inputs():
    rewards, ids, mask = REWARDS.clone(), IDS.clone(), MASK.clone()
    grpo_advantages(rewards, ids, mask)
    rloo_advantages(rewards, ids, mask)
    assert torch.equal(rewards, REWARDS) and torch.equal(ids, IDS) and torch.equal(mask, MASK)


# ------------------------------------------------------------------------------------- IAPO

NAN = float("nan")
# Two groups, padding (NaN under the padding must not leak), a length-1 sequence, and a row
# whose entropies are all equal.
IAPO_REWARDS = t([1.0, -1.0, 0.5, -0.5])
IAPO_CORRECT = t([True, False, True, False])
IAPO_IDS = t([1, 1, 7, 7])
IAPO_MASK = t([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]])
INFO_GAIN = t([[1.0, 2.0, 3.0, 99.0], [0.0, 2.0, NAN, NAN], [5.0, NAN, NAN, NAN], [0.0, 0.0, 0.0, 4.0]])
ENTROPY = t([[0.5, 0.5, 0.5, NAN], [1.0, 3.0, NAN, NAN], [2.0, NAN, NAN, NAN], [1.0, 2.0, 3.0, 4.0]])


def test_iapo_adds_normalised_token_terms_to_grpo_advantage():
    adv = iapo_advantages(IAPO_REWARDS, IAPO_CORRECT, IAPO_IDS, IAPO_MASK, INFO_GAIN, ENTROPY, w_s=0.1, w_c=0.1)
    # grpo: group 1 rewards 1, -1 -> +-1/sqrt2; group 7 rewards 0.5, -0.5 -> +-1/sqrt2
    # row 0 (correct, sigma +1): s 1,2,3 -> centred -1,0,1, L2 norm sqrt2 -> -R2, 0, R2; h all equal -> 0
    row0 = [R2 - 0.1 * R2, R2, R2 + 0.1 * R2, 0.0]
    # row 1 (wrong, sigma -1): s 0,2 -> -R2, R2; h 1,3 -> -R2, R2; A = -R2 + 0.1 s~ + 0.1 h~
    row1 = [-R2 - 0.2 * R2, -R2 + 0.2 * R2, 0.0, 0.0]
    # row 2: one token -> both token terms 0
    row2 = [R2, 0.0, 0.0, 0.0]
    # row 3 (wrong): s 0,0,0,4 -> mean 1, centred -1,-1,-1,3, norm sqrt12;
    #                h 1,2,3,4 -> mean 2.5, centred -1.5,-0.5,0.5,1.5, norm sqrt5
    s12, s5 = math.sqrt(12), math.sqrt(5)
    row3 = [-R2 + 0.1 * (s / s12) + 0.1 * (h / s5) for s, h in ((-1, -1.5), (-1, -0.5), (-1, 0.5), (3, 1.5))]
    close(adv, [row0, row1, row2, row3])
    assert adv.dtype == torch.float32


def test_iapo_all_equal_or_single_token_values_give_no_nan():
    flat = torch.full((4, 4), 2.0)
    adv = iapo_advantages(IAPO_REWARDS, IAPO_CORRECT, IAPO_IDS, IAPO_MASK, flat, flat)
    # token terms vanish: each valid token carries only the grpo advantage +-1/sqrt2
    close(adv, t([R2, -R2, R2, -R2])[:, None] * IAPO_MASK)


def test_iapo_token_mask_restricts_where_token_terms_are_normalised_and_applied():
    token_mask = IAPO_MASK.clone()
    token_mask[3, 0] = 0  # row 3: token terms over its last three tokens only
    adv = iapo_advantages(
        IAPO_REWARDS, IAPO_CORRECT, IAPO_IDS, IAPO_MASK, INFO_GAIN, ENTROPY, w_s=0.1, w_c=0.1, token_mask=token_mask
    )
    # row 3 first token: grpo only -> -R2
    # s 0,0,4 -> mean 4/3, centred -4/3,-4/3,8/3, norm sqrt(96)/3 -> -4/sqrt96, -4/sqrt96, 8/sqrt96
    # h 2,3,4 -> centred -1,0,1, norm sqrt2 -> -R2, 0, R2; wrong -> A = -R2 + 0.1 s~ + 0.1 h~
    s96 = math.sqrt(96)
    expected = [-R2, -R2 + 0.1 * (-4 / s96) + 0.1 * -R2, -R2 + 0.1 * (-4 / s96), -R2 + 0.1 * (8 / s96) + 0.1 * R2]
    close(adv[3], expected)


def test_iapo_is_registered_and_zero_on_padding():
    adv = get_advantage("iapo")(IAPO_REWARDS, IAPO_CORRECT, IAPO_IDS, IAPO_MASK, INFO_GAIN, ENTROPY)
    assert torch.equal(adv[IAPO_MASK == 0], torch.zeros(int((IAPO_MASK == 0).sum())))


# ------------------------------------------------------------------------------------- HGPO


def hgpo(rewards, lengths, modes, ids, response_mask=None, tag_mask=None, **kwargs):
    size = len(rewards)
    response_mask = torch.ones(size, 3) if response_mask is None else response_mask
    if tag_mask is None:
        tag_mask = torch.zeros(size, 3)
        tag_mask[:, 0] = 1  # the mode tag is the first response token
    return hgpo_advantages(t(rewards), t(lengths), t(modes), t(ids), response_mask, tag_mask, **kwargs)


def rows(intra, inter, alpha=1.0):
    """Expected [B, 3]: intra on every token, plus alpha * inter on the tag token (column 0)."""
    return [[a + alpha * e, a, a] for a, e in zip(intra, inter)]


def test_hgpo_think_wins_by_more_than_delta():
    # think (mode 1) rewards 1, 1 -> mean 1; no-think 0, 1 -> mean 0.5; 1 > 0.5 + 0.2 -> think wins
    # r_inter 1, 1, 0, 0 -> mean 0.5, unbiased std sqrt(1/3) -> +-0.866025
    # think half: tie at reward 1 -> shorter (length 20, row 1) wins -> r_intra 0, 1 -> -R2, +R2
    # no-think half: row 3 (reward 1) wins -> -R2, +R2
    adv = hgpo([1.0, 1.0, 0.0, 1.0], [30, 20, 5, 6], [1, 1, 0, 0], [0, 0, 0, 0])
    close(adv, rows([-R2, R2, -R2, R2], [R3, R3, -R3, -R3]))


def test_hgpo_no_think_wins_inside_the_margin():
    # think 0.9, 0.7 -> mean 0.8; no-think 0.7, 0.7 -> mean 0.7; 0.8 > 0.9 is false -> no-think wins
    # r_inter 0, 0, 1, 1 -> -+0.866025
    # think half: row 0 (0.9) wins -> +R2, -R2
    # no-think half: all-equal rewards -> shorter (length 3, row 3) wins -> -R2, +R2
    adv = hgpo([0.9, 0.7, 0.7, 0.7], [10, 12, 4, 3], [1, 1, 0, 0], [0, 0, 0, 0])
    close(adv, rows([R2, -R2, -R2, R2], [-R3, -R3, R3, R3]))


def test_hgpo_margin_is_strict():
    # means 1.0 vs 0.75 with delta 0.25: 1.0 > 1.0 is false -> no-think wins (binary-exact numbers)
    adv = hgpo([1.0, 1.0, 1.0, 0.5], [5, 6, 5, 6], [1, 1, 0, 0], [3, 3, 3, 3], delta=0.25)
    # think half tie -> row 0 (shorter); no-think: row 2 (reward 1)
    close(adv, rows([R2, -R2, R2, -R2], [-R3, -R3, R3, R3]))


def test_hgpo_ties_within_a_mode_broken_by_length_then_index():
    # think half of three, all reward 1, lengths 9, 7, 7 -> row 1 (shorter, lower index than row 2)
    # r_intra 0, 1, 0 -> mean 1/3, deviations -1/3, 2/3, -1/3, var (1/9 + 4/9 + 1/9) / 2 = 1/3
    # -> std 0.57735 -> -0.57735, 1.154701, -0.57735
    # no-think half: one rollout -> 0. Means 1 vs 0 -> think wins: r_inter 1, 1, 1, 0
    #   mean 0.75, deviations 0.25 x3, -0.75; var (3 * 0.0625 + 0.5625) / 3 = 0.25 -> std 0.5 -> 0.5, 0.5, 0.5, -1.5
    third = 1 / math.sqrt(3)
    adv = hgpo([1.0, 1.0, 1.0, 0.0], [9, 7, 7, 4], [1, 1, 1, 0], [5, 5, 5, 5])
    close(adv, rows([-third, 2 * third, -third, 0.0], [0.5, 0.5, 0.5, -1.5]))


@pytest.mark.parametrize("threshold", [0.0, None])
def test_hgpo_half_that_failed_throughout_rewards_no_shortest_failure(threshold):
    # think 1, 0 -> mean 0.5 > 0 + 0.2 -> think wins: r_inter 1, 1, 0, 0 -> R3, R3, -R3, -R3
    # think half: row 0 (reward 1) wins -> R2, -R2
    # no-think half: both 0; at threshold 0 both are the best (r_intra 1, 1 -> 0, 0); with None
    # the shorter (row 3) wins -> -R2, R2
    adv = hgpo([1.0, 0.0, 0.0, 0.0], [10, 12, 4, 3], [1, 1, 0, 0], [0, 0, 0, 0], success_threshold=threshold)
    no_think = [0.0, 0.0] if threshold is not None else [-R2, R2]
    close(adv, rows([R2, -R2, *no_think], [R3, R3, -R3, -R3]))


def test_hgpo_failed_half_still_prefers_its_best_reward_over_length():
    # no-think half: a wrong answer (0, 9 tokens) beats a malformed one (-1, 2 tokens): the best
    # reward 0 is no success, so no length tie-break, but it is still the best -> R2, -R2
    # think half: 1 (row 0) -> R2, -R2; means 0.5 vs -0.5 -> think wins: R3, R3, -R3, -R3
    adv = hgpo([1.0, 0.0, 0.0, -1.0], [10, 12, 9, 2], [1, 1, 0, 0], [0, 0, 0, 0])
    close(adv, rows([R2, -R2, R2, -R2], [R3, R3, -R3, -R3]))


def test_hgpo_group_with_one_mode_has_no_inter_term():
    # all think: r_inter constant -> 0; intra: row 1 (reward 1) wins -> -R2, +R2
    adv = hgpo([0.0, 1.0], [5, 6], [1, 1], [2, 2])
    close(adv, rows([-R2, R2], [0.0, 0.0]))


def test_hgpo_inter_term_only_on_the_mode_tag_token_and_scaled_by_alpha():
    # same batch as the think-wins test, alpha 0.5, one row padded at the end and a tag mark
    # placed on a padded position of row 2 (ignored)
    mask = torch.ones(4, 3)
    mask[2, 2] = 0
    tags = torch.zeros(4, 3)
    tags[:, 0] = 1
    tags[2, 2] = 1
    adv = hgpo([1.0, 1.0, 0.0, 1.0], [30, 20, 5, 6], [1, 1, 0, 0], [0, 0, 0, 0], mask, tags, alpha=0.5)
    expected = rows([-R2, R2, -R2, R2], [R3, R3, -R3, -R3], alpha=0.5)
    expected[2][2] = 0.0
    close(adv, expected)


def test_hgpo_groups_are_independent_when_interleaved():
    # the think-wins group (id 11) and the no-think-wins group (id 3) interleaved row by row
    rewards = [1.0, 0.9, 1.0, 0.7, 0.0, 0.7, 1.0, 0.7]
    lengths = [30, 10, 20, 12, 5, 4, 6, 3]
    modes = [1, 1, 1, 1, 0, 0, 0, 0]
    ids = [11, 3, 11, 3, 11, 3, 11, 3]
    adv = hgpo(rewards, lengths, modes, ids)
    intra = [-R2, R2, R2, -R2, -R2, -R2, R2, R2]
    inter = [R3, -R3, R3, -R3, -R3, R3, -R3, R3]
    close(adv, rows(intra, inter))


def test_hgpo_rejects_modes_other_than_zero_and_one():
    with pytest.raises(ValueError, match="modes"):
        hgpo([1.0, 0.0], [3, 4], [1, 2], [0, 0])


# ------------------------------------------------------------------------------- properties


@st.composite
def advantage_batch(draw):
    size = draw(st.integers(1, 10))
    rewards = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0]), min_size=size, max_size=size))
    ids = draw(st.lists(st.integers(0, 3), min_size=size, max_size=size))
    lengths = draw(st.lists(st.integers(1, 4), min_size=size, max_size=size))
    modes = draw(st.lists(st.integers(0, 1), min_size=size, max_size=size))
    order = draw(st.permutations(range(size)))
    mask = (torch.arange(4)[None, :] < t(lengths)[:, None]).float()
    return t(rewards), t(ids), mask, t(lengths), t(modes), t(order)


def _all_estimators(rewards, ids, mask, lengths, modes):
    tags = torch.zeros_like(mask)
    tags[:, 0] = 1
    return {
        "grpo": grpo_advantages(rewards, ids, mask),
        "drgrpo": drgrpo_advantages(rewards, ids, mask),
        "rloo": rloo_advantages(rewards, ids, mask),
        "hgpo": hgpo_advantages(rewards, lengths, modes, ids, mask, tags),
    }


@FAST
@given(advantage_batch())
def test_permuting_samples_permutes_advantages(batch):
    rewards, ids, mask, lengths, modes, order = batch
    before = _all_estimators(rewards, ids, mask, lengths, modes)
    after = _all_estimators(rewards[order], ids[order], mask[order], lengths[order], modes[order])
    for name in ("grpo", "drgrpo", "rloo"):
        assert torch.allclose(after[name], before[name][order], atol=1e-6), name
    # HGPO breaks exact ties by batch index, so it is equivariant only when no two rollouts of
    # a mode half share both reward and length.
    rollouts = list(zip(ids.tolist(), modes.tolist(), rewards.tolist(), lengths.tolist()))
    if len(set(rollouts)) == len(rollouts):
        assert torch.allclose(after["hgpo"], before["hgpo"][order], atol=1e-6)


@FAST
@given(advantage_batch(), st.integers(-100, 100))
def test_relabelling_group_ids_does_not_change_advantages(batch, offset):
    rewards, ids, mask, lengths, modes, _ = batch
    relabelled = (3 - ids) * 17 + offset  # injective and order-reversing
    before = _all_estimators(rewards, ids, mask, lengths, modes)
    after = _all_estimators(rewards, relabelled, mask, lengths, modes)
    for name in before:
        assert torch.equal(after[name], before[name]), name


@FAST
@given(advantage_batch(), st.integers(1, 5))
def test_extra_padding_columns_do_not_change_advantages(batch, extra):
    rewards, ids, mask, lengths, modes, _ = batch
    padded = torch.cat([mask, torch.zeros(len(rewards), extra)], dim=1)
    before = _all_estimators(rewards, ids, mask, lengths, modes)
    after = _all_estimators(rewards, ids, padded, lengths, modes)
    for name in before:
        assert torch.equal(after[name][:, : mask.shape[1]], before[name]), name
        assert torch.equal(after[name][:, mask.shape[1] :], torch.zeros(len(rewards), extra)), name
