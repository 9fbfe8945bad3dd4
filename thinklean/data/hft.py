"""Hybrid fine-tuning (HFT) data: one SFT set mixing think and no-think rows (lhrm.md, stage 1).

Think row:    ``prompt -> <think> reasoning </think> \\boxed{N}``
No-think row: ``prompt -> <no_think> \\boxed{N} </no_think>``

After SFT on the mixture the model can be forced into a mode by writing its opening tag, and
picks a mode itself (its first token) when not forced. Every row carries ``mode``
(``"think"`` / ``"no_think"``) next to ``prompt``, ``answer``, ``solution`` and, when known,
``difficulty``.

Which problems get no-think rows is a rule: terms on a row's ``difficulty`` and ``risky`` (its
number of risky steps) joined by ``&``, e.g. :data:`ARITH_NO_THINK_RULE` (the default on the
embedded task: one-operation problems without a multiplication, the ones a direct answer can get
right without the one-shot product the task makes risky), any function ``row -> bool``, or a
measured set
(:func:`thinklean.methods.lhrm.measured_no_think`: problems a model already answers right
without reasoning)::

    problems = generate_problems(n, "train", seed, distinct=False)   # what hft_records draws
    direct = measured_no_think(model, tokenizer, problems)
    rows = hft_records(n, seed, no_think_rule=lambda row: row["prompt"] in direct)
"""

from __future__ import annotations

import operator
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

from thinklean.data.arith import (
    BASE_CHECK_RATE,
    BASE_STYLE_WEIGHTS,
    REPAIR_RATE,
    ArithProblem,
    direct_solution_text,
    generate_problems,
    problem_record,
    sample_style,
    think_record,
)
from thinklean.data.formats import NO_THINK, THINK, boxed, no_think_response, think_response
from thinklean.data.jsonl import DataError, Example, _decode_line, example_from_dict, example_to_dict

MODES = ("think", "no_think")
NoThinkRule = str | Callable[[Mapping[str, Any]], bool]
# Forcing the box too lets a model that never saw a no-think row still answer directly.
DIRECT_ANSWER_PREFIX = f"{NO_THINK} {boxed('')[:-1]}"  # "<no_think> \boxed{"

ARITH_NO_THINK_RULE = "difficulty<=1 & risky==0"
_TERM = re.compile(r"^\s*(difficulty|risky)\s*(<=|>=|==|<|>)\s*(\d+)\s*$")
_COMPARE = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "<": operator.lt, ">": operator.gt}
_RULES_ACCEPTED = ("accepted: terms 'difficulty<=K' or 'risky==K' (risky: the number of risky steps; "
                   "<, <=, ==, >=, >) joined by '&', 'none', 'all', or a function row -> bool")


def _rule_value(row: Mapping[str, Any], name: str, rule: str) -> int:
    """``row``'s ``difficulty``, or the length of its ``risky_steps`` list for ``risky``."""
    if name == "risky":
        steps = row.get("risky_steps")
        if not isinstance(steps, list):
            raise ValueError(f"no_think_rule {rule!r} needs a \"risky_steps\" list, got {steps!r}")
        return len(steps)
    value = row.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"no_think_rule {rule!r} needs an integer \"{name}\" field, got {value!r}")
    return value


def parse_no_think_rule(rule: NoThinkRule) -> Callable[[Mapping[str, Any]], bool]:
    """``rule`` as a function ``row -> bool`` (True: the row's problem may go to no-think).

    A rule string's terms must all hold. Applied to a row without an integer ``difficulty`` (or a
    ``risky_steps`` list, for ``risky``) a term raises ``ValueError``.
    """
    if callable(rule):
        return rule
    if isinstance(rule, str) and rule.strip() in ("none", "all"):
        everything = rule.strip() == "all"
        return lambda row: everything
    matches = [_TERM.match(term) for term in rule.split("&")] if isinstance(rule, str) else [None]
    if not all(matches):
        raise ValueError(f"no_think_rule {rule!r} is not understood ({_RULES_ACCEPTED})")
    terms = [(m.group(1), _COMPARE[m.group(2)], int(m.group(3))) for m in matches if m is not None]

    def by_terms(row: Mapping[str, Any]) -> bool:
        return all(compare(_rule_value(row, name, rule), bound) for name, compare, bound in terms)

    return by_terms


def hft_records(
    n: int,
    seed: int = 0,
    no_think_rule: NoThinkRule = ARITH_NO_THINK_RULE,
    style_weights: dict[str, float] = BASE_STYLE_WEIGHTS,
    no_think_share: float = 0.5,
    repair_rate: float = REPAIR_RATE,
    check_rate: float = BASE_CHECK_RATE,
    mask_products: bool = True,
) -> list[dict]:
    """``n`` embedded-task HFT rows (problems ``generate_problems(n, "train", seed, distinct=False)``).

    A problem the rule selects becomes a no-think row with probability ``no_think_share``,
    every other problem a think row with a style drawn from ``style_weights``. So think rows
    cover all difficulties and the selected (easy) problems are seen in both modes: forcing
    either mode works on them, and the model's unforced choice there is left for HGPO to learn.
    Think rows are rendered as the base model's SFT rows are (:func:`thinklean.data.arith.think_record`
    with ``repair_rate``, ``check_rate``, ``mask_products``; their ``masked_spans`` keep every
    first-written product out of the loss), so HFT teaches the modes, not one-shot products.
    """
    if not 0.0 <= no_think_share <= 1.0:
        raise ValueError(f"no_think_share must be in [0, 1], got {no_think_share}")
    selects = parse_no_think_rule(no_think_rule)
    rng = random.Random(f"arith-hft-{seed}")
    rows = []
    for problem in generate_problems(n, "train", seed, distinct=False):
        row = problem_record(problem)
        if selects(row) and rng.random() < no_think_share:
            rows.append({**row, "solution": direct_solution_text(problem), "mode": "no_think"})
        else:
            style = sample_style(rng, style_weights)
            think = think_record(problem, style, rng, repair_rate, check_rate=check_rate, mask_products=mask_products)
            rows.append({**think, "mode": "think"})
    return rows


def _numbered_rows(rows: str | os.PathLike[str] | Iterable[Mapping[str, Any] | Example], source: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """``(line, row)`` pairs: file lines (blank ones skipped) or 1-based positions in ``rows``."""
    if isinstance(rows, (str, os.PathLike)):
        try:
            handle = open(rows, "rb")
        except OSError as error:
            raise DataError(rows, 0, f"cannot read file: {error.strerror} (expected a JSON Lines file)") from None
        with handle:
            for line, raw in enumerate(handle, start=1):
                row = _decode_line(raw, source, line)
                if row is not None:
                    yield line, row
        return
    for line, row in enumerate(rows, start=1):
        if isinstance(row, Example):
            row = example_to_dict(row)
        if not isinstance(row, Mapping):
            raise DataError(source, line, f"row is a {type(row).__name__} (expected a dict or an Example)")
        yield line, row


def hft_from_jsonl(
    rows: str | os.PathLike[str] | Iterable[Mapping[str, Any] | Example],
    mode_field: str = "mode",
    no_think_rule: NoThinkRule | None = None,
    source: str | None = None,
) -> list[dict]:
    """HFT rows from user data: a JSONL path, or dicts / :class:`Example` s.

    Each row's mode is its ``mode_field`` (``"think"`` or ``"no_think"``); rows without the
    field take it from ``no_think_rule`` (selected -> no-think) when one is given. Think rows
    need ``solution``: kept as is when it starts with ``<think>``, else wrapped as
    ``<think> solution </think> \\boxed{answer}``. No-think rows need only ``answer``
    (solution ``<no_think> \\boxed{answer} </no_think>``); a solution they do give must start
    with ``<no_think>``. Errors are :class:`DataError` ``SOURCE:LINE: ...`` naming the row.
    """
    source = source or (str(rows) if isinstance(rows, (str, os.PathLike)) else "<rows>")
    selects = parse_no_think_rule(no_think_rule) if no_think_rule is not None else None
    out = []
    for line, row in _numbered_rows(rows, source):
        example = example_from_dict(row, path=source, line=line)
        mode = row.get(mode_field)
        if mode is None:
            if selects is None:
                raise DataError(source, line, f'field "{mode_field}" is missing (expected "think" or "no_think", '
                                              f"or give a no_think_rule for rows without it)")
            try:
                mode = "no_think" if selects(row) else "think"
            except ValueError as error:
                raise DataError(source, line, str(error)) from None
        if mode not in MODES:
            raise DataError(source, line, f'field "{mode_field}" must be "think" or "no_think", got {mode!r}')
        solution = example.solution
        if mode == "think":
            if solution is None:
                raise DataError(source, line, 'a think row needs a "solution" (its reasoning; wrapped as '
                                              '<think> solution </think> \\boxed{answer} unless it starts with <think>)')
            if not solution.lstrip().startswith(THINK):
                solution = think_response(solution.strip(), example.answer)
        elif solution is None:
            solution = no_think_response(example.answer)
        elif not solution.lstrip().startswith(NO_THINK):
            raise DataError(source, line, 'a no_think row\'s "solution" must start with <no_think> or be left out '
                                          '(it is then built from "answer")')
        meta = {k: v for k, v in example.meta.items() if k not in (mode_field, "mode")}
        out.append({**example_to_dict(replace(example, solution=solution, meta=meta)), "mode": mode})
    if not out:
        raise DataError(source, 1, "no rows found (expected JSON objects with prompt, answer and a mode)")
    return out


def mix_stats(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts of the mixture: overall and per difficulty (string keys; ``"none"`` if unknown)."""
    totals = Counter(row["mode"] for row in rows)
    per: dict[Any, Counter] = {}
    for row in rows:
        per.setdefault(row.get("difficulty"), Counter())[row["mode"]] += 1
    order = sorted((d for d in per if d is not None)) + ([None] if None in per else [])
    return {
        "n": len(rows),
        "think": totals["think"],
        "no_think": totals["no_think"],
        "per_difficulty": {("none" if d is None else str(d)): {m: per[d][m] for m in MODES} for d in order},
    }


def upsample_mode(rows: Sequence[Mapping[str, Any]], mode: str, share: float) -> list[Mapping[str, Any]]:
    """``rows`` with ``mode``'s rows repeated (cycling in order) until they are ``share`` of the
    result, rounded down; the other rows once each, first. Never drops rows: a ``share`` the
    rows already reach returns them unchanged."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"share must be in (0, 1), got {share}")
    picked = [row for row in rows if row["mode"] == mode]
    others = [row for row in rows if row["mode"] != mode]
    if not picked:
        raise ValueError(f"no {mode} rows to upsample")
    wanted = int(share * len(others) / (1.0 - share))
    if wanted <= len(picked):
        return list(rows)
    return [*others, *(picked[i % len(picked)] for i in range(wanted))]


def format_mix_stats(stats: Mapping[str, Any]) -> str:
    """``mix_stats`` as a few lines for the terminal."""
    lines = [f"{stats['n']} rows: {stats['think']} think, {stats['no_think']} no_think"]
    for d, counts in stats["per_difficulty"].items():
        lines.append(f"  difficulty {d}: {counts['think']} think, {counts['no_think']} no_think")
    return "\n".join(lines)


def as_example(problem: ArithProblem | Example) -> Example:
    """An embedded-task problem or an :class:`Example` as an :class:`Example`."""
    if isinstance(problem, Example):
        return problem
    return Example(prompt=problem.question, answer=str(problem.answer), difficulty=problem.difficulty)
