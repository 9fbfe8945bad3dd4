"""Policy loss (clip, dual clip, aggregation), KL estimators and logit helpers by hand."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thinklean.core.losses import (
    aggregate_loss,
    entropy_from_logits,
    kl_penalty,
    logprobs_from_logits,
    policy_loss,
)
from thinklean.core.registry import get_loss, list_losses

FAST = settings(max_examples=50, deadline=None)


def close(actual, expected, tol=1e-6):
    expected = torch.as_tensor(expected, dtype=torch.float64)
    actual = torch.as_tensor(actual).to(torch.float64)
    assert not torch.isnan(actual).any(), actual
    assert torch.allclose(actual, expected, atol=tol, rtol=0), (actual, expected)


def one_token_each(ratios, advantages, **kwargs):
    """policy_loss over B sequences of one token each with the given ratios (old logp = 0)."""
    logprobs = torch.tensor([[math.log(r)] for r in ratios])
    old = torch.zeros_like(logprobs)
    adv = torch.tensor([[a] for a in advantages])
    return policy_loss(logprobs, old, adv, torch.ones_like(adv), agg="seq-mean-token-sum", **kwargs)


def per_token(ratios, advantages, **kwargs):
    """The per-token losses, one call per token (each token is its own batch)."""
    return [float(one_token_each([r], [a], **kwargs)[0]) for r, a in zip(ratios, advantages)]


# ------------------------------------------------------------------------------ PPO clip


def test_ppo_clip_positive_advantage():
    # A = +1, eps 0.25: loss = max(-rho, -clip(rho, 0.75, 1.25))
    # rho 0.5 -> max(-0.5, -0.75) = -0.5 (unclipped); rho 1 -> -1; rho 1.25 -> -1.25 (boundary);
    # rho 1.5 -> max(-1.5, -1.25) = -1.25 (clipped)
    close(per_token([0.5, 1.0, 1.25, 1.5], [1, 1, 1, 1], clip_low=0.25, clip_high=0.25), [-0.5, -1.0, -1.25, -1.25])


def test_ppo_clip_negative_advantage():
    # A = -1: loss = max(rho, clip(rho, 0.75, 1.25))
    # rho 0.5 -> max(0.5, 0.75) = 0.75 (clipped); rho 0.75 -> 0.75 (boundary); rho 1.5 -> 1.5 (unclipped)
    close(per_token([0.5, 0.75, 1.5], [-1, -1, -1], clip_low=0.25, clip_high=0.25), [0.75, 0.75, 1.5])


def test_clip_fraction_counts_active_clips_and_not_the_exact_boundary():
    # tokens: (rho 1.5, A +1) clipped; (rho 1.25, A +1) at 1 + eps -> not active;
    #         (rho 0.5, A -1) clipped; (rho 0.75, A -1) at 1 - eps -> not active;
    #         (rho 0.5, A +1) and (rho 1.5, A -1) pessimistic side -> not active  => 2 / 6
    _, metrics = one_token_each(
        [1.5, 1.25, 0.5, 0.75, 0.5, 1.5], [1, 1, -1, -1, 1, -1], clip_low=0.25, clip_high=0.25
    )
    close(metrics["clip_frac"], 2 / 6)
    close(metrics["dual_clip_frac"], 0.0)
    # ratio mean: (1.5 + 1.25 + 0.5 + 0.75 + 0.5 + 1.5) / 6 = 1
    close(metrics["ratio_mean"], 1.0)
    close(metrics["ratio_max"], 1.5)


def test_clip_higher_uses_separate_low_and_high_bounds():
    # clip 0.2 / 0.28: A=+1, rho 1.5 -> -min(1.5, 1.28) = -1.28; A=-1, rho 0.5 -> max(0.5, 0.8) = 0.8
    close(per_token([1.5, 0.5], [1, -1], clip_low=0.2, clip_high=0.28), [-1.28, 0.8], tol=1e-6)


def test_dual_clip_caps_loss_for_negative_advantages_only():
    # c = 3, eps 0.25. A = -2, rho 5: max(10, 2.5) = 10 -> min(10, 3 * 2) = 6 (cap active)
    # A = -1, rho 3: max(3, 1.25) = 3 -> min(3, 3) = 3 (exactly at the cap: not counted)
    # A = +1, rho 5: -1.25 (dual clip never touches A > 0)
    # A = -1, rho 1: 1 (below the cap)
    ratios, advantages = [5.0, 3.0, 5.0, 1.0], [-2.0, -1.0, 1.0, -1.0]
    close(per_token(ratios, advantages, clip_low=0.25, clip_high=0.25, dual_clip=3.0), [6.0, 3.0, -1.25, 1.0])
    _, metrics = one_token_each(ratios, advantages, clip_low=0.25, clip_high=0.25, dual_clip=3.0)
    # dual clip active on 1 of 4 tokens; the PPO clip on A=+1, rho 5 is active too -> 1 / 4
    close(metrics["dual_clip_frac"], 0.25)
    close(metrics["clip_frac"], 0.25)


def test_dual_clip_must_exceed_one():
    with pytest.raises(ValueError, match="dual_clip"):
        one_token_each([1.0], [1.0], dual_clip=1.0)


def test_policy_loss_gradient_is_minus_advantage_over_tokens_when_unclipped():
    # ratio 1 everywhere; token-mean over 3 valid tokens: d loss / d logp = -A * rho / 3
    # third token clipped (A=+1, rho 1.5 > 1.2) -> gradient 0; padding -> 0
    logprobs = torch.tensor([[0.0, 0.0, math.log(1.5), 0.0]], requires_grad=True)
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -2.0, 1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, _ = policy_loss(logprobs, old, adv, mask)
    loss.backward()
    # loss = (-1 + 2 - 1.2) / 3 = -0.2 / 3
    close(loss, -0.2 / 3)
    close(logprobs.grad, [[-1 / 3, 2 / 3, 0.0, 0.0]])


def test_approx_kl_is_k3_of_old_versus_new():
    # rho 2: (2 - 1) - ln 2 = 0.306853; rho 1: 0 -> mean 0.153426
    _, metrics = one_token_each([2.0, 1.0], [1.0, 1.0])
    close(metrics["approx_kl"], (1 - math.log(2)) / 2)


def test_policy_loss_is_registered_as_ppo_clip():
    assert "ppo_clip" in list_losses()
    assert get_loss("ppo_clip") is policy_loss
    with pytest.raises(KeyError, match="ppo_clip"):
        get_loss("ppo")


def test_policy_loss_does_not_mutate_inputs():
    logprobs = torch.tensor([[0.1, -0.2]])
    old = torch.tensor([[0.0, 0.0]])
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.tensor([[1, 1]])
    copies = [x.clone() for x in (logprobs, old, adv, mask)]
    policy_loss(logprobs, old, adv, mask, dual_clip=3.0)
    for original, copy in zip((logprobs, old, adv, mask), copies):
        assert torch.equal(original, copy)


# --------------------------------------------------------------------------- aggregation

# per-token losses; padding holds junk that must be ignored; row 2 is fully padded
LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0], [7.0, 7.0, 7.0]])
LOSS_MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])


def test_token_mean_divides_by_number_of_valid_tokens():
    close(aggregate_loss(LOSS, LOSS_MASK, "token-mean"), (1 + 2 + 3 + 4) / 4)  # 2.5


def test_seq_mean_token_mean_averages_per_sequence_means():
    close(aggregate_loss(LOSS, LOSS_MASK, "seq-mean-token-mean"), (6 / 3 + 4 / 1) / 2)  # 3


def test_seq_mean_token_sum_averages_per_sequence_sums():
    close(aggregate_loss(LOSS, LOSS_MASK, "seq-mean-token-sum"), (6 + 4) / 2)  # 5


def test_seq_mean_token_sum_norm_divides_by_constant_max_len():
    # default max_len = T = 3: (6/3 + 4/3) / 2 = 1.666667; max_len 10: (0.6 + 0.4) / 2 = 0.5
    close(aggregate_loss(LOSS, LOSS_MASK, "seq-mean-token-sum-norm"), 10 / 6)
    close(aggregate_loss(LOSS, LOSS_MASK, "seq-mean-token-sum-norm", max_len=10), 0.5)


def test_policy_loss_uses_the_requested_aggregation():
    # ratio 1 everywhere -> per-token loss = -A; with A = -LOSS the aggregates equal those above
    zeros = torch.zeros(3, 3)
    expected = {
        "token-mean": 2.5,
        "seq-mean-token-mean": 3.0,
        "seq-mean-token-sum": 5.0,
        "seq-mean-token-sum-norm": 10 / 6,
    }
    for agg, value in expected.items():
        loss, _ = policy_loss(zeros, zeros, -LOSS, LOSS_MASK, agg=agg)
        close(loss, value)
    loss, _ = policy_loss(zeros, zeros, -LOSS, LOSS_MASK, agg="seq-mean-token-sum-norm", max_len=10)
    close(loss, 0.5)


def test_unknown_aggregation_is_rejected_with_the_valid_modes():
    with pytest.raises(ValueError, match="token-mean.*seq-mean-token-sum-norm"):
        aggregate_loss(LOSS, LOSS_MASK, "sum")


def test_aggregation_with_no_valid_token_is_zero():
    close(aggregate_loss(LOSS, torch.zeros(3, 3), "token-mean"), 0.0)
    close(aggregate_loss(LOSS, torch.zeros(3, 3), "seq-mean-token-sum"), 0.0)


@FAST
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**16))
def test_extra_padding_columns_do_not_change_token_mean_loss(rows, cols, extra, seed):
    generator = torch.Generator().manual_seed(seed)
    logprobs = -torch.rand(rows, cols, generator=generator, dtype=torch.float64)
    old = -torch.rand(rows, cols, generator=generator, dtype=torch.float64)
    adv = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
    mask = torch.rand(rows, cols, generator=generator) > 0.3
    pad = torch.full((rows, extra), -3.0, dtype=torch.float64)

    def widen(x):
        return torch.cat([x, pad], dim=1)

    wide_mask = torch.cat([mask, torch.zeros(rows, extra, dtype=torch.bool)], dim=1)
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        narrow, narrow_metrics = policy_loss(logprobs, old, adv, mask, agg=agg, dual_clip=3.0)
        wide, wide_metrics = policy_loss(widen(logprobs), widen(old), widen(adv), wide_mask, agg=agg, dual_clip=3.0)
        close(wide, narrow, tol=1e-12)
        for name in ("clip_frac", "dual_clip_frac", "approx_kl", "ratio_mean"):
            close(wide_metrics[name], narrow_metrics[name], tol=1e-12)


# ----------------------------------------------------------------------------------- KL


def test_kl_estimators_k1_k2_k3():
    logprobs = torch.tensor([[0.0, -1.0, -2.0]])
    ref = torch.tensor([[0.0, -2.0, -1.0]])
    # d = logp - ref = 0, 1, -1
    close(kl_penalty(logprobs, ref, "k1"), [[0.0, 1.0, -1.0]])
    close(kl_penalty(logprobs, ref, "k2"), [[0.0, 0.5, 0.5]])  # d^2 / 2
    # k3 = exp(ref - logp) - (ref - logp) - 1 with ref - logp = 0, -1, 1:
    #      1 - 0 - 1 = 0; e^-1 + 1 - 1 = 0.367879; e - 1 - 1 = 0.718282
    expected_k3 = [[0.0, math.exp(-1), math.e - 2]]
    close(kl_penalty(logprobs, ref, "k3"), expected_k3)
    close(kl_penalty(logprobs, ref, "low_var_kl"), expected_k3)
    close(kl_penalty(logprobs, ref), expected_k3)  # k3 is the default


def test_k3_is_clamped_to_ten():
    # ref - logp = 30 -> e^30 - 31 is huge -> 10; ref - logp = -30 -> e^-30 + 29 = 29 -> 10
    close(kl_penalty(torch.tensor([[-30.0, 0.0]]), torch.tensor([[0.0, -30.0]]), "k3"), [[10.0, 10.0]])


def test_unknown_kl_kind_is_rejected():
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


# ------------------------------------------------------------------------ logits helpers


def test_entropy_of_uniform_logits_is_log_vocab_size():
    # any constant logits over V = 5 -> ln 5 = 1.609438
    logits = torch.full((2, 3, 5), 0.7)
    entropy = entropy_from_logits(logits)
    assert entropy.shape == (2, 3) and entropy.dtype == torch.float32
    close(entropy, torch.full((2, 3), math.log(5)))


def test_entropy_of_a_two_token_distribution():
    # logits 0, ln 3 -> p = 0.25, 0.75 -> H = 0.25 ln 4 + 0.75 ln(4/3) = 0.346574 + 0.215762 = 0.562335
    logits = torch.tensor([[0.0, math.log(3)]])
    close(entropy_from_logits(logits), [0.25 * math.log(4) + 0.75 * math.log(4 / 3)])


def test_entropy_ignores_minus_infinity_logits():
    # two live tokens of equal logit -> ln 2, banned third token contributes nothing
    logits = torch.tensor([[[0.0, 0.0, float("-inf")]]])
    close(entropy_from_logits(logits), [[math.log(2)]])


def test_entropy_with_temperature():
    # logits 0, ln 9 at temperature 2 -> 0, ln 3 -> the two-token value above
    close(entropy_from_logits(torch.tensor([[0.0, math.log(9)]]), temperature=2.0), [0.562335], tol=1e-6)


def test_logprobs_from_logits_gathers_log_softmax():
    # logits 0, ln 3 -> p = 0.25, 0.75: label 1 -> ln 0.75 = -0.287682; label 0 -> ln 0.25
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)]]])
    labels = torch.tensor([[1, 0]])
    close(logprobs_from_logits(logits, labels), [[math.log(0.75), math.log(0.25)]])
    # temperature 2: logits 0, ln 3 / 2 -> p1 = sqrt3 / (1 + sqrt3) = 0.633975 -> ln = -0.455746
    expected = math.log(math.sqrt(3) / (1 + math.sqrt(3)))
    close(logprobs_from_logits(logits[:, :1], labels[:, :1], temperature=2.0), [[expected]])


def test_chunked_logit_helpers_match_unchunked():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 11, generator=generator)
    labels = torch.randint(0, 11, (2, 7), generator=generator)
    reference_logp = torch.log_softmax(logits, dim=-1).gather(-1, labels[..., None]).squeeze(-1)
    for chunk_size in (1, 3, 14, 10_000):
        unchunked = entropy_from_logits(logits, chunk_size=10_000)
        close(entropy_from_logits(logits, chunk_size=chunk_size), unchunked, tol=1e-6)
        close(logprobs_from_logits(logits, labels, chunk_size=chunk_size), reference_logp, tol=1e-5)


def test_logprobs_from_logits_keeps_gradients():
    logits = torch.zeros(1, 1, 4, requires_grad=True)
    logprobs_from_logits(logits, torch.tensor([[2]])).sum().backward()
    # d log softmax_2 / d z = onehot_2 - p = (-0.25, -0.25, 0.75, -0.25)
    close(logits.grad, [[[-0.25, -0.25, 0.75, -0.25]]])
