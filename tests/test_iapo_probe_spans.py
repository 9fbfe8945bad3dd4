"""benchmarks/iapo_probe_spans.py: span labels and the early-exit mix by hand, and a smoke run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import iapo_probe_spans as spans  # noqa: E402

from thinklean.data.arith import parse_question, parse_steps  # noqa: E402
from thinklean.data.formats import THINK, THINK_END  # noqa: E402


def test_char_kinds_labels_steps_checks_and_repairs():
    text = ("<think> 12 + 3 = 15. Double-check: 15 - 3 = 12. Correct. 150 * 4 = 610. Let me check: "
            "100 * 4 = 400, 50 * 4 = 200, 400 + 200 = 600. The result is 600. </think> \\boxed{600}")
    kinds = spans.char_kinds(text)
    assert kinds[text.index("12 + 3")] == "safe step"
    assert kinds[text.index("Double-check")] == "check chosen after safe"
    assert kinds[text.index("Let me")] == "check chosen after risky"
    assert kinds[text.index("15 - 3")] == "safe check"
    assert kinds[text.index("150 * 4")] == "risky step"
    assert kinds[text.index("me check")] == "risky check, repairing"  # 610 first, 600 carried
    assert kinds[text.index("</think>")] == "other" and kinds[0] == "other"
    # unchecked steps: the choice not to check is the next step's first number
    terse = "<think> 12 + 3 = 15. 15 * 4 = 60. 60 + 1 = 61. </think> \\boxed{61}"
    kinds = spans.char_kinds(terse)
    assert kinds[terse.index(" 15 *")] == kinds[terse.index("5 *")] == "no check after safe"
    assert kinds[terse.index(" * 4")] == "risky step"
    assert kinds[terse.index("60 +")] == "no check after risky" and kinds[terse.index("61.")] == "safe step"


def test_early_exit_rows_answer_the_true_result_from_a_cut_trace():
    rows = spans.early_exit_mix(40, 0.5)
    cut = [r for r in rows if r["style"] == "early-exit"]
    assert len(rows) == 40 and len(cut) == 20
    for row in cut:
        solution, (span,) = row["solution"], row["masked_spans"]
        assert span[0] == 0 and solution[span[1]:] == row["answer"] + "}"  # only the answer is trained
        assert solution.startswith(THINK) and solution[: span[1]].endswith(f" {THINK_END} \\boxed{{")
        assert row["answer"] == str(parse_question(row["prompt"]).answer)
    assert any(len(parse_steps(r["solution"])[0]) < len(parse_question(r["prompt"]).ops) for r in cut)


def test_smoke_run_counts_every_response_token(tmp_path):
    result = spans.main(["--model", "base", "--n", "3", "--output", str(tmp_path / "spans.json")])
    assert result["responses"] == 3 and (tmp_path / "spans.json").is_file()
    assert sum(result["tokens"].values()) > 0
    gains = result["mean_gain_per_token"]["all answer tokens"]
    assert set(gains) == set(spans.KINDS) == set(result["mean_policy_entropy"])
    assert all(0.0 <= row["mean_p_check"] <= 1.0 for row in result["choice_to_check"].values())


def test_check_probabilities_by_hand():
    # vocabulary of 4; tokens 1 and 2 opened checks where a check was chosen
    choices = [("check chosen after risky", 1, torch.tensor([0.0, 0.5, 0.3, 0.2])),
               ("check chosen after safe", 2, torch.tensor([0.0, 0.9, 0.05, 0.05])),
               ("no check after safe", 3, torch.tensor([0.02, 0.01, 0.02, 0.95])),
               ("no check after safe", 3, torch.tensor([0.0, 0.5, 0.0, 0.5]))]
    out = spans.check_probabilities(choices)
    assert out["check chosen after risky"] == {"n": 1, "mean_p_check": pytest.approx(0.8), "undecided": 1.0}
    assert abs(out["check chosen after safe"]["mean_p_check"] - 0.95) < 1e-6
    assert out["check chosen after safe"]["undecided"] == 0.0
    assert abs(out["no check after safe"]["mean_p_check"] - (0.03 + 0.5) / 2) < 1e-6
    assert out["no check after safe"]["undecided"] == 0.5 and "no check after risky" not in out
