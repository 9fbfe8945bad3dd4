import random

import pytest

from thinklean.data.arith import (
    STYLES,
    ArithProblem,
    generate_problems,
    render_reasoning,
    sft_records,
    solution_text,
)
from thinklean.data.formats import EOS, THINK, THINK_END


def test_problem_text_and_answer_worked_by_hand():
    p = ArithProblem(7, (("+", 5), ("*", 3), ("-", 4)))
    assert p.question == "Start with 7. Add 5. Multiply by 3. Subtract 4. What is the result?"
    # 7 + 5 = 12; 12 * 3 = 36; 36 - 4 = 32
    assert p.values() == [7, 12, 36, 32]
    assert p.answer == 32 and p.difficulty == 3


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
    # Every 1-operation problem, enumerated by hand from the generator's rules (start 1-50;
    # +/- 1-9 within 0-99; * 2, 3 up to 99; / 2, 3 when exact), then split by the hash.
    one_op = []
    for start in range(1, 51):
        ops = [("+", k) for k in range(1, 10) if start + k <= 99] + [("-", k) for k in range(1, 10) if start - k >= 0]
        ops += [("*", k) for k in (2, 3) if start * k <= 99] + [("/", k) for k in (2, 3) if start % k == 0]
        one_op += [ArithProblem(start, (op,)) for op in ops]
    n_test = sum(p.split == "test" for p in one_op)
    with pytest.raises(ValueError, match=rf"found only {n_test} distinct test problems with 1 operation.*need 500 of each"):
        generate_problems(3000, "test")
    assert len(generate_problems(6 * n_test, "test")) == 6 * n_test


def test_difficulties_cycle_and_values_stay_small():
    problems = generate_problems(120, "test", seed=1)
    assert sorted({p.difficulty for p in problems}) == [1, 2, 3, 4, 5, 6]
    for p in problems:
        assert all(0 <= v <= 99 for v in p.values())


def test_terse_reasoning_for_a_known_problem():
    p = ArithProblem(12, (("+", 8), ("*", 3)))
    assert render_reasoning(p, "terse", random.Random(0)) == "12 + 8 = 20. 20 * 3 = 60."
    assert solution_text(p, "terse", random.Random(0)) == f"{THINK} 12 + 8 = 20. 20 * 3 = 60. {THINK_END} \\boxed{{60}}"


def test_verbose_style_is_at_least_twice_as_long_as_terse():
    rng = random.Random(0)
    problems = generate_problems(60, "train", seed=0)
    terse = sum(len(render_reasoning(p, "terse", rng)) for p in problems)
    verbose = sum(len(render_reasoning(p, "verbose", rng)) for p in problems)
    assert verbose >= 2 * terse


def test_sft_records_mix_styles_and_carry_answers():
    rows = sft_records(300, seed=0)
    assert {r["style"] for r in rows} == set(STYLES)
    for r in rows[:20]:
        assert r["solution"].endswith(f"\\boxed{{{r['answer']}}}")
        assert EOS not in r["solution"]
