import pytest

from thinklean.eval.metrics import (
    ResponseRecord,
    compression,
    iso_accuracy_compression,
    pass_at_k,
    summarize,
    tokens_at_accuracy,
)


def test_pass_at_k_by_hand():
    # n=5 samples, c=2 correct: pass@1 = 1 - C(3,1)/C(5,1) = 1 - 3/5 = 0.4
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    # pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # pass@5: any 5 of 5 include a correct one
    assert pass_at_k(5, 2, 5) == 1.0
    assert pass_at_k(4, 0, 2) == 0.0


def _rec(i, correct, tokens, reasoning=0, mode="think", ok=True, difficulty=1):
    return ResponseRecord(i, difficulty, correct, ok, tokens, reasoning, mode, True, "")


def test_summary_statistics_by_hand():
    records = [_rec(0, True, 10, 6), _rec(1, False, 20, 14), _rec(2, True, 30, 20, ok=False), _rec(3, True, 40, 0, "no_think")]
    s = summarize(records)
    assert s["accuracy"] == 0.75
    assert s["mean_response_tokens"] == 25.0
    assert s["median_response_tokens"] == 25.0  # (20 + 30) / 2
    assert s["p90_response_tokens"] == pytest.approx(37.0)  # 30 + 0.7 * (40 - 30)
    assert s["mean_reasoning_tokens"] == 10.0
    assert s["tokens_per_correct"] == pytest.approx(100 / 3)
    assert s["format_error_rate"] == 0.25
    assert s["think_ratio"] == 0.75


def test_pass_at_k_in_summary_groups_samples_by_prompt():
    records = [_rec(0, True, 5), _rec(0, False, 5), _rec(1, False, 5), _rec(1, False, 5)]
    s = summarize(records, ks=[1, 2])
    # prompt 0: pass@1 = 0.5, pass@2 = 1; prompt 1: 0 and 0
    assert s["pass@1"] == 0.25 and s["pass@2"] == 0.5


def test_compression():
    assert compression(60.0, 100.0) == pytest.approx(0.4)


# (accuracy, mean tokens) per checkpoint in training order: rises, dips below 0.80, recovers
ZIGZAG = [(0.70, 100.0), (0.90, 80.0), (0.75, 40.0), (0.85, 50.0)]


def test_iso_accuracy_interpolates_the_cheapest_crossing_of_a_non_monotone_curve():
    # reference 0.80. Checkpoints at or above it: 80, 50 tokens. Crossings (linear):
    #   100 -> 80: (0.80 - 0.70) / 0.20 = 1/2 of the way -> 90
    #    80 -> 40: (0.80 - 0.90) / -0.15 = 2/3 of the way -> 80 - 40 * 2/3 = 53.33
    #    40 -> 50: (0.80 - 0.75) / 0.10 = 1/2 of the way -> 45   <- fewest
    assert tokens_at_accuracy(ZIGZAG, 0.80) == pytest.approx(45.0)
    assert iso_accuracy_compression(ZIGZAG, 0.80, reference_tokens=100.0) == pytest.approx(0.55)  # 1 - 45/100


def test_iso_accuracy_when_compression_costs_accuracy():
    curve = [(0.80, 120.0), (0.60, 60.0)]  # shorter and less accurate as training goes on
    assert tokens_at_accuracy(curve, 0.70) == pytest.approx(90.0)  # halfway from 120 to 60
    assert tokens_at_accuracy(curve, 0.80) == 120.0  # only the first checkpoint is that accurate
    # shorter *and* more accurate: the last checkpoint already matches, nothing to interpolate
    assert tokens_at_accuracy([(0.60, 120.0), (0.80, 60.0)], 0.70) == 60.0


def test_iso_accuracy_never_reached_is_none_and_always_above_is_the_cheapest_checkpoint():
    assert tokens_at_accuracy(ZIGZAG, 0.95) is None
    assert iso_accuracy_compression(ZIGZAG, 0.95, 100.0) is None
    # every checkpoint beats 0.5: no extrapolation, the cheapest checkpoint (40 tokens) is a bound
    assert tokens_at_accuracy(ZIGZAG, 0.50) == 40.0
    assert tokens_at_accuracy([(0.9, 30.0)], 0.8) == 30.0
    with pytest.raises(ValueError, match="at least one"):
        tokens_at_accuracy([], 0.8)
