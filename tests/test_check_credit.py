"""benchmarks/check_credit.py: the credit a reward gives each kind of check decision, by hand."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from thinklean.data.arith import ArithProblem, solution_text


@pytest.fixture
def check_credit(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import check_credit

    return check_credit


def test_step_counts_read_each_kind_of_step_and_its_check(check_credit):
    problem = ArithProblem(347, (("*", 6), ("+", 5), ("-", 2)))
    texts = [solution_text(problem, style, random.Random(0)) for style in ("risky", "full", "terse")]
    # [response, kind (risky, safe), (steps, checked)]
    assert check_credit.step_counts(texts).tolist() == [[[1, 1], [2, 0]], [[1, 1], [2, 2]], [[1, 0], [2, 0]]]


def test_credit_of_each_kind_worked_by_hand(check_credit):
    advantages = np.array([1.0, -1.0, 0.5])
    counts = np.array([[[1, 1], [2, 1]], [[1, 0], [1, 1]], [[0, 0], [2, 0]]], dtype=float)
    out = check_credit.credit(advantages, counts, np.arange(3))
    # risky: checked in response 0 only, p = 1/2; signal = (1 * 0.5 + (-1) * (-0.5) + 0) / 2
    assert out["risky"]["check_rate"] == 0.5 and out["risky"]["decisions"] == 2
    assert out["risky"]["advantage_checked"] == 1.0 and out["risky"]["advantage_unchecked"] == -1.0
    assert out["risky"]["signal"] == pytest.approx(0.5)
    # safe: p = 2/5; A | check = (1 - 1) / 2; A | none = (1 + 0.5 * 2) / 3;
    # signal = (1 * (1 - 0.8) - 1 * (1 - 0.4) + 0.5 * (0 - 0.8)) / 5
    assert out["safe"]["check_rate"] == pytest.approx(0.4)
    assert out["safe"]["advantage_checked"] == 0.0 and out["safe"]["advantage_unchecked"] == pytest.approx(2 / 3)
    assert out["safe"]["signal"] == pytest.approx(-0.16)
    # only two responses have both kinds: too few for the fit
    assert np.isnan(out["risky"]["held"])
    # a repeated response counts twice (the bootstrap resamples with repeats)
    assert check_credit.credit(advantages, counts, np.array([0, 0, 1]))["risky"]["check_rate"] == pytest.approx(2 / 3)


def test_held_recovers_each_share_s_coefficient(check_credit):
    # A = 0.3 + 2 * (risky share checked) - 1 * (safe share checked), shares varied independently
    shares = [(r, s) for r in (0, 0.5, 1) for s in (0, 0.25, 0.5, 1)]
    counts = np.array([[[2, 2 * r], [4, 4 * s]] for r, s in shares])
    advantages = np.array([0.3 + 2 * r - s for r, s in shares])
    out = check_credit.credit(advantages, counts, np.arange(len(shares)))
    assert out["risky"]["held"] == pytest.approx(2.0) and out["safe"]["held"] == pytest.approx(-1.0)


def test_the_benchmark_runs_end_to_end_and_writes_every_reward(check_credit, tiny_model_dir, tmp_path):
    out = tmp_path / "credit.json"
    result = check_credit.main(["--model", str(tiny_model_dir), "--n", "2", "--samples", "2", "--max-new-tokens", "6",
                                "--bootstrap", "3", "--variant", "every-risky", "--output", str(out)])
    assert result["responses"] == 4 and result["args"]["variant"] == "every-risky"
    assert torch.is_grad_enabled()  # the benchmark leaves the process as it found it
    written = json.loads(out.read_text())
    assert set(written["rewards"]) == {"correctness (GRPO)", "HMPO", "HMPO, add", "Kimi", "ThinkPrune 120"}
    # an untrained model writes no step: no decision to credit, written as null rather than NaN
    assert written["rewards"]["HMPO"]["risky"]["decisions"] == 0
    assert written["rewards"]["HMPO"]["risky"]["signal"] is None and written["rewards"]["HMPO"]["risky"]["signal_ci"] == [None, None]
