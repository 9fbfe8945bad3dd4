"""Loading and writing user datasets: validation errors name the file and line."""

from __future__ import annotations

import json
import os

import pytest

from thinklean.data.jsonl import (
    DataError,
    Example,
    example_from_dict,
    example_to_dict,
    load_jsonl,
    write_jsonl,
)


def write_lines(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def load_error(path, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        load_jsonl(path, **kwargs)
    return info.value


GOOD = '{"prompt": "Start with 2. Add 3.", "answer": "5"}'
EXPECTED_KEYS = "expected keys: prompt, answer; optional: solution, difficulty"
ONE_OBJECT = 'expected one JSON object per line with "prompt" and "answer"'


def test_loads_examples_and_skips_blank_lines(tmp_path):
    full = '{"prompt": "p", "answer": "x+1", "solution": "s", "difficulty": 2}'
    path = write_lines(tmp_path, ["", GOOD, "   ", full, ""])
    assert load_jsonl(path) == [
        Example("Start with 2. Add 3.", "5"),
        Example("p", "x+1", solution="s", difficulty=2),
    ]


def test_numeric_answers_become_strings(tmp_path):
    path = write_lines(
        tmp_path,
        ['{"prompt": "a", "answer": 12}', '{"prompt": "b", "answer": 2.5}', '{"prompt": "c", "answer": -3}'],
    )
    assert [ex.answer for ex in load_jsonl(path)] == ["12", "2.5", "-3"]


def test_extra_fields_go_to_meta(tmp_path):
    path = write_lines(tmp_path, ['{"prompt": "p", "answer": "1", "id": 7, "source": "gsm", "tags": ["a"]}'])
    (example,) = load_jsonl(path)
    assert example.meta == {"id": 7, "source": "gsm", "tags": ["a"]}


def test_null_optional_fields_are_absent(tmp_path):
    path = write_lines(tmp_path, ['{"prompt": "p", "answer": "1", "solution": null, "difficulty": 0}'])
    assert load_jsonl(path) == [Example("p", "1", difficulty=0)]


def test_missing_answer_names_the_line_and_the_expected_keys(tmp_path):
    path = write_lines(tmp_path, [GOOD, "", '{"prompt": "p"}', GOOD])
    error = load_error(path)
    assert str(error) == f'{path}:3: field "answer" is missing ({EXPECTED_KEYS})'
    assert (error.path, error.line) == (str(path), 3)


def test_invalid_json_reports_line_and_column(tmp_path):
    path = write_lines(tmp_path, [GOOD, GOOD, GOOD, GOOD, '{"prompt": "p" "answer": "1"}'])
    error = load_error(path)
    assert str(error) == f"{path}:5: invalid JSON: Expecting ',' delimiter (column 16)"
    assert error.line == 5


def test_difficulty_must_be_an_integer(tmp_path):
    path = write_lines(tmp_path, [GOOD, '{"prompt": "p", "answer": "1", "difficulty": "hard"}'])
    assert str(load_error(path)) == f'{path}:2: field "difficulty" must be an integer, got str'
    path = write_lines(tmp_path, ['{"prompt": "p", "answer": "1", "difficulty": 2.0}'])
    assert str(load_error(path)) == f'{path}:1: field "difficulty" must be an integer, got float'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", f"line is not a JSON object, got list ({ONE_OBJECT})"),
        ('"just text"', f"line is not a JSON object, got str ({ONE_OBJECT})"),
        ('{"answer": "1"}', f'field "prompt" is missing ({EXPECTED_KEYS})'),
        ('{"prompt": "", "answer": "1"}', 'field "prompt" is empty (expected a non-empty string)'),
        ('{"prompt": "p", "answer": "  "}', 'field "answer" is empty (expected a non-empty string)'),
        ('{"prompt": 3, "answer": "1"}', 'field "prompt" must be a string, got int'),
        ('{"prompt": "p", "answer": true}', 'field "answer" must be a string or a number, got bool'),
        ('{"prompt": "p", "answer": null}', 'field "answer" must be a string or a number, got null'),
        ('{"prompt": "p", "answer": [1]}', 'field "answer" must be a string or a number, got list'),
        ('{"prompt": "p", "answer": NaN}', 'field "answer" must be a finite number, got nan'),
        ('{"prompt": "p", "answer": "1", "solution": 5}', 'field "solution" must be a string, got int'),
        ('{"prompt": "p", "answer": "1", "difficulty": true}', 'field "difficulty" must be an integer, got bool'),
        ('{"prompt": "p", "answer": "1", "masked_spans": [[0, 1]]}',
         'field "masked_spans" needs a "solution" (its spans are character offsets into it)'),
        ('{"prompt": "p", "answer": "1", "solution": "12 = 13", "masked_spans": [[5, 9]]}',
         'field "masked_spans": entry [5, 9] is not [start, end) with 0 <= start < end <= 7 (character offsets into solution)'),
        ('{"prompt": "p", "answer": "1", "solution": "12 = 13", "masked_spans": {"a": 1}}',
         'field "masked_spans" must be a list of [start, end] pairs, got dict'),
    ],
)
def test_each_bad_line_kind_is_reported_at_its_line(tmp_path, line, message):
    path = write_lines(tmp_path, [GOOD, GOOD, line, GOOD])
    error = load_error(path)
    assert str(error) == f"{path}:3: {message}"
    assert error.line == 3


def test_require_solution_reports_the_first_example_without_one(tmp_path):
    with_solution = '{"prompt": "p", "answer": "1", "solution": "1"}'
    path = write_lines(tmp_path, [with_solution, '{"prompt": "p", "answer": "1", "solution": null}'])
    expected = "expected keys: prompt, answer, solution; optional: difficulty"
    assert str(load_error(path, require_solution=True)) == f'{path}:2: field "solution" is missing ({expected})'
    assert len(load_jsonl(path)) == 2


def test_empty_file_has_no_examples(tmp_path):
    expected = f"no examples found ({ONE_OBJECT})"
    for content in ["", "\n\n  \n"]:
        path = tmp_path / "empty.jsonl"
        path.write_text(content, encoding="utf-8")
        assert str(load_error(path)) == f"{path}:1: {expected}"


def test_missing_file_is_a_data_error_at_line_zero(tmp_path):
    path = tmp_path / "nope.jsonl"
    error = load_error(path)
    assert str(error) == f"{path}:0: file not found (expected a JSON Lines file)"
    assert error.line == 0


def test_invalid_utf8_is_reported_at_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD.encode() + b'\n{"prompt": "\xff", "answer": "1"}\n')
    assert str(load_error(path)) == f"{path}:2: invalid UTF-8 at byte 13 (expected UTF-8 text)"


def test_byte_order_mark_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\r\n" + GOOD.encode() + b"\r\n")
    assert len(load_jsonl(path)) == 2


def test_limit_stops_reading_before_later_bad_lines(tmp_path):
    path = write_lines(tmp_path, [GOOD, GOOD, "not json"])
    assert len(load_jsonl(path, limit=2)) == 2
    assert load_error(path, limit=3).line == 3
    with pytest.raises(ValueError, match="limit"):
        load_jsonl(path, limit=0)


def test_example_from_dict_labels_errors_with_the_given_location():
    with pytest.raises(DataError, match=r'^train\.jsonl:9: field "answer" is missing'):
        example_from_dict({"prompt": "p"}, path="train.jsonl", line=9)


def test_write_then_load_round_trips(tmp_path):
    examples = [
        Example("Start with 7. Add 5.", "12"),
        Example("p ünïcode", "\\frac{1}{2}", solution="half", difficulty=3, meta={"id": 1, "tags": ["x"]}),
    ]
    path = tmp_path / "out" / "round.jsonl"
    assert write_jsonl(path, examples) == 2
    assert load_jsonl(path) == examples
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert json.loads(first_line) == {"prompt": "Start with 7. Add 5.", "answer": "12"}


def test_example_to_dict_flattens_meta_and_omits_missing_fields():
    assert example_to_dict(Example("p", "1", meta={"id": 4})) == {"prompt": "p", "answer": "1", "id": 4}
    with pytest.raises(ValueError, match="answer"):
        example_to_dict(Example("p", "1", meta={"answer": "2"}))


def test_write_is_atomic_when_a_row_is_not_serialisable(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"a": 1}])
    before = path.read_bytes()
    with pytest.raises(DataError, match=r"rows\.jsonl:2: row is not JSON-serialisable"):
        write_jsonl(path, [{"a": 2}, {"b": {1, 2}}, {"c": 3}])
    assert path.read_bytes() == before  # the previous file is untouched
    assert os.listdir(tmp_path) == ["rows.jsonl"]  # no temporary file left behind

    fresh = tmp_path / "fresh.jsonl"
    with pytest.raises(DataError, match=r"fresh\.jsonl:1: "):
        write_jsonl(fresh, [{"x": float("nan")}])
    assert not fresh.exists()
    with pytest.raises(DataError, match="row is a list"):
        write_jsonl(fresh, [[1, 2]])
    assert sorted(os.listdir(tmp_path)) == ["rows.jsonl"]
