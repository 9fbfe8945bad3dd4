"""The embedded task (v2): multi-step arithmetic whose steps differ in risk, with checks that repair.

A problem is a start value and 1–6 operations (the difficulty), e.g.
``Start with 347. Multiply by 7. Add 5. What is the result?``. Additions and subtractions of
1–9 are *safe* steps: the base model almost never gets them wrong. A multiplication of a
three-digit value (by 7 or 9 in :data:`TASK`, by 4–9 in :data:`THREE_DIGIT`) is a *risky* step:
written in one shot (``347 * 7 = 2419.``) the tiny model often gets it wrong when it samples,
while the pieces of its check (a two-digit product, a digit times a hundred, one addition) are
ones it gets right. ``docs/task.md`` has the measured error rates, and why two-digit
multiplications are not risky enough.
Values stay in ``[0, 9999]``. Train and test are disjoint: a problem belongs to the test split
iff a stable hash of its question text falls in the test bucket.

A solution writes every step as ``a op k = b.`` and may follow a step with a *check*:

* risky step: recompute by hundreds and the rest and carry the check's own sum forward, e.g.
  ``347 * 6 = 2072. Let me check: 300 * 6 = 1800, 47 * 6 = 282, 1800 + 282 = 2082. The result
  is 2082.``: the next step starts from the check's sum whether or not the first result agreed
  (a check that had to compare the two confirmed wrong first results: ``docs/base-model.md``);
* safe step: the inverse operation, ``2082 + 5 = 2087. Double-check: 2087 - 5 = 2082. Correct.``
  This one never changes anything: it is the overthinking the methods should remove.

In :data:`TASK` a risky check opens with ``Let me check:`` or ``Wait, let me verify:`` and a safe
one with ``Double-check:``, and no safe step undoes the one before it.

Every word is one the first base model's tokenizer already has (``thinklean/assets/base-v1``),
so the new model, trained from it, never spells a word letter by letter.

Which steps are checked is the *style* (:data:`STYLES`): ``terse`` checks none, ``full`` every
step, ``partial`` each step with probability ``check_rate``, ``risky`` only the risky steps (the
policy RL should find). base-v3 was trained on ``partial`` at :data:`BASE_CHECK_RATE` and on
``risky`` (:data:`BASE_STYLE_WEIGHTS`, also the think rows of HFT data); the shipped base model
adds ``full`` rows in :data:`X7X9_RESTATE`'s wording (``thinklean.train.base_model.BASE_STAGES``).
In :func:`sft_records` a share of the risky steps (``repair_rate``) is first written with a
wrong result that the check repairs; the wrong digits are listed in ``masked_spans`` so SFT can
keep them out of the loss.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, replace

from thinklean.data.formats import THINK, THINK_END, format_prompt, no_think_response, think_response

DIFFICULTIES = (1, 2, 3, 4, 5, 6)
STYLES = ("terse", "partial", "full", "risky")
# base-v3's build stage was trained on this mix, ``partial`` at BASE_CHECK_RATE (HFT's think rows
# still are): it checks most steps, and a fifth of its rows show the risky-only policy.
BASE_STYLE_WEIGHTS = {"partial": 0.8, "risky": 0.2}
BASE_CHECK_RATE = 0.8
# share of checked risky steps first written wrong, then repaired, in SFT rows: at 0.3 a first model
# learnt to copy the first result into the check's sum (right 70% of the time) instead of adding
REPAIR_RATE = 0.5
TEST_BUCKETS = 10  # one bucket in ten (by hash) is the test split
_MAX_MISSES = 100_000  # consecutive rejected draws before a difficulty counts as exhausted

_OP_WORDS = {"+": "Add {k}.", "-": "Subtract {k}.", "*": "Multiply by {k}."}
_INVERSE = {"+": "-", "-": "+"}
_CHECK_OPENERS = ("Let me check:", "Wait, let me verify:", "Double-check:")
# a variant with ``kind_openers`` opens the two kinds of check with different words
_RISKY_OPENERS, _SAFE_OPENERS = _CHECK_OPENERS[:2], _CHECK_OPENERS[2:]
_CHECK_CLOSERS = ("Correct.", "Yes.", "Good.")
_REPAIR = "Wait, the result is"
_RESTATE = "The result is"
MULTIPLIERS = range(4, 10)


@dataclass(frozen=True)
class Variant:
    """Generator settings: where problems start, which values a multiplication may apply to,
    how a risky check splits ``a`` (``a - a % split`` and ``a % split``), whether a safe
    check restates the result, and whether a risky check carries its sum forward (``carry``:
    ``The result is N.``) or compares it with the first result (``Correct.`` or ``Wait, the
    result is N.``), the operands a multiplication may take, and whether risky and safe checks
    open with different words (``kind_openers``), and whether a safe step may undo the step
    before it (``inverse_pairs``: a response that skips both is right at fewer tokens).
    :data:`TASK` is :data:`X7X9_KINDS_NI`: :data:`THREE_DIGIT` (multiplications by 4–9) with
    only its riskiest multiplications (:data:`X7X9`), written with a kind's own check openers
    (:data:`X7X9_KINDS`) and no adjacent inverse pairs. :data:`TWO_DIGIT` is the variant
    base-v2's first build stage was trained on (two-digit multiplications turned out not to be
    risky: ``docs/task.md``); :data:`EVERY_RISKY` is a control arm that multiplies wherever
    legal."""

    name: str
    stream: str  # prefix of the random streams: the same rows for the same seed
    start: tuple[int, int]
    multiplied: tuple[int, int]
    max_value: int
    split: int
    multiply_share: float  # chance of a multiplication at a step where one is legal
    restate: bool
    carry: bool
    multipliers: tuple[int, ...] = tuple(MULTIPLIERS)
    kind_openers: bool = False
    inverse_pairs: bool = True  # whether a safe step may undo the one before it ("Add 5. Subtract 5.")


TWO_DIGIT = Variant("two-digit", "arith2", (2, 60), (10, 99), 999, 10, 0.3, True, False)
THREE_DIGIT = Variant("three-digit", "arith3", (100, 999), (100, 999), 9999, 100, 0.25, False, True)
# the three-digit task with only its riskiest multiplications (x7, x9), and a control arm that
# takes those wherever legal, so that every problem starts with one (docs/task.md)
X7X9 = replace(THREE_DIGIT, name="x7x9", multipliers=(7, 9))
EVERY_RISKY = replace(X7X9, name="every-risky", multiply_share=1.0)
# the same problems as X7X9; a risky check opens with "Let me check:" or "Wait, let me verify:", a safe
# one with "Double-check:", so that a check's first token says which kind of step it checks
X7X9_KINDS = replace(X7X9, name="x7x9-kinds", kind_openers=True)
# no safe step undoes the one before it: skipping two steps never stays right by luck
X7X9_KINDS_NI = replace(X7X9_KINDS, name="x7x9-kinds-ni", inverse_pairs=False)
# the task: what the demo and ``arith`` data default to; the shipped base model's build stage poses
# its problems in X7X9_RESTATE's wording
TASK = X7X9_KINDS_NI
# the same problems, a safe check closing with the result it confirmed ("Correct. The result is 2087."):
# longer safe checks, so that the redundant share of a checking response grows (docs/task.md)
X7X9_RESTATE = replace(X7X9_KINDS_NI, name="x7x9-restate", restate=True)
VARIANTS = {v.name: v for v in (TWO_DIGIT, THREE_DIGIT, X7X9, EVERY_RISKY, X7X9_KINDS, X7X9_KINDS_NI, X7X9_RESTATE)}


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
            out.append(apply_op(out[-1], symbol, k))
        return out

    @property
    def answer(self) -> int:
        return self.values()[-1]

    @property
    def risky_steps(self) -> tuple[int, ...]:
        """0-based indices of the risky steps (multiplications)."""
        return tuple(i for i, (s, _) in enumerate(self.ops) if is_risky(s))

    @property
    def split(self) -> str:
        digest = hashlib.sha256(self.question.encode()).digest()
        return "test" if int.from_bytes(digest[:4], "big") % TEST_BUCKETS == 0 else "train"


def is_risky(symbol: str) -> bool:
    """Whether a step with this operation is risky (every multiplication)."""
    return symbol == "*"


def apply_op(value: int, symbol: str, k: int) -> int:
    if symbol == "+":
        return value + k
    if symbol == "-":
        return value - k
    if symbol == "*":
        return value * k
    raise ValueError(f"unknown operation {symbol!r}")


def _legal_ops(
    value: int, variant: Variant, previous: tuple[str, int] | None = None,
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(safe, risky) operations allowed at ``value`` after the operation ``previous``: results stay
    in [0, variant.max_value], and without ``variant.inverse_pairs`` no step undoes ``previous``."""
    safe = [("+", k) for k in range(1, 10) if value + k <= variant.max_value]
    safe += [("-", k) for k in range(1, 10) if value - k >= 0]
    if not variant.inverse_pairs and previous is not None and previous[0] in _INVERSE:
        safe.remove((_INVERSE[previous[0]], previous[1]))
    lo, hi = variant.multiplied
    risky = [("*", k) for k in variant.multipliers if lo <= value <= hi and value * k <= variant.max_value]
    return safe, risky


def sample_problem(rng: random.Random, difficulty: int, variant: Variant = TASK) -> ArithProblem:
    """Draw a problem with ``difficulty`` operations; every value is in [0, variant.max_value]."""
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty}")
    start = rng.randint(*variant.start)
    value, ops = start, []
    for _ in range(difficulty):
        safe, risky = _legal_ops(value, variant, ops[-1] if ops else None)
        symbol, k = rng.choice(risky if risky and rng.random() < variant.multiply_share else safe)
        ops.append((symbol, k))
        value = apply_op(value, symbol, k)
    return ArithProblem(start, tuple(ops))


def generate_problems(
    n: int,
    split: str = "train",
    seed: int = 0,
    difficulties: tuple[int, ...] = DIFFICULTIES,
    distinct: bool = True,
    variant: Variant = TASK,
) -> list[ArithProblem]:
    """``n`` problems of ``split`` with difficulties cycling through ``difficulties``.

    Deterministic in all arguments. ``distinct=False`` allows repeats (training streams need
    more easy problems than exist).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"{variant.stream}-{split}-{seed}")
    seen: set[str] = set()
    out: list[ArithProblem] = []
    misses = 0
    while len(out) < n:
        difficulty = difficulties[len(out) % len(difficulties)]
        problem = sample_problem(rng, difficulty, variant)
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


def _eq(a: int, symbol: str, k: int, b: int | str) -> str:
    return f"{a} {symbol} {k} = {b}"


def wrong_product(right: int, rng: random.Random) -> int:
    """A plausible slip for a product: one digit (units to thousands) off by 1 or 2."""
    while True:
        place = 10 ** rng.randrange(len(str(right)))
        wrong = right + rng.choice((-2, -1, 1, 2)) * place
        if wrong >= 0 and wrong != right:
            return wrong


def _checks(problem: ArithProblem, style: str, rng: random.Random, check_rate: float = 0.5) -> list[bool]:
    if style == "terse":
        return [False] * problem.difficulty
    if style == "full":
        return [True] * problem.difficulty
    if style == "partial":
        return [rng.random() < check_rate for _ in problem.ops]
    if style == "risky":
        return [is_risky(s) for s, _ in problem.ops]
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def render_trace(
    problem: ArithProblem, style: str, rng: random.Random, repair_rate: float = 0.0, variant: Variant = TASK,
    check_rate: float = 0.5, mask_products: bool = False,
) -> tuple[str, list[tuple[int, int]]]:
    """The reasoning text (without tags) in one of :data:`STYLES`, and the character spans to keep
    out of the SFT loss: deliberately wrong results (``repair_rate`` of the checked risky steps
    are first written wrong and then repaired by their check) or, with ``mask_products``, every
    risky step's first-written result, right or wrong. ``check_rate``: the chance that the
    ``partial`` style checks a step."""
    text, spans = "", []
    values = problem.values()
    checks = _checks(problem, style, rng, check_rate)
    for (symbol, k), a, b, check in zip(problem.ops, values[:-1], values[1:], checks):
        if text:
            text += " "
        repaired = check and is_risky(symbol) and rng.random() < repair_rate
        first = wrong_product(b, rng) if repaired else b
        head = f"{a} {symbol} {k} = "
        if repaired or (mask_products and is_risky(symbol)):
            spans.append((len(text) + len(head), len(text) + len(head) + len(str(first))))
        text += f"{head}{first}."
        if not check:
            continue
        opener = rng.choice(_CHECK_OPENERS if not variant.kind_openers else
                            _RISKY_OPENERS if is_risky(symbol) else _SAFE_OPENERS)
        if is_risky(symbol):
            high, low = a - a % variant.split, a % variant.split
            body = f"{_eq(high, '*', k, high * k)}, {_eq(low, '*', k, low * k)}, {_eq(high * k, '+', low * k, b)}."
            if variant.carry:
                verdict = f"{_RESTATE} {b}."
            else:
                verdict = f"{_REPAIR} {b}." if repaired else rng.choice(_CHECK_CLOSERS)
        else:
            body = f"{_eq(b, _INVERSE[symbol], k, a)}."
            verdict = rng.choice(_CHECK_CLOSERS) + (f" {_RESTATE} {b}." if variant.restate else "")
        text += f" {opener} {body} {verdict}"
    return text, spans


def render_reasoning(problem: ArithProblem, style: str, rng: random.Random, variant: Variant = TASK) -> str:
    """The reasoning text (without tags) in one of :data:`STYLES`, every step right."""
    return render_trace(problem, style, rng, variant=variant)[0]


def solution_text(problem: ArithProblem, style: str, rng: random.Random, variant: Variant = TASK) -> str:
    """Full think-mode response: ``<think> reasoning </think> \\boxed{answer}``."""
    return think_response(render_reasoning(problem, style, rng, variant), problem.answer)


def direct_solution_text(problem: ArithProblem) -> str:
    """No-think response: ``<no_think> \\boxed{answer} </no_think>``."""
    return no_think_response(problem.answer)


def sample_style(rng: random.Random, weights: dict[str, float] = BASE_STYLE_WEIGHTS) -> str:
    names = list(weights)
    return rng.choices(names, weights=[weights[s] for s in names])[0]


def problem_record(problem: ArithProblem, solution: str | None = None, **meta: object) -> dict:
    """A JSONL row: ``prompt``, ``answer``, ``difficulty``, ``risky_steps`` (0-based step indices),
    optional ``solution``, then ``meta``."""
    row: dict = {"prompt": problem.question, "answer": str(problem.answer), "difficulty": problem.difficulty,
                 "risky_steps": list(problem.risky_steps)}
    if solution is not None:
        row["solution"] = solution
    row.update(meta)
    return row


def sft_records(
    n: int, seed: int = 0, style_weights: dict[str, float] = BASE_STYLE_WEIGHTS, repair_rate: float = 0.0,
    variant: Variant = TASK, check_rate: float = 0.5, mask_products: bool = False,
) -> list[dict]:
    """``n`` training rows with a think-mode solution whose style is drawn from ``style_weights``.

    With ``repair_rate > 0`` or ``mask_products`` rows carry ``masked_spans``: ``[start, end)``
    character spans of the solution to keep out of the loss (see :func:`render_trace`, which
    also explains ``check_rate``).
    """
    rng = random.Random(f"{variant.stream}-sft-{seed}")
    return [think_record(problem, sample_style(rng, style_weights), rng, repair_rate, variant, check_rate, mask_products)
            for problem in generate_problems(n, "train", seed, distinct=False, variant=variant)]


def think_record(
    problem: ArithProblem, style: str, rng: random.Random, repair_rate: float = 0.0, variant: Variant = TASK,
    check_rate: float = 0.5, mask_products: bool = False,
) -> dict:
    """A row (:func:`problem_record`) whose solution is ``problem`` in ``style``, rendered by
    :func:`render_trace` with these settings; it carries ``style`` and, with ``repair_rate > 0``
    or ``mask_products``, ``masked_spans`` (character spans of the solution)."""
    reasoning, spans = render_trace(problem, style, rng, repair_rate, variant, check_rate, mask_products)
    meta: dict = {"style": style}
    if repair_rate > 0 or mask_products:
        offset = len(f"{THINK} ")
        meta["masked_spans"] = [[offset + s, offset + e] for s, e in spans]
    return problem_record(problem, think_response(reasoning, problem.answer), **meta)


def tokenizer_corpus(n: int = 3000, seed: int = 0) -> list[str]:
    """Texts the embedded BPE tokenizer is trained on: prompts with every style of solution."""
    rng = random.Random(f"{THREE_DIGIT.stream}-corpus-{seed}")
    texts = []
    for problem in generate_problems(n, "train", seed + 10_000, distinct=False, variant=THREE_DIGIT):
        for style in STYLES:
            reasoning, _ = render_trace(problem, style, rng, repair_rate=0.3, variant=THREE_DIGIT)
            texts.append(format_prompt(problem.question) + think_response(reasoning, problem.answer))
        texts.append(format_prompt(problem.question) + direct_solution_text(problem))
    return texts


_QUESTION = re.compile(r"^Start with (\d+)\. ((?:(?:Add|Subtract) \d+\. |Multiply by \d+\. )+)What is the result\?$")
_QUESTION_OP = re.compile(r"(Add|Subtract|Multiply by) (\d+)\.")
_WORD_OPS = {"Add": "+", "Subtract": "-", "Multiply by": "*"}


def parse_question(question: str) -> ArithProblem | None:
    """The problem a question states (:attr:`ArithProblem.question`'s wording), else ``None``."""
    m = _QUESTION.match(question.strip())
    if not m:
        return None
    ops = tuple((_WORD_OPS[w], int(k)) for w, k in _QUESTION_OP.findall(m[2]))
    return ArithProblem(int(m[1]), ops)


_NUM = r"(\d+)"
_STEP = re.compile(rf"{_NUM} ([-+*]) {_NUM} = {_NUM}\.")
_OPENER = "|".join(re.escape(o) for o in _CHECK_OPENERS)
_CLOSER = "|".join(re.escape(c) for c in _CHECK_CLOSERS)
_RISKY_CHECK = re.compile(
    rf" (?:{_OPENER}) {_NUM} \* {_NUM} = {_NUM}, {_NUM} \* {_NUM} = {_NUM}, {_NUM} \+ {_NUM} = {_NUM}\."
    rf" (?:{_CLOSER}|(?:{_REPAIR}|{_RESTATE}) {_NUM}\.)"
)
_SAFE_CHECK = re.compile(rf" (?:{_OPENER}) {_NUM} [-+] {_NUM} = {_NUM}\. (?:{_CLOSER})(?: {_RESTATE} {_NUM}\.)?")


@dataclass(frozen=True)
class ParsedStep:
    """One step as a response wrote it: ``a op k = first``, whether a check followed, the value
    the response carries on with (``final``: the number a risky check ends with, if any), for a
    checked risky step the numbers its check wrote (``parts``), and the ``[start, end)`` character
    spans of the step and of its check (``None`` if unchecked) in the parsed response."""

    a: int
    op: str
    k: int
    first: int
    checked: bool
    final: int
    parts: tuple[int, ...] = ()  # a risky check's nine numbers: high * k = hp, low * k = lp, hp + lp = sum
    span: tuple[int, int] = (0, 0)
    check_span: tuple[int, int] | None = None

    @property
    def right(self) -> int:
        """The true result of the step from the ``a`` the response wrote."""
        return apply_op(self.a, self.op, self.k)


def parse_steps(response: str) -> tuple[list[ParsedStep], bool]:
    """The steps of a think-mode response in order, and whether the whole reasoning parsed.

    Parsing stops at the first text that is neither a step nor a check of the step before.
    """
    start, end = response.find(THINK), response.find(THINK_END)
    text, base = response, 0  # base: where ``text`` starts in ``response``
    if start >= 0:
        inner = response[start + len(THINK): end if end > start else len(response)]
        base = start + len(THINK) + len(inner) - len(inner.lstrip())
        text = inner.strip()
    steps, pos = [], 0
    while pos < len(text):
        if text[pos] == " ":
            pos += 1
            continue
        m = _STEP.match(text, pos)
        if not m:
            return steps, False
        a, op, k, first = int(m[1]), m[2], int(m[3]), int(m[4])
        pos, checked, final, parts, check_span = m.end(), False, first, (), None
        check = (_RISKY_CHECK if op == "*" else _SAFE_CHECK).match(text, pos)
        if check:
            checked, pos, check_span = True, check.end(), (base + check.start(), base + check.end())
            if op == "*":
                parts = tuple(int(x) for x in check.groups()[:9])
                if check[10] is not None:  # the value the check carries on with
                    final = int(check[10])
        steps.append(ParsedStep(a, op, k, first, checked, final, parts, (base + m.start(), base + m.end()), check_span))
    return steps, True


def detect_style(response: str) -> str:
    """The style a think-mode response took: which of its steps it checked (:data:`STYLES`)."""
    steps, _ = parse_steps(response)
    checked = [s.checked for s in steps]
    if not any(checked):
        return "terse"
    if all(checked):
        return "full"
    if checked == [is_risky(s.op) for s in steps]:
        return "risky"
    return "partial"
