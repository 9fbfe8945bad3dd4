import random

import pytest

from thinklean.data.arith import (
    BASE_STYLE_WEIGHTS,
    EVERY_RISKY,
    STYLES,
    TWO_DIGIT,
    X7X9,
    X7X9_KINDS,
    X7X9_KINDS_NI,
    X7X9_RESTATE,
    ArithProblem,
    detect_style,
    generate_problems,
    parse_question,
    parse_steps,
    render_reasoning,
    render_trace,
    sft_records,
    solution_text,
    wrong_product,
)
from thinklean.data.formats import EOS, THINK, THINK_END
from thinklean.eval.metrics import ResponseRecord
from thinklean.eval.steps import step_stats, style_stats


def test_problem_text_answer_and_risky_steps_worked_by_hand():
    p = ArithProblem(7, (("+", 5), ("*", 3), ("-", 4)))
    assert p.question == "Start with 7. Add 5. Multiply by 3. Subtract 4. What is the result?"
    # 7 + 5 = 12; 12 * 3 = 36; 36 - 4 = 32
    assert p.values() == [7, 12, 36, 32]
    assert p.answer == 32 and p.difficulty == 3
    assert p.risky_steps == (1,)


def test_generator_is_deterministic_per_seed():
    a = generate_problems(50, "train", seed=3)
    b = generate_problems(50, "train", seed=3)
    c = generate_problems(50, "train", seed=4)
    assert a == b
    assert a != c


def test_train_and_test_splits_are_disjoint():
    train = {p.question for p in generate_problems(3000, "train", seed=0, distinct=False)}
    test = {p.question for p in generate_problems(500, "test", seed=0)}
    assert len(test) == 500
    assert not train & test


def test_asking_for_more_distinct_problems_than_exist_names_the_short_difficulty():
    # Every 1-operation problem of the task, enumerated by hand from the generator's rules (start
    # 100-999; +/- 1-9; * 7 or 9), then split by the hash.
    one_op = [ArithProblem(start, (op,)) for start in range(100, 1000)
              for op in [*(("+", k) for k in range(1, 10)), *(("-", k) for k in range(1, 10)), ("*", 7), ("*", 9)]]
    n_test = sum(p.split == "test" for p in one_op)
    with pytest.raises(ValueError, match=rf"found only {n_test} distinct test problems with 1 operation.*need 2500 of each"):
        generate_problems(15_000, "test", difficulties=(1, 2, 3, 4, 5, 6))


def test_values_stay_in_range_and_only_two_digit_values_are_multiplied():
    problems = generate_problems(600, "test", seed=1)
    assert sorted({p.difficulty for p in problems}) == [1, 2, 3, 4, 5, 6]
    multiplied = 0
    for p in problems:
        values = p.values()
        assert all(0 <= v <= 9999 for v in values)
        for (symbol, k), before in zip(p.ops, values):
            if symbol == "*":
                multiplied += 1
                assert 100 <= before <= 999 and 4 <= k <= 9
            else:
                assert 1 <= k <= 9
    assert multiplied > 100


def test_the_every_risky_control_arm_opens_every_problem_with_a_multiplication_by_7_or_9():
    problems = generate_problems(120, "test", seed=0, variant=EVERY_RISKY)
    assert sorted({p.difficulty for p in problems}) == [1, 2, 3, 4, 5, 6]
    # the start (100-999) is always multipliable, and a multiplication is taken whenever legal
    assert all(p.ops[0][0] == "*" and p.ops[0][1] in (7, 9) for p in problems)
    # a second one only where the first product stays under 1000 (start 100-142 times 7)
    for p in problems:
        assert all(k in (7, 9) for s, k in p.ops if s == "*")
        assert len(p.risky_steps) == 1 or p.start * p.ops[0][1] <= 999


def _has_inverse_pair(p: ArithProblem) -> bool:
    return any({a[0], b[0]} == {"+", "-"} and a[1] == b[1] for a, b in zip(p.ops, p.ops[1:]))


def test_without_inverse_pairs_no_safe_step_undoes_the_one_before_it():
    with_pairs = generate_problems(600, "test", 0, variant=X7X9_KINDS)
    assert sum(map(_has_inverse_pair, with_pairs)) >= 20  # the rule has something to remove
    without = generate_problems(600, "test", 0, variant=X7X9_KINDS_NI)
    assert not any(map(_has_inverse_pair, without))
    assert {p.difficulty for p in without} == {1, 2, 3, 4, 5, 6}
    assert {k for p in without for s, k in p.ops if s == "*"} == {7, 9}


def test_restate_variant_lengthens_only_the_safe_checks():
    problems = generate_problems(50, "test", 0, variant=X7X9_RESTATE)
    assert problems == generate_problems(50, "test", 0)  # the task's problems, written differently
    p = ArithProblem(347, (("*", 7), ("+", 5)))
    full = render_reasoning(p, "full", random.Random(0), variant=X7X9_RESTATE)
    safe_check = full.split("2429 + 5 = 2434. ")[1]
    assert safe_check in {f"Double-check: 2434 - 5 = 2429. {c} The result is 2434." for c in ("Correct.", "Yes.", "Good.")}
    steps, parsed = parse_steps(full)
    assert parsed and [s.checked for s in steps] == [True, True] and detect_style(full) == "full"
    # a response that checks only the risky steps reads the same in both variants
    assert render_reasoning(p, "risky", random.Random(1), variant=X7X9_RESTATE) == render_reasoning(
        p, "risky", random.Random(1))


def test_styles_check_the_steps_they_name():
    p = ArithProblem(347, (("*", 6), ("+", 5)))
    rng = random.Random(0)
    assert render_reasoning(p, "terse", rng) == "347 * 6 = 2082. 2082 + 5 = 2087."
    full = render_reasoning(p, "full", rng)
    # the risky step is recomputed by hundreds and the rest, the safe one by its inverse
    assert "347 * 6 = 2082. " in full and "300 * 6 = 1800, 47 * 6 = 282, 1800 + 282 = 2082." in full
    assert "2082 + 5 = 2087. " in full and "2087 - 5 = 2082." in full
    risky = render_reasoning(p, "risky", rng)
    assert "1800 + 282 = 2082." in risky and "2087 - 5" not in risky and risky.endswith("2082 + 5 = 2087.")
    assert solution_text(p, "terse", rng) == f"{THINK} 347 * 6 = 2082. 2082 + 5 = 2087. {THINK_END} \\boxed{{2087}}"
    # the first build stage's variant: tens and units, safe checks restate the result
    two = render_reasoning(ArithProblem(47, (("*", 6), ("+", 5))), "full", rng, variant=TWO_DIGIT)
    assert "40 * 6 = 240, 7 * 6 = 42, 240 + 42 = 282." in two and two.endswith("The result is 287.")
    assert parse_steps(two)[1]


def test_a_repaired_step_is_written_wrong_then_fixed_and_the_wrong_digits_are_the_span():
    p = ArithProblem(347, (("*", 6), ("+", 5)))
    text, spans = render_trace(p, "full", random.Random(0), repair_rate=1.0)
    assert len(spans) == 1
    (start, end), = spans
    wrong = int(text[start:end])
    assert wrong != 2082 and text.startswith(f"347 * 6 = {wrong}.")
    # the check carries its own sum forward
    assert "1800 + 282 = 2082. The result is 2082. 2082 + 5 = 2087." in text
    steps, ok = parse_steps(text)
    assert ok and [(s.first, s.final, s.checked) for s in steps] == [(wrong, 2082, True), (2087, 2087, True)]
    # the two-digit build stage's check compares instead: it confirms or repairs
    two, _ = render_trace(ArithProblem(47, (("*", 6),)), "full", random.Random(0), repair_rate=1.0, variant=TWO_DIGIT)
    assert two.endswith("240 + 42 = 282. Wait, the result is 282.")
    right = render_reasoning(ArithProblem(47, (("*", 6),)), "full", random.Random(0), variant=TWO_DIGIT)
    assert right.endswith(("282. Correct.", "282. Yes.", "282. Good."))
    right_task = render_reasoning(p, "full", random.Random(0))
    assert "1800 + 282 = 2082. The result is 2082. 2082 + 5 = 2087." in right_task


def test_wrong_products_change_one_digit_by_one_or_two():
    rng = random.Random(1)
    for right in (282, 40, 1200, 8991):
        for _ in range(50):
            wrong = wrong_product(right, rng)
            diff = abs(wrong - right)
            assert wrong >= 0 and diff in (1, 2, 10, 20, 100, 200, 1000, 2000)


def test_sft_records_mix_styles_carry_answers_and_mask_only_wrong_digits():
    rows = sft_records(600, seed=0, repair_rate=0.3)
    assert {r["style"] for r in rows} == set(BASE_STYLE_WEIGHTS) == {"partial", "risky"}
    # drawn 4:1 (600 rows: 480 expected partial, sd about 10)
    assert 430 < sum(r["style"] == "partial" for r in rows) < 530
    masked = 0
    for r in rows:
        assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}") and EOS not in r["solution"]
        assert r["risky_steps"] == [i for i, s in enumerate(parse_steps(r["solution"])[0]) if s.op == "*"]
        for a, b in r["masked_spans"]:
            masked += 1
            assert r["solution"][a:b].isdigit() and r["solution"][b] == "."
    assert masked > 20
    assert all("masked_spans" not in r for r in sft_records(20, seed=0))


def test_kind_openers_check_rate_and_masked_products_write_what_they_say():
    p = ArithProblem(347, (("*", 7), ("+", 5), ("-", 2)))
    # 347 * 7 = 2429; 2429 + 5 = 2434; 2434 - 2 = 2432
    text, spans = render_trace(p, "full", random.Random(0), variant=X7X9_KINDS, mask_products=True)
    steps, ok = parse_steps(text)
    assert ok and [(s.first, s.checked) for s in steps] == [(2429, True), (2434, True), (2432, True)]
    assert text.startswith(("347 * 7 = 2429. Let me check:", "347 * 7 = 2429. Wait, let me verify:"))
    assert "2429 + 5 = 2434. Double-check: 2434 - 5 = 2429." in text
    assert text.count("Double-check:") == 2
    # the product is masked although it is right and no repair was drawn
    assert [text[a:b] for a, b in spans] == ["2429"] and text[spans[0][1]] == "."
    # ... and unchecked: terse masks it too
    terse, terse_spans = render_trace(p, "terse", random.Random(0), mask_products=True)
    assert terse == "347 * 7 = 2429. 2429 + 5 = 2434. 2434 - 2 = 2432." and terse_spans == [(10, 14)]
    # check_rate: 'partial' checks each step with that chance, independently
    assert parse_steps(render_trace(p, "partial", random.Random(0), check_rate=1.0)[0])[0][2].checked
    assert detect_style(THINK + render_trace(p, "partial", random.Random(0), check_rate=0.0)[0]) == "terse"
    rows = sft_records(400, seed=1, style_weights={"partial": 1.0}, variant=X7X9, check_rate=0.8)
    checked = [s.checked for r in rows for s in parse_steps(r["solution"])[0]]
    assert 0.76 < sum(checked) / len(checked) < 0.84 and len(checked) > 1000
    masked = sft_records(50, seed=1, variant=X7X9, mask_products=True)
    assert all(len(r["masked_spans"]) == len(r["risky_steps"]) for r in masked)
    assert sum(len(r["risky_steps"]) for r in masked) > 10
    # the variant draws X7X9's problems
    assert [r["prompt"] for r in masked] == [r["prompt"] for r in sft_records(50, seed=1, variant=X7X9_KINDS)]


def test_detect_style_reads_which_steps_were_checked():
    p = ArithProblem(347, (("*", 6), ("+", 5), ("-", 2)))
    for style in ("terse", "full", "risky"):
        assert detect_style(solution_text(p, style, random.Random(0))) == style
    partial = "<think> 347 * 6 = 2082. 2082 + 5 = 2087. Double-check: 2087 - 5 = 2082. Yes. 2087 - 2 = 2085. </think>"
    assert detect_style(partial) == "partial"
    assert set(STYLES) == {"terse", "partial", "full", "risky"}


def test_parse_stops_at_text_that_is_no_step():
    steps, ok = parse_steps("<think> 12 + 3 = 15. 15 * 4 = 60. So the answer </think> \\boxed{60}")
    assert not ok and [s.first for s in steps] == [15, 60]


def test_step_stats_by_hand():
    texts = [
        # risky step wrong, repaired by its check; safe step right, unchecked
        "<think> 47 * 6 = 272. Let me check: 40 * 6 = 240, 7 * 6 = 42, 240 + 42 = 282. Wait, the result is 282. "
        "282 + 5 = 287. </think> \\boxed{287}",
        # risky step wrong and unchecked; safe step wrong (from the value written), checked
        "<think> 12 * 7 = 74. 74 - 1 = 72. Good. </think>",  # the "Good." is no check: parsing stops there
        # risky step right, checked, and the check breaks it
        "<think> 13 * 4 = 52. Double-check: 10 * 4 = 40, 3 * 4 = 12, 40 + 12 = 51. Wait, the result is 51. </think>",
    ]
    question = "Start with 47. Multiply by 6. Add 5. What is the result?"
    stats = step_stats([(question, texts[0]), ("Start with 12. Multiply by 7. Subtract 1. What is the result?", texts[1]),
                        ("a question of another task", texts[2])])
    risky, safe = stats["risky"], stats["safe"]
    assert risky["steps"] == 3 and risky["checked"] == 2
    assert risky["first_error_rate"] == pytest.approx(2 / 3)
    assert risky["unchecked_error_rate"] == 1.0  # 12 * 7 = 74
    assert risky["checked_error_rate"] == pytest.approx(1 / 2)  # 282 right, 51 wrong
    assert (risky["repaired"], risky["broken"]) == (1, 1)
    assert safe["steps"] == 2 and safe["checked"] == 0 and safe["unchecked_error_rate"] == pytest.approx(1 / 2)
    assert stats["*6"]["steps"] == 1 and stats["*7"]["unchecked_error_rate"] == 1.0
    # the third check's sum is wrong (40 + 12 = 51) and it replaced a right result by it
    assert risky["check_faults"] == {"split": 0, "high_product": 0, "low_product": 0, "sum": 1, "missed": 0,
                                     "false_alarm": 1}
    missed = "<think> 47 * 6 = 272. Let me check: 40 * 6 = 240, 7 * 6 = 42, 240 + 42 = 282. Correct. </think>"
    assert step_stats([(question, missed)])["risky"]["check_faults"]["missed"] == 1
    miscopied = "<think> 47 * 6 = 282. Let me check: 40 * 6 = 240, 7 * 6 = 42, 240 + 42 = 282. The result is 292. </think>"
    faults = step_stats([(question, miscopied)])["risky"]["check_faults"]
    assert faults["missed"] == 1 and faults["false_alarm"] == 1 and faults["sum"] == 0
    assert safe["check_faults"] is None
    # the first two questions parse; both responses follow them; the second stops parsing early
    assert stats["reading"] == {"responses": 2, "misread_rate": 0.0, "skipped_rate": 0.0, "unparsed_rate": 0.5}
    misread = step_stats([(question, "<think> 47 * 6 = 282. 282 + 6 = 288. </think>")])["reading"]
    assert (misread["misread_rate"], misread["skipped_rate"]) == (1.0, 0.0)  # an operand changed
    three = "Start with 47. Add 5. Subtract 5. Add 2. What is the result?"
    skips = [(three, "<think> 47 + 2 = 49. </think>"),  # the inverse pair left out: skipped
             (three, "<think> 47 - 5 = 42. 42 + 5 = 47. 47 + 2 = 49. </think>"),  # the order changed
             (three, "<think> 47 + 2 = 49. 49 + 5 = 54. </think>")]  # fewer steps, out of order
    assert step_stats(skips)["reading"]["misread_rate"] == 1.0
    assert step_stats(skips)["reading"]["skipped_rate"] == pytest.approx(1 / 3)
    assert step_stats([(question, "no steps at all")]) == {}


def test_style_stats_gives_each_style_its_own_step_error_rates():
    question = "Start with 47. Multiply by 6. Add 5. What is the result?"
    risky_check = "47 * 6 = 272. Let me check: 40 * 6 = 240, 7 * 6 = 42, 240 + 42 = {}. The result is {}."
    full = f"<think> {risky_check.format(282, 282)} 282 + 5 = 287. Double-check: 287 - 5 = 282. Correct. </think>"
    risky_only = f"<think> {risky_check.format(272, 272)} 272 + 5 = 277. </think>"  # the check's sum wrong

    def record(text: str, correct: bool) -> ResponseRecord:
        return ResponseRecord(prompt_index=0, difficulty=2, correct=correct, format_ok=True, response_tokens=10,
                              reasoning_tokens=8, mode="think", finished=True, text=text)

    records = [record(full, True), record(risky_only, False), record(risky_only, False)]
    by_style = style_stats(records, [question])
    assert set(by_style) == {"full", "risky"}
    assert (by_style["full"]["n"], by_style["risky"]["n"]) == (1, 2)
    assert by_style["full"]["steps"]["risky"]["checked_error_rate"] == 0.0
    assert by_style["risky"]["steps"]["risky"]["checked_error_rate"] == 1.0
    assert by_style["risky"]["steps"]["risky"]["check_faults"]["sum"] == 2
    assert "steps" not in style_stats(records)["full"]  # without the questions: no step statistics


def test_questions_parse_back_to_their_problems():
    for p in generate_problems(60, "test", seed=2):
        assert parse_question(p.question) == p
    assert parse_question("What is 2 + 2?") is None


def test_parse_steps_gives_character_spans_of_steps_and_checks():
    text = "<think>  12 + 3 = 15. Double-check: 15 - 3 = 12. Correct. 15 * 4 = 60. </think> \\boxed{60}"
    (safe, risky), ok = parse_steps(text)
    assert ok
    assert text[slice(*safe.span)] == "12 + 3 = 15."
    assert text[slice(*safe.check_span)] == " Double-check: 15 - 3 = 12. Correct."
    assert text[slice(*risky.span)] == "15 * 4 = 60." and risky.check_span is None
