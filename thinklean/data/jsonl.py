"""User datasets as JSON Lines: one object per line with ``prompt`` and ``answer``.

Optional fields are ``solution`` (a worked solution, needed for SFT) and ``difficulty`` (an
integer); any other field is kept in :attr:`Example.meta`. Loading stops at the first bad line
with a :class:`DataError` whose message is ``FILE:LINE: what was wrong (what was expected)``.
A line may hold at most :data:`MAX_LINE_BYTES` (1 MiB); a longer one stops loading after that
many bytes, without being read whole.

GSM8K-style rows load as they are: ``question`` stands for ``prompt`` when there is no
``prompt``, and an answer holding a worked solution ending in ``#### 72`` is reduced to the
final answer after the mark (:func:`gsm8k_final_answer`). ``prompt_field`` / ``answer_field``
read the prompt and answer from fields of other names.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED_KEYS = ("prompt", "answer")
OPTIONAL_KEYS = ("solution", "difficulty")
_ONE_OBJECT = 'expected one JSON object per line with "prompt" and "answer"'
GSM8K_MARK = "####"
MAX_LINE_BYTES = 1 << 20  # 1 MiB: far above any prompt a model here can take


@dataclass(frozen=True)
class Example:
    """One problem: the prompt, its gold answer (a string), and optional extras. ``line`` is the
    1-based line of the JSONL file (or row of the table) it was read from, 0 otherwise, for error
    messages."""

    prompt: str
    answer: str
    solution: str | None = None
    difficulty: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    line: int = field(default=0, compare=False)


class DataError(ValueError):
    """A problem in a data file, reported as ``FILE:LINE: what was wrong (what was expected)``.

    ``line`` is 1-based; 0 means the file as a whole (missing or unreadable).
    """

    def __init__(self, path: str | os.PathLike[str], line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        super().__init__(f"{self.path}:{line}: {message}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _expected_keys(require_solution: bool, prompt_field: str = "prompt", answer_field: str = "answer") -> str:
    required = [prompt_field, answer_field, *(["solution"] if require_solution else [])]
    optional = [key for key in OPTIONAL_KEYS if key not in required]
    return f"expected keys: {', '.join(required)}; optional: {', '.join(optional)}"


def gsm8k_final_answer(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after the last ``####``, with thousands
    separators removed (``"... #### 1,234"`` -> ``"1234"``); ``""`` when nothing follows."""
    final = answer.rpartition(GSM8K_MARK)[2].strip()
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", final)


def example_from_dict(
    row: Mapping[str, Any],
    *,
    require_solution: bool = False,
    path: str | os.PathLike[str] = "<row>",
    line: int = 0,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
) -> Example:
    """Validate one decoded row and build an :class:`Example`; :class:`DataError` if invalid.

    ``answer`` may be a JSON number (``12`` -> ``"12"``, ``2.5`` -> ``"2.5"``), never a boolean.
    GSM8K rows: ``question`` is read as ``prompt`` when ``prompt`` is absent, and an answer
    containing ``####`` becomes the final answer after it. The prompt and answer are read from
    ``prompt_field`` and ``answer_field`` (errors name those fields). ``path`` and ``line`` only
    label the error.
    """
    names = {"prompt": prompt_field, "answer": answer_field}  # field -> where the row holds it
    if prompt_field == "prompt" and "prompt" not in row and "question" in row:
        names["prompt"] = "question"
    row = {**{k: v for k, v in row.items() if k not in names.values()},
           **{key: row[name] for key, name in names.items() if name in row}}

    def fail(message: str) -> DataError:
        return DataError(path, line, message)

    def text_field(key: str, *, numbers_ok: bool = False) -> str:
        value, name = row[key], names.get(key, key)
        if numbers_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise fail(f'field "{name}" must be a finite number, got {value}')
            value = str(value)
        if not isinstance(value, str):
            kinds = "a string or a number" if numbers_ok else "a string"
            raise fail(f'field "{name}" must be {kinds}, got {_type_name(value)}')
        if not value.strip():
            raise fail(f'field "{name}" is empty (expected a non-empty string)')
        return value

    required = [*REQUIRED_KEYS, "solution"] if require_solution else list(REQUIRED_KEYS)
    for key in required:
        if key not in row or (key == "solution" and row[key] is None):
            expected = _expected_keys(require_solution, prompt_field, answer_field)
            raise fail(f'field "{names.get(key, key)}" is missing ({expected})')
    prompt = text_field("prompt")
    answer = text_field("answer", numbers_ok=True)
    if GSM8K_MARK in answer:
        answer = gsm8k_final_answer(answer)
        if not answer:
            raise fail(f'field "{answer_field}" has nothing after "{GSM8K_MARK}" (expected a GSM8K final answer, e.g. "... #### 72")')
    solution = text_field("solution") if row.get("solution") is not None else None
    difficulty = row.get("difficulty")
    if difficulty is not None and (not isinstance(difficulty, int) or isinstance(difficulty, bool)):
        raise fail(f'field "difficulty" must be an integer, got {_type_name(difficulty)}')
    if "masked_spans" in row:
        if solution is None:
            raise fail('field "masked_spans" needs a "solution" (its spans are character offsets into it)')
        if (problem := masked_spans_error(row["masked_spans"], solution)) is not None:
            raise fail(problem)
    meta = {key: value for key, value in row.items() if key not in (*REQUIRED_KEYS, *OPTIONAL_KEYS)}
    return Example(prompt, answer, solution, difficulty, meta, line)


def masked_spans_error(spans: Any, solution: str) -> str | None:
    """What is wrong with a row's ``masked_spans`` (a list of ``[start, end)`` character spans of
    ``solution`` kept out of the SFT loss), or ``None`` when they are valid."""
    if not isinstance(spans, list):
        return f'field "masked_spans" must be a list of [start, end] pairs, got {_type_name(spans)}'
    for span in spans:
        ok = isinstance(span, (list, tuple)) and len(span) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in span)
        if not ok or not 0 <= span[0] < span[1] <= len(solution):
            return (f'field "masked_spans": entry {span!r} is not [start, end) with 0 <= start < end <= '
                    f'{len(solution)} (character offsets into solution)')
    return None


def _decode_line(raw: bytes, path: str | os.PathLike[str], line: int) -> dict[str, Any] | None:
    """One line of a JSON Lines file as a dict; ``None`` for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        message = f"invalid UTF-8 at byte {error.start + 1} (expected UTF-8 text)"
        raise DataError(path, line, message) from None
    if line == 1:
        text = text.removeprefix("\ufeff")  # a byte-order mark some editors add
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, line, f"invalid JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(row, dict):
        message = f"line is not a JSON object, got {_type_name(row)} ({_ONE_OBJECT})"
        raise DataError(path, line, message)
    return row


def load_jsonl(
    path: str | os.PathLike[str], *, require_solution: bool = False, limit: int | None = None,
    prompt_field: str = "prompt", answer_field: str = "answer",
) -> list[Example]:
    """Read a JSON Lines file of examples, validating every line read (prompt and answer from
    ``prompt_field`` and ``answer_field``, see :func:`example_from_dict`).

    Blank lines are skipped. The first invalid line raises :class:`DataError` with its 1-based
    line number; a missing or unreadable file raises :class:`DataError` with line 0 (so callers
    catch one exception type). ``limit`` stops reading after that many examples; lines past it
    are not validated.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    examples: list[Example] = []
    try:
        handle = open(path, "rb")  # binary, so bad UTF-8 is reported with its line
    except FileNotFoundError:
        raise DataError(path, 0, "file not found (expected a JSON Lines file)") from None
    except OSError as error:
        message = f"cannot read file: {error.strerror} (expected a readable JSON Lines file)"
        raise DataError(path, 0, message) from None
    with handle:
        for line, raw in enumerate(iter(lambda: handle.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(raw) - raw.endswith(b"\n") > MAX_LINE_BYTES:
                message = f"line is longer than {MAX_LINE_BYTES} bytes (expected one example of at most 1 MiB per line)"
                raise DataError(path, line, message)
            row = _decode_line(raw, path, line)
            if row is None:
                continue
            examples.append(example_from_dict(row, require_solution=require_solution, path=path, line=line,
                                              prompt_field=prompt_field, answer_field=answer_field))
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise DataError(path, 1, f"no examples found ({_ONE_OBJECT})")
    return examples


def example_to_dict(example: Example) -> dict[str, Any]:
    """The flat JSON row for ``example``: its fields, then ``meta`` keys at top level.

    ``solution`` and ``difficulty`` are left out when ``None``, so ``load_jsonl`` reads the row
    back as the same example.
    """
    row: dict[str, Any] = {"prompt": example.prompt, "answer": example.answer}
    if example.solution is not None:
        row["solution"] = example.solution
    if example.difficulty is not None:
        row["difficulty"] = example.difficulty
    clashes = sorted(set(example.meta) & {*REQUIRED_KEYS, *OPTIONAL_KEYS})
    if clashes:
        raise ValueError(f"Example.meta must not contain the field names {clashes}")
    row.update(example.meta)
    return row


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any] | Example]) -> int:
    """Write ``rows`` (dicts or :class:`Example`) as JSON Lines, atomically; return the count.

    The rows go to a temporary file in the destination directory which then replaces ``path``,
    so an error (e.g. a row that is not JSON-serialisable, raised as :class:`DataError` with the
    row's line number) leaves any previous file untouched and no partial file behind. Missing
    parent directories are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    count = 0
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            for count, row in enumerate(rows, start=1):
                if not isinstance(row, (Example, Mapping)):
                    message = f"row is a {_type_name(row)} (expected a dict or an Example)"
                    raise DataError(path, count, message)
                data = example_to_dict(row) if isinstance(row, Example) else dict(row)
                try:
                    line = json.dumps(data, ensure_ascii=False, allow_nan=False)
                except (TypeError, ValueError) as error:
                    expected = "expected str, number, bool, None, list or dict values"
                    message = f"row is not JSON-serialisable: {error} ({expected})"
                    raise DataError(path, count, message) from None
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return count
