"""Answer extraction and verification, plus the response-format check.

Grading never evaluates model output: numbers are parsed by hand into exact
:class:`fractions.Fraction` values, and anything else goes to ``math_verify`` (which parses
LaTeX into sympy itself, under a timeout) behind a length and nesting guard.

``grade`` (is the answer right?) and ``format_ok`` (are the tags well formed?) are separate
signals so that rewards can weight them independently.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from fractions import Fraction

from thinklean.data.formats import (
    EOS,
    LATENT,
    LATENT_END,
    NO_THINK,
    NO_THINK_END,
    PAD,
    THINK,
    THINK_END,
)

# Answers longer than this (or nested deeper) are never sent to math_verify: sympy can take
# seconds on towers and deep nesting, and a real final answer is short.
MAX_ANSWER_CHARS = 1000
MAX_BRACE_DEPTH = 16
# math_verify timeouts are whole seconds via signal.alarm (main thread only).
MATH_VERIFY_TIMEOUT_S = 1

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_DECIMAL = re.compile(r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)")
_SLASH_FRACTION = re.compile(r"(\d+)\s*/\s*(\d+)")
_DECIMAL_GROUP = r"\s*([+-]?\s*(?:\d+(?:\.\d*)?|\.\d+))\s*"
_LATEX_FRACTION = re.compile(
    r"\\[dt]?frac\s*\{" + _DECIMAL_GROUP + r"\}\s*\{" + _DECIMAL_GROUP + r"\}"
)
_LATEX_FRACTION_SHORT = re.compile(r"\\[dt]?frac\s*(\d)(\d)")  # \frac12
_TEXT_WRAPPED = re.compile(r"\\(?:text|textbf|mbox|mathrm)\s*\{([^{}]*)\}")
# A trailing unit: \text{ cm}, \mbox{dollars}, \mathrm{kg}, ^\circ, degree sign. Letters only,
# so \text{ or } / \text{(B)} are never dropped as "units".
_TRAILING_UNIT = re.compile(
    r"(?:\\(?:text|mbox|mathrm)\s*\{\s*[A-Za-z][A-Za-z .]*\}"
    r"|\^\s*\\circ|\^\s*\{\s*\\circ\s*\}|°)\s*$"
)
# LaTeX thousands marks between digits (1{,}234, 1\,234, 1\!,\!234) and other spacing commands.
_THOUSANDS_MARK = re.compile(r"(?<=\d)(?:\{,\}|\\,|\\!,\\!)(?=\d{3})")
_THIN_SPACE = re.compile(r"\\[,;:! ]|~")
_LATENT_SEGMENT = re.compile(re.escape(LATENT) + r"\s*\d+\s*" + re.escape(LATENT_END))


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, stripped.

    Nested braces are matched (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``) and escaped braces
    ``\\{ \\}`` are skipped. ``None`` when there is no box or the last one is never closed
    (a truncated response).
    """
    starts = [m.end() for m in _BOX_START.finditer(text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # an escaped character, e.g. \{ or \}, never opens or closes a group
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
        i += 1
    return None


def _strip_math_delimiters(s: str) -> str:
    """Remove surrounding whitespace, ``$...$``, ``$$...$$``, ``\\(...\\)`` and ``\\[...\\]``."""
    s = s.strip()
    while True:
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s[1:-1].strip()
        elif len(s) >= 4 and s[:2] in ("\\(", "\\[") and s[-2:] in ("\\)", "\\]"):
            s = s[2:-2].strip()
        else:
            return s


def parse_number(s: str) -> Fraction | None:
    """Parse a plain number into an exact ``Fraction``; ``None`` when ``s`` is not one.

    Accepts integers, signed numbers, decimals (``2.50``), thousands separators (strict groups of
    three: ``1,234``; also ``1{,}234`` and ``1\\,234``), ``a/b``, ``\\frac{a}{b}`` / ``\\dfrac`` /
    ``\\tfrac`` / ``\\frac12``, surrounding ``$``, a leading ``\\$``, a trailing period and a
    trailing unit (``\\text{ cm}``, ``^\\circ``). Percentages, constants and expressions are not
    numbers here (they go to math_verify). No ``eval``: regular expressions only.
    """
    if len(s) > MAX_ANSWER_CHARS:
        return None
    t = _strip_math_delimiters(s)
    t = _THOUSANDS_MARK.sub(",", t.replace("\u2212", "-"))
    t = _THIN_SPACE.sub(" ", t).strip()
    if wrapped := _TEXT_WRAPPED.fullmatch(t):
        t = wrapped.group(1).strip()
    t = t[:-1].rstrip() if t.endswith(".") and not _DECIMAL.fullmatch(t) else t
    t = _TRAILING_UNIT.sub("", t).strip()
    if len(t) >= 2 and t[0] == "{" and t[-1] == "}":
        t = t[1:-1].strip()
    sign = 1
    if t[:1] in ("+", "-"):
        sign = -1 if t[0] == "-" else 1
        t = t[1:].lstrip()
    if t.startswith("\\$"):
        t = t[2:].lstrip()
    value: Fraction | None = None
    if _DECIMAL.fullmatch(t):
        value = Fraction(t.replace(",", ""))
    elif m := _SLASH_FRACTION.fullmatch(t):
        value = _ratio(m.group(1), m.group(2))
    elif m := _LATEX_FRACTION.fullmatch(t) or _LATEX_FRACTION_SHORT.fullmatch(t):
        value = _ratio(m.group(1).replace(" ", ""), m.group(2))
    return None if value is None else sign * value


def _ratio(numerator: str, denominator: str) -> Fraction | None:
    bottom = Fraction(denominator)
    return None if bottom == 0 else Fraction(numerator) / bottom


def _nesting_depth(s: str) -> int:
    depth = deepest = 0
    for char in s:
        if char in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "})]":
            depth -= 1
    return deepest


def _math_verify_match(pred: str, gold: str) -> bool:
    """``math_verify`` equivalence of two LaTeX answers; ``False`` on any error or timeout."""
    from math_verify import parse, verify  # imported lazily: it pulls in sympy (~1 s)

    # math_verify's timeout uses signal.alarm, which only works in the main thread; elsewhere
    # it must be off (the length/depth guard in answers_match keeps inputs small).
    in_main_thread = threading.current_thread() is threading.main_thread()
    timeout = MATH_VERIFY_TIMEOUT_S if in_main_thread else None
    try:
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
        pred_parsed = parse(f"${pred}$", parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # a malformed answer must never crash a training run
        return False


def _normalise(s: str) -> str:
    s = _strip_math_delimiters(s)
    s = _TEXT_WRAPPED.sub(r"\1", s)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac")):
        s = s.replace(old, new)
    s = "".join(s.split())
    return s[:-1] if s.endswith(".") else s


def answers_match(pred: str, gold: str) -> bool:
    """Whether a predicted answer equals the gold answer.

    1. Both parse as numbers (:func:`parse_number`): exact ``Fraction`` equality decides
       (``"2.0" == "2"``, ``"1/2" == "0.5"``, ``"0.333" != "1/3"``).
    2. Otherwise ``math_verify`` (``\\sqrt{4}`` vs ``2``, ``x+1`` vs ``1+x``, intervals, sets).
    3. Finally a normalised string comparison (whitespace, ``$``, ``\\text{}``, ``\\left``).
    Inputs longer than ``MAX_ANSWER_CHARS`` or nested deeper than ``MAX_BRACE_DEPTH`` are
    ``False`` without further work. math_verify runs under a ``MATH_VERIFY_TIMEOUT_S`` timeout in
    the main thread only (its timeout uses ``signal.alarm``); in other threads it has none.
    """
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    if not pred.strip() or not gold.strip():
        return False
    pred_number, gold_number = parse_number(pred), parse_number(gold)
    if pred_number is not None and gold_number is not None:
        return pred_number == gold_number
    if max(_nesting_depth(pred), _nesting_depth(gold)) > MAX_BRACE_DEPTH:
        return False
    if _math_verify_match(pred, gold):
        return True
    normalised = _normalise(pred)
    return bool(normalised) and normalised == _normalise(gold)


EXTRACTIONS = ("boxed", "flexible")
# A minus is a sign only where it cannot be subtraction ("10-3" ends in 3, not -3).
_LAST_NUMBER = re.compile(r"(?:(?<![\w).])-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def extract_answer(response: str, extraction: str = "boxed") -> str | None:
    """The answer ``response`` commits to, or ``None``.

    ``"boxed"``: the last ``\\boxed{}`` (:func:`extract_boxed`). ``"flexible"``: that box when
    it is non-empty, else the last number in the text (``1,234`` and ``-2.5`` whole; commas
    dropped), for models that answer in prose, as GSM8K-style harnesses do.
    """
    if extraction not in EXTRACTIONS:
        raise ValueError(f"extraction must be one of {EXTRACTIONS}, got {extraction!r}")
    boxed_answer = extract_boxed(response)
    if extraction == "boxed" or boxed_answer:
        return boxed_answer
    numbers = _LAST_NUMBER.findall(response)
    return numbers[-1].replace(",", "") if numbers else None


def grade(response: str, answer: str, extraction: str = "boxed") -> bool:
    """Whether the answer of ``response`` (:func:`extract_answer`) matches ``answer``.

    By default the last box in the whole response is graded (in think mode that is the one after
    ``</think>``); tags are not checked here, see :func:`format_ok`. A gold answer written as
    ``\\boxed{...}`` is unwrapped first.
    """
    pred = extract_answer(response, extraction)
    if pred is None:
        return False
    gold = answer.strip()
    if gold.startswith(("\\boxed", "\\fbox")):
        gold = extract_boxed(gold) or gold
    return answers_match(pred, gold)


def grade_batch(responses: Sequence[str], answers: Sequence[str]) -> list[bool]:
    """:func:`grade` for each (response, answer) pair; the two sequences must have equal length."""
    if len(responses) != len(answers):
        raise ValueError(f"grade_batch got {len(responses)} responses but {len(answers)} answers")
    return [grade(response, answer) for response, answer in zip(responses, answers)]


def _strip_trailing_specials(response: str) -> str:
    # Responses decoded without skip_special_tokens end in EOS / padding; those are not format.
    s = response.strip()
    while s.endswith((EOS, PAD)):
        s = s[: -len(EOS if s.endswith(EOS) else PAD)].rstrip()
    return s


def format_ok(response: str) -> bool:
    """Whether ``response`` is a well-formed think or no-think response.

    Think:    ``<think> reasoning </think> ... \\boxed{..} ...`` - exactly one of each think
              tag, in order, at the start; reasoning may span lines and contain
              ``<implicit_thought>N</implicit_thought>`` segments (N digits); a complete,
              non-empty box after ``</think>``; no no-think tags.
    No-think: ``<no_think> ... \\boxed{..} ... </no_think>`` - nothing after the closing tag,
              no think or implicit-thought tags.
    Leading whitespace and trailing EOS/padding tokens are ignored.
    """
    s = _strip_trailing_specials(response)
    if s.startswith(THINK):
        if s.count(THINK) != 1 or s.count(THINK_END) != 1 or NO_THINK in s or NO_THINK_END in s:
            return False
        reasoning, _, after = s[len(THINK) :].partition(THINK_END)
        if LATENT in after or LATENT_END in after:
            return False
        bare = _LATENT_SEGMENT.sub(" ", reasoning)
        if LATENT in bare or LATENT_END in bare:
            return False  # unbalanced, nested or non-numeric implicit-thought tags
        return bool(extract_boxed(after))
    if s.startswith(NO_THINK):
        if s.count(NO_THINK) != 1 or s.count(NO_THINK_END) != 1 or not s.endswith(NO_THINK_END):
            return False
        if THINK in s or THINK_END in s or LATENT in s or LATENT_END in s:
            return False
        return bool(extract_boxed(s[len(NO_THINK) : -len(NO_THINK_END)]))
    return False


def reasoning_span(response: str) -> str:
    """The text between ``<think>`` and ``</think>``, stripped.

    ``''`` for no-think or untagged responses. An unclosed ``<think>`` (a truncated response)
    gives everything after it, since that is the reasoning the model produced.
    """
    start = response.find(THINK)
    if start < 0:
        return ""
    start += len(THINK)
    end = response.find(THINK_END, start)
    return (response[start:] if end < 0 else response[start:end]).strip()
