"""Generated bad inputs (JSONL rows, YAML configs, --set values, CLI numbers): each one ends the
CLI with exit code 2, exactly one ``error:`` line on stderr, no traceback, and no output written.

The CLI's ``main`` runs in-process (argparse errors included, which it returns as code 2), so
the suite runs hundreds of inputs in seconds; hypothesis runs derandomized, so every run tries the
same inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thinklean.cli import main
from thinklean.methods.config import AT_LEAST_ONE, NOT_NEGATIVE
from thinklean.train.rl import RLConfig

EXAMPLES = 150  # per test; four tests -> 600 bad inputs
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
RAN: Counter[str] = Counter()  # bad inputs tried, by test


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def assert_one_error(argv: list[str], workspace: Path, expected: str = "") -> str:
    """Run the CLI; assert exit 2, one ``error:`` line (containing ``expected``), no traceback and
    no new file under ``workspace``. Returns the error line."""
    before = files_under(workspace)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as e:  # main returns 2 for argparse errors; this catches any that escape it
            code = e.code
    lines = err.getvalue().splitlines()
    assert code == 2, (argv, err.getvalue())
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err.getvalue())
    assert "Traceback" not in err.getvalue() + out.getvalue()
    assert expected in lines[0], (expected, lines[0])
    assert files_under(workspace) == before, argv
    return lines[0]


# ----------------------------------------------------------------------------------- JSONL

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
NOT_TEXT = JSON_VALUES.filter(lambda v: not isinstance(v, str))
NOT_ANSWER = JSON_VALUES.filter(lambda v: isinstance(v, (bool, list, dict)) or v is None)
GOOD_ROW = json.dumps({"prompt": "What is 2 + 2?", "answer": "4"})


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return bool(text.strip())
    return False


BAD_LINES = st.one_of(
    st.text(st.characters(blacklist_characters="\n"), max_size=30).filter(_not_json),  # not JSON at all
    JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(json.dumps),  # JSON, but not an object
    st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("prompt", "question", "answer")), JSON_VALUES,
                    max_size=3).map(lambda d: json.dumps({**d, "answer": "1"})),  # no prompt
    NOT_TEXT.map(lambda v: json.dumps({"prompt": v, "answer": "1"})),  # prompt not a string
    st.text(" \t", max_size=3).map(lambda v: json.dumps({"prompt": v, "answer": "1"})),  # empty prompt
    NOT_ANSWER.map(lambda v: json.dumps({"prompt": "p", "answer": v})),  # answer neither text nor number
    st.sampled_from(["NaN", "Infinity", "-Infinity"]).map(lambda v: f'{{"prompt": "p", "answer": {v}}}'),
    st.binary(min_size=1, max_size=6).map(lambda b: b"\xff" + b).map(lambda b: b.decode("latin-1")),  # bad UTF-8
)


@FUZZ
@given(good=st.integers(0, 3), bad=BAD_LINES)
def test_malformed_jsonl_names_the_file_and_line(workspace, good, bad):
    data = workspace / "data.jsonl"
    raw = "".join(GOOD_ROW + "\n" for _ in range(good)) + bad + "\n"
    data.write_bytes(raw.encode("latin-1") if bad.startswith("\xff") else raw.encode("utf-8"))
    output = workspace / "out"
    line = assert_one_error(["eval", "--data", str(data), "--n", "0", "--output", str(output)], workspace,
                            expected=f"{data}:")
    assert line.startswith(f"error: {data}:{good + 1}:") or "no examples found" in line, line
    RAN["jsonl"] += 1


# -------------------------------------------------------------------------- YAML and --set

FIELDS = {f.name for f in dataclasses.fields(RLConfig)}
INT_KEYS = sorted(k for k in (*AT_LEAST_ONE, *NOT_NEGATIVE) if isinstance(getattr(RLConfig(), k), int))


def _yaml(value: object) -> str:
    return json.dumps(value)  # JSON is YAML: flow style on one line


def _not_a_number(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return True


WORD = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
BAD_SETTINGS = st.one_of(
    WORD.filter(lambda k: k not in FIELDS).map(lambda k: (k, "1")),  # unknown key
    st.tuples(st.sampled_from(INT_KEYS), st.integers(-10**6, 0).map(str)).filter(  # too small
        lambda kv: kv[0] in AT_LEAST_ONE or int(kv[1]) < 0),
    st.tuples(st.sampled_from(INT_KEYS), st.one_of(  # not an integer
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)).map(repr),
        st.sampled_from(["true", "null", "[1, 2]", "{a: 1}", "ten", "''"]))),
    st.tuples(st.just("lr"), st.one_of(  # not a positive finite number
        st.floats(max_value=0).map(repr), st.sampled_from([".nan", ".inf", "-.inf", "[]", "{}", "null", "true"]),
        st.text("abcxyz!?", min_size=1, max_size=6).filter(_not_a_number).map(_yaml))),
    st.tuples(st.sampled_from(["clip_high", "kl_coef", "grad_clip", "temperature"]),
              st.floats(max_value=-1e-9, allow_infinity=False).map(repr)),  # negative
    st.tuples(st.sampled_from(["reward_kwargs", "method_kwargs"]),
              st.sampled_from(["1", "[1]", "text", "true"])),  # not a mapping
)
BROKEN_YAML = st.sampled_from(["steps: [1, 2", "lr: {a: 1", "steps: 1\n  lr: 2", "[1, 2]", "just text", "- a\n- b",
                               "steps: 1\nsteps: 2", "1: 2", "? [a]\n: 1", "lr: !!python/object:os.system {}",
                               "\tsteps: 1", "steps: 'unclosed", "a: b: c", "@reserved: 1"])


@FUZZ
@given(setting=BAD_SETTINGS | BROKEN_YAML.map(lambda text: (None, text)), line=st.integers(0, 3))
def test_bad_yaml_configs_name_the_file_and_line(workspace, setting, line):
    key, value = setting
    config = workspace / "config.yaml"
    padding = "# comment\n" * line
    config.write_text(padding + (value if key is None else f"{key}: {value}") + "\n")
    text = assert_one_error(["train", "--config", str(config), "--output", str(workspace / "out")], workspace,
                            expected=f"{config}:")
    if key is not None:
        assert f"{config}:{line + 1}: " in text, text
    RAN["yaml"] += 1


SET_SYNTAX = st.one_of(
    WORD,  # no '='
    st.just("=1"),
    st.sampled_from(["{weight: 0.5", "[1, 2", "{a: [}", "'unclosed", "a: b: c", "\"x"]).map(
        lambda value: f"reward_kwargs={value}"),
)


@FUZZ
@given(pair=BAD_SETTINGS.map(lambda kv: f"{kv[0]}={kv[1]}") | SET_SYNTAX)
def test_bad_set_values_name_the_flag(workspace, pair):
    assert_one_error(["train", "--set", pair, "--output", str(workspace / "out")], workspace, expected="--set")
    RAN["set"] += 1


# ----------------------------------------------------------------------------- CLI numbers

# (command, flag, lowest accepted value, whether it takes integers only)
NUMBER_FLAGS = [
    ("train", "--steps", 1, True), ("train", "--prompts-per-step", 1, True), ("train", "--samples-per-prompt", 1, True),
    ("train", "--max-new-tokens", 1, True), ("train", "--eval-every", 0, True), ("train", "--lr", 0, False),
    ("sft", "--steps", 1, True), ("sft", "--batch-size", 1, True), ("sft", "--lr", 0, False),
    ("sft", "--save-every", 0, True), ("litereason-sft", "--epochs", 0, False),
    ("eval", "--n", 0, True), ("eval", "--max-new-tokens", 1, True), ("eval", "--samples", 1, True),
    ("eval", "--temperature", 0, False), ("eval", "--batch-size", 1, True),
    ("demo", "--n", 1, True), ("demo", "--steps", 1, True),
    ("data", "--n", 1, True), ("data", "--repair-rate", 0, False),
    ("analyze", "--n", 1, True), ("explain-tokens", "--max-new-tokens", 1, True),
]


@st.composite
def bad_numbers(draw: st.DrawFn) -> tuple[str, str, str]:
    command, flag, low, integer = draw(st.sampled_from(NUMBER_FLAGS))
    strict = not integer and low == 0 and flag in ("--lr", "--epochs")  # must be more than 0
    value = draw(st.one_of(
        st.integers(max_value=low - 1).map(str),
        *([st.just("0")] if strict else []),
        st.floats(max_value=low, allow_nan=False).filter(lambda f: f < low or strict).map(repr),  # -0.0 is 0
        st.sampled_from(["nan", "inf", "-inf", "", "ten", "1e", "0x10"]),
        *([st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)).map(repr)] if integer else []),
    ))
    return command, flag, value


@FUZZ
@given(case=bad_numbers())
def test_bad_numbers_name_the_flag(workspace, case):
    command, flag, value = case
    argv = [command, f"{flag}={value}", "--output", str(workspace / "out")]
    if command == "litereason-sft":
        argv += ["--data", str(workspace / "rows.jsonl")]
    assert_one_error(argv, workspace, expected=flag)
    RAN["numbers"] += 1


def test_the_fuzz_suite_tried_at_least_500_bad_inputs(capsys):
    if set(RAN) != {"jsonl", "yaml", "set", "numbers"}:
        pytest.skip("runs after the four fuzz tests of this module")
    total = sum(RAN.values())
    with capsys.disabled():
        print(f"\nfuzz suite: {total} generated bad inputs ({', '.join(f'{k} {v}' for k, v in RAN.items())}), "
              "each one error line, no traceback")
    assert total >= 500
