"""Answer extraction, number parsing, answer matching, grading and the format check."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import pytest

from thinklean.data.formats import no_think_response, think_response
from thinklean.data.grading import (
    answers_match,
    extract_answer,
    extract_boxed,
    format_ok,
    grade,
    grade_batch,
    parse_number,
    reasoning_span,
)

# --- extract_boxed -------------------------------------------------------------------------


def test_extract_boxed_matches_nested_braces():
    assert extract_boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{\sqrt{\frac{a}{b}}}") == r"\sqrt{\frac{a}{b}}"


def test_extract_boxed_is_none_without_a_box():
    assert extract_boxed("The answer is 12.") is None
    assert extract_boxed("") is None


def test_extract_boxed_takes_the_last_of_several_boxes():
    assert extract_boxed(r"\boxed{3} no wait \boxed{4} final: \boxed{ 5 }") == "5"


def test_extract_boxed_is_none_when_the_last_box_is_truncated():
    # An earlier complete box does not rescue a response cut off inside its final box.
    assert extract_boxed(r"\boxed{3} then \boxed{\frac{1}{2}") is None
    assert extract_boxed(r"\boxed{") is None


def test_extract_boxed_skips_escaped_braces_and_accepts_fbox():
    assert extract_boxed(r"\boxed{\{1, 2\}}") == r"\{1, 2\}"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed {8}") == "8"


# --- parse_number ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12", Fraction(12)),
        ("-3", Fraction(-3)),
        (" + 4 ", Fraction(4)),
        ("\u22125", Fraction(-5)),  # unicode minus sign
        ("2.50", Fraction(5, 2)),
        (".5", Fraction(1, 2)),
        ("12.", Fraction(12)),  # trailing period
        ("1,234", Fraction(1234)),
        ("-1,234,567.5", Fraction(-2469135, 2)),
        ("1{,}000", Fraction(1000)),
        (r"10\,000", Fraction(10000)),
        ("3/4", Fraction(3, 4)),
        ("-6 / 8", Fraction(-3, 4)),
        (r"\frac{1}{2}", Fraction(1, 2)),
        (r"\dfrac{-3}{ 4 }", Fraction(-3, 4)),
        (r"-\frac12", Fraction(-1, 2)),
        (r"\frac{1.5}{3}", Fraction(1, 2)),
        (r"$\frac{3}{6}$", Fraction(1, 2)),
        ("$$7$$", Fraction(7)),
        (r"\(8\)", Fraction(8)),
        (r"12 \text{ cm}", Fraction(12)),
        (r"12\,\text{cm}.", Fraction(12)),
        (r"\text{12}", Fraction(12)),
        (r"30^\circ", Fraction(30)),
        (r"30^{\circ}", Fraction(30)),
        (r"\$18.90", Fraction(189, 10)),
        ("{5}", Fraction(5)),
    ],
)
def test_parse_number_accepts_plain_numbers(text, value):
    assert parse_number(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        r"\pi",
        r"\sqrt{2}",
        r"50\%",  # a percentage changes the value; math_verify decides those
        "1,23",  # not a valid thousands grouping (could be a tuple)
        "1 234",
        "--3",
        "3/0",
        r"\frac{1}{0}",
        "1e3",
        r"12 \text{ or } 13",
        r"\text{(B)}",
        "9" * 5000,  # longer than MAX_ANSWER_CHARS, and beyond int()'s digit limit
    ],
)
def test_parse_number_rejects_non_numbers(text):
    assert parse_number(text) is None


# --- answers_match ---------------------------------------------------------------------------


def test_decimals_equal_to_integers_match():
    assert answers_match("2.0", "2")
    assert answers_match("2", "2.000")
    assert answers_match("-7", "-7.0")


def test_numbers_compare_exactly_not_approximately():
    assert not answers_match("0.333", "1/3")
    assert not answers_match("-2", "2")
    assert not answers_match("12", "13")


def test_fractions_and_thousands_separators_match_their_values():
    assert answers_match(r"\frac{1}{2}", "0.5")
    assert answers_match("2/4", r"\dfrac{1}{2}")
    assert answers_match("1,234", "1234")
    assert answers_match("$1{,}234$", "1234.0")


def test_math_verify_fallback_for_general_expressions():
    # Checked against math-verify 0.9: each pair below is equivalent there.
    assert answers_match(r"\sqrt{4}", "2")
    assert answers_match(r"\frac{\pi}{2}", r"\pi/2")
    assert answers_match(r"2\sqrt{2}", r"\sqrt{8}")
    assert answers_match("x+1", "1+x")
    assert answers_match("[1,2)", "[1, 2)")
    assert answers_match(r"50\%", "0.5")
    assert not answers_match("(1,2]", "[1,2)")
    assert not answers_match(r"\sqrt{2}", "1.41421")
    assert not answers_match("3", r"\pi")


def test_string_fallback_matches_text_answers():
    assert answers_match(r"\text{Monday}", "Monday")
    assert answers_match(r"\left( 1, 2 \right)", "(1,2)")


def test_empty_answers_never_match():
    assert not answers_match("", "")
    assert not answers_match("  ", "2")
    assert not answers_match("2", "")


def test_pathological_answers_return_false_quickly():
    start = time.perf_counter()
    assert not answers_match("1" * 5000, "1" * 5000)  # over MAX_ANSWER_CHARS
    assert not answers_match("{" * 300 + "2" + "}" * 300, "2")  # deeper than MAX_BRACE_DEPTH
    assert not grade(r"\boxed{" + "{" * 100_000, "2")  # unbalanced, never closed
    assert not grade(r"\boxed{" + "x+" * 2000 + "1}", "2")
    assert time.perf_counter() - start < 2.0


def test_answers_match_works_off_the_main_thread():
    # math_verify's signal-based timeout fails outside the main thread; ours switches it off there.
    results = []
    worker = threading.Thread(target=lambda: results.append(answers_match(r"\sqrt{4}", "2")))
    worker.start()
    worker.join()
    assert results == [True]


# --- grade -----------------------------------------------------------------------------------


def test_grade_reads_the_box_after_think():
    response = think_response("Start with 7. Add 5: 12.", 12)
    assert grade(response, "12")
    assert not grade(response, "13")


def test_grade_uses_the_last_box_of_the_response():
    response = r"<think> maybe \boxed{3} </think> \boxed{4}"
    assert grade(response, "4")
    assert not grade(response, "3")


def test_grade_is_false_without_a_box():
    assert not grade("<think> 7 + 5 = 12 </think> The answer is 12.", "12")


def test_grade_accepts_a_boxed_gold_answer():
    assert grade(no_think_response(-3), r"\boxed{-3}")


def test_grade_batch_grades_pairwise_and_checks_lengths():
    responses = [think_response("r", 1), no_think_response("2.0"), "no box"]
    assert grade_batch(responses, ["1", "2", "3"]) == [True, True, False]
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        grade_batch(responses[:2], ["1"])


# --- format_ok and reasoning_span ------------------------------------------------------------


def test_well_formed_think_and_no_think_responses_pass():
    assert format_ok(think_response("Start with 7. Add 5.", 12))
    assert format_ok(no_think_response(12))
    assert format_ok("  \n<think>\nline one\nline two\n</think>\nSo \\boxed{12}.")
    assert format_ok(think_response("r", 3) + "<|endoftext|><|pad|><|pad|>")


def test_implicit_thought_segments_are_allowed_in_reasoning():
    latent = "<implicit_thought>3</implicit_thought><implicit_thought>17</implicit_thought>"
    response = f"<think> Start. {latent}\nthen <implicit_thought> 4 </implicit_thought> </think> \\boxed{{5}}"
    assert format_ok(response)


@pytest.mark.parametrize(
    "response",
    [
        r"\boxed{12}",  # no mode tag
        r"<think> r \boxed{12}",  # think never closed
        r"<think> r </think> 12",  # no box after </think>
        r"<think> r \boxed{12} </think>",  # the box is inside the reasoning only
        r"<think> a </think> <think> b </think> \boxed{1}",  # two thinks
        r"<think> a <think> b </think> </think> \boxed{1}",  # nested thinks
        r"text first <think> r </think> \boxed{1}",  # does not start with the tag
        r"</think> <think> r \boxed{1}",  # tags out of order
        r"<think> r </think> <no_think> \boxed{1} </no_think>",  # both modes
        r"<no_think> <think> r </think> \boxed{1} </no_think>",  # no-think containing think
        r"<no_think> \boxed{1}",  # no-think never closed
        r"<no_think> 1 </no_think>",  # no-think without a box
        r"<no_think> \boxed{1} </no_think> more",  # text after </no_think>
        r"<no_think> <implicit_thought>3</implicit_thought> \boxed{1} </no_think>",
        r"<think> <implicit_thought>3 </think> \boxed{1}",  # unbalanced implicit tag
        r"<think> 3</implicit_thought> </think> \boxed{1}",  # stray closing implicit tag
        r"<think> <implicit_thought>x</implicit_thought> </think> \boxed{1}",  # N not digits
        r"<think> r </think> <implicit_thought>3</implicit_thought> \boxed{1}",  # after reasoning
        r"<think> r </think> \boxed{1",  # truncated box
        r"<think> r </think> \boxed{ }",  # empty box
        r"<no_think> \boxed{} </no_think>",  # empty box
    ],
)
def test_malformed_responses_fail_the_format_check(response):
    assert not format_ok(response)


def test_reasoning_span_is_the_text_between_the_think_tags():
    assert reasoning_span("<think>\n a\n b \n</think> \\boxed{1}") == "a\n b"
    assert reasoning_span(no_think_response(1)) == ""
    assert reasoning_span(r"\boxed{1}") == ""
    assert reasoning_span("<think> cut off here") == "cut off here"


@pytest.mark.parametrize("response, boxed, flexible", [
    ("so 3 + 4 = 7 apples.", None, "7"),                       # prose: only flexible finds it
    ("The answer is \\boxed{}. It is 7", "", "7"),             # an empty box falls through
    ("a \\boxed{12} and later 5", "12", "12"),                  # a non-empty box always wins
    ("it is -2.5 degrees", None, "-2.5"),                      # sign and decimals kept
    ("total: 1,234 dollars", None, "1234"),                    # thousands separators dropped
    ("10-3", None, "3"),                                       # subtraction, not -3
    ("answer: 12.", None, "12"),                               # sentence period is not a decimal
    ("no digits at all", None, None),
])
def test_extract_answer_by_hand(response, boxed, flexible):
    assert extract_answer(response) == boxed
    assert extract_answer(response, "flexible") == flexible


def test_flexible_grading_accepts_prose_answers_only_when_asked():
    assert not grade("Tom has 3 + 4 = 7 apples.", "7")
    assert grade("Tom has 3 + 4 = 7 apples.", "7", "flexible")
    assert not grade("Tom has 3 + 4 = 8 apples.", "7", "flexible")
    with pytest.raises(ValueError, match="extraction"):
        extract_answer("7", "last")
