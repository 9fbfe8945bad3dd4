"""The embedded task: seeded multi-step arithmetic word problems with several reasoning styles.

A problem is a start value and 1–6 operations (the difficulty), e.g.
``Start with 7. Add 5. Multiply by 3. What is the result?``. Every intermediate value stays in
``[0, 99]`` so a 4-layer model can learn the arithmetic digit by digit. Train and test are
disjoint by construction: a problem belongs to the test split iff a stable hash of its
question text falls in the test bucket.

Each solution can be written in three verbosities (``terse``, ``normal``, ``verbose``); the
verbose one restates the problem and re-checks steps with the inverse operation, which is the
redundancy that efficient-reasoning methods learn to drop.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from thinklean.data.formats import format_prompt, no_think_response, think_response

MAX_VALUE = 99
DIFFICULTIES = (1, 2, 3, 4, 5, 6)
STYLES = ("terse", "normal", "verbose")
# The base model is trained on this mix: accurate but often verbose (see architecture.md).
BASE_STYLE_WEIGHTS = {"terse": 0.2, "normal": 0.3, "verbose": 0.5}
TEST_BUCKETS = 10  # one bucket in ten (by hash) is the test split
_MAX_MISSES = 100_000  # consecutive rejected draws before a difficulty counts as exhausted

_OP_WORDS = {"+": "Add {k}.", "-": "Subtract {k}.", "*": "Multiply by {k}.", "/": "Divide by {k}."}
_OP_VERBS = {"+": "add {k}", "-": "subtract {k}", "*": "multiply by {k}", "/": "divide by {k}"}
_INVERSE = {"+": "-", "-": "+", "*": "/", "/": "*"}
_CHECK_OPENERS = ("Let me check:", "Wait, let me verify:", "Double-check:")
_CHECK_CLOSERS = ("Correct.", "Yes.", "Good.")


@dataclass(frozen=True)
class ArithProblem:
    """One problem: ``start`` followed by ``ops`` as ``(symbol, operand)`` pairs."""

    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def difficulty(self) -> int:
        return len(self.ops)

    @property
    def question(self) -> str:
        words = " ".join(_OP_WORDS[s].format(k=k) for s, k in self.ops)
        return f"Start with {self.start}. {words} What is the result?"

    def values(self) -> list[int]:
        """Value after each prefix of the operations: ``[start, v1, ..., vD]``."""
        out = [self.start]
        for symbol, k in self.ops:
            out.append(_apply(out[-1], symbol, k))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]

    @property
    def split(self) -> str:
        digest = hashlib.sha256(self.question.encode()).digest()
        return "test" if int.from_bytes(digest[:4], "big") % TEST_BUCKETS == 0 else "train"


def _apply(value: int, symbol: str, k: int) -> int:
    if symbol == "+":
        return value + k
    if symbol == "-":
        return value - k
    if symbol == "*":
        return value * k
    return value // k


def _legal_ops(value: int) -> list[tuple[str, int]]:
    ops = [("+", k) for k in range(1, 10) if value + k <= MAX_VALUE]
    ops += [("-", k) for k in range(1, 10) if value - k >= 0]
    ops += [("*", k) for k in (2, 3) if value * k <= MAX_VALUE]
    ops += [("/", k) for k in (2, 3) if value % k == 0 and value > 0]
    return ops


def sample_problem(rng: random.Random, difficulty: int) -> ArithProblem:
    """Draw a problem with ``difficulty`` operations; every intermediate value is in [0, 99]."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty}")
    start = rng.randint(1, 50)
    value, ops = start, []
    for _ in range(difficulty):
        symbol, k = rng.choice(_legal_ops(value))
        ops.append((symbol, k))
        value = _apply(value, symbol, k)
    return ArithProblem(start, tuple(ops))


def generate_problems(
    n: int,
    split: str = "train",
    seed: int = 0,
    difficulties: tuple[int, ...] = DIFFICULTIES,
    distinct: bool = True,
) -> list[ArithProblem]:
    """``n`` problems of ``split`` with difficulties cycling through ``difficulties``.

    Deterministic in all arguments. ``distinct=False`` allows repeats (training streams need
    more easy problems than exist: difficulty 1 has about a thousand).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"arith-{split}-{seed}")
    seen: set[str] = set()
    out: list[ArithProblem] = []
    misses = 0
    while len(out) < n:
        difficulty = difficulties[len(out) % len(difficulties)]
        problem = sample_problem(rng, difficulty)
        if problem.split != split or (distinct and problem.question in seen):
            misses += 1
            if misses > _MAX_MISSES:
                found = sum(p.difficulty == difficulty for p in out)
                raise ValueError(
                    f"found only {found} distinct {split} problems with {difficulty} operation(s), and {n} problems "
                    f"over difficulties {list(difficulties)} need {-(-n // len(difficulties))} of each; ask for fewer"
                )
            continue
        misses = 0
        seen.add(problem.question)
        out.append(problem)
    return out


def _step_text(before: int, symbol: str, k: int, after: int) -> str:
    return f"{before} {symbol} {k} = {after}."


def render_reasoning(problem: ArithProblem, style: str, rng: random.Random) -> str:
    """The reasoning text (without tags) in one of :data:`STYLES`."""
    values = problem.values()
    steps = list(zip(problem.ops, values[:-1], values[1:]))
    if style == "terse":
        return " ".join(_step_text(a, s, k, b) for (s, k), a, b in steps)
    if style == "normal":
        parts = [f"Start with {problem.start}."]
        for (s, k), a, b in steps:
            verb = _OP_VERBS[s].format(k=k)
            parts.append(f"{verb[0].upper()}{verb[1:]}: {_step_text(a, s, k, b)}")
        parts.append(f"The result is {values[-1]}.")
        return " ".join(parts)
    if style == "verbose":
        n = problem.difficulty
        plural = "operation" if n == 1 else "operations"
        restated = ", ".join(_OP_VERBS[s].format(k=k) for s, k in problem.ops)
        parts = [f"We start with {problem.start} and apply {n} {plural}: {restated}."]
        for i, ((s, k), a, b) in enumerate(steps, 1):
            parts.append(f"Step {i}: {_OP_VERBS[s].format(k=k)}. {_step_text(a, s, k, b)}")
            if rng.random() < 0.8:
                inverse = _INVERSE[s]
                parts.append(
                    f"{rng.choice(_CHECK_OPENERS)} {_step_text(b, inverse, k, a)} "
                    f"{rng.choice(_CHECK_CLOSERS)}"
                )
        parts.append(f"So the final result is {values[-1]}.")
        return " ".join(parts)
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def solution_text(problem: ArithProblem, style: str, rng: random.Random) -> str:
    """Full think-mode response: ``<think> reasoning </think> \\boxed{answer}``."""
    return think_response(render_reasoning(problem, style, rng), problem.answer)


def direct_solution_text(problem: ArithProblem) -> str:
    """No-think response: ``<no_think> \\boxed{answer} </no_think>``."""
    return no_think_response(problem.answer)


def sample_style(rng: random.Random, weights: dict[str, float] = BASE_STYLE_WEIGHTS) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[s] for s in names])[0]


def problem_record(problem: ArithProblem, solution: str | None = None, **meta: object) -> dict:
    """A JSONL row (``prompt``, ``answer``, ``difficulty``, optional ``solution``)."""
    row: dict = {"prompt": problem.question, "answer": str(problem.answer), "difficulty": problem.difficulty}
    if solution is not None:
        row["solution"] = solution
    row.update(meta)
    return row


def sft_records(
    n: int, seed: int = 0, style_weights: dict[str, float] = BASE_STYLE_WEIGHTS
) -> list[dict]:
    """``n`` training rows with a think-mode solution whose style is drawn from ``style_weights``."""
    rng = random.Random(f"arith-sft-{seed}")
    rows = []
    for problem in generate_problems(n, "train", seed, distinct=False):
        style = sample_style(rng, style_weights)
        rows.append(problem_record(problem, solution_text(problem, style, rng), style=style))
    return rows


def tokenizer_corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """Texts the embedded BPE tokenizer is trained on: prompts with every style of solution."""
    rng = random.Random(f"arith-corpus-{seed}")
    texts = []
    for problem in generate_problems(n, "train", seed + 10_000, distinct=False):
        for style in STYLES:
            texts.append(format_prompt(problem.question) + solution_text(problem, style, rng))
        texts.append(format_prompt(problem.question) + direct_solution_text(problem))
    return texts


def detect_style(response: str) -> str:
    """Best-effort style of a think-mode response, for length-by-style statistics."""
    if "Step 1:" in response or "We start with" in response:
        return "verbose"
    if "Start with" in response or "The result is" in response:
        return "normal"
    return "terse"
