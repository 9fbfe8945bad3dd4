"""Step-level statistics of embedded-task responses: how often each kind of step is wrong,
with and without a check, and what the checks repair (pure Python; no model).

A step is *wrong* when its result is not the true result of the values the response itself
wrote (``a op k``), so an error early in a response does not count again in later steps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from thinklean.data.arith import STYLES, ParsedStep, detect_style, is_risky, parse_question, parse_steps
from thinklean.eval.metrics import ResponseRecord, summarize, summarize_by_difficulty


def _rates(counts: dict[str, int]) -> dict[str, Any]:
    n, checked = counts["steps"], counts["checked"]
    unchecked = n - checked
    return {
        "steps": n,
        "checked": checked,
        "check_rate": checked / n if n else None,
        # the result as first written, before any check: the one-shot error rate
        "first_error_rate": counts["first_wrong"] / n if n else None,
        "unchecked_error_rate": counts["unchecked_wrong"] / unchecked if unchecked else None,
        # the value the response carries on with after its check (the repair's, if it repaired)
        "checked_error_rate": counts["checked_wrong"] / checked if checked else None,
        "checked_first_error_rate": counts["checked_first_wrong"] / checked if checked else None,
        "repaired": counts["repaired"],
        "broken": counts["broken"],
        # where risky checks go wrong (counts over checked risky steps)
        "check_faults": {key: counts[key] for key in _FAULTS} if counts["parts"] else None,
    }


# a risky check splits a into high + low, multiplies both by k, adds, then carries a value on
_FAULTS = ("split", "high_product", "low_product", "sum", "missed", "false_alarm")


def _check_faults(step: ParsedStep) -> dict[str, bool]:
    high, k1, hp, low, k2, lp, s1, s2, total = step.parts
    return {
        "split": high + low != step.a or k1 != step.k or k2 != step.k,
        "high_product": hp != high * k1,
        "low_product": lp != low * k2,
        "sum": total != s1 + s2 or s1 != hp or s2 != lp,
        # the check's own sum was right but the value carried on is another (a wrong first result
        # confirmed, or the sum miscopied)
        "missed": total == step.right and step.final != total,
        # a right first result replaced
        "false_alarm": step.first == step.right and step.final != step.first,
    }


def _in_order_within(short: Sequence[object], long: Sequence[object]) -> bool:
    """Whether ``short`` is ``long`` with some items left out (a subsequence, order kept)."""
    rest = iter(long)
    return all(any(item == other for other in rest) for item in short)


def step_stats(responses: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Error rates of ``risky`` and ``safe`` steps and per operation (``*7``, ``+``, ``-``) over
    ``(question, response)`` pairs, and how often a response misread the question.

    ``first_error_rate``: the result as first written (before any check), over all steps;
    ``unchecked_error_rate``: steps with no check; ``checked_error_rate``: the value carried on
    after a check; ``repaired``: checks that turned a wrong result right; ``broken``: the other
    way round. ``check_faults`` counts, over checked risky steps, where the check went wrong: the
    split of ``a``, either product, the sum, a value carried on other than the check's right sum
    (``missed``) or a right result replaced (``false_alarm``). Under ``"reading"``: ``responses``
    whose question parsed, ``misread_rate`` the share whose steps (operation and operand, in
    order) differ from the question's, ``skipped_rate`` the share (of all) that write the
    question's steps with some left out (the other misread ones change an operation, an operand
    or the order), and ``unparsed_rate`` the share whose reasoning did not parse to the end.
    Empty when no response has a step.
    """
    fields = ("steps", "checked", "first_wrong", "unchecked_wrong", "checked_wrong", "checked_first_wrong",
              "repaired", "broken", "parts", *_FAULTS)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(fields, 0))
    read = {"responses": 0, "misread": 0, "skipped": 0, "unparsed": 0}
    for question, text in responses:
        steps, parsed = parse_steps(text)
        problem = parse_question(question)
        if problem is not None and steps:
            read["responses"] += 1
            written = [(s.op, s.k) for s in steps]
            read["misread"] += written != list(problem.ops)
            read["skipped"] += len(written) < problem.difficulty and _in_order_within(written, problem.ops)
            read["unparsed"] += not parsed
        for step in steps:
            right = step.right
            first_wrong, final_wrong = step.first != right, step.final != right
            for key in ("risky" if is_risky(step.op) else "safe", f"{step.op}{step.k}" if is_risky(step.op) else step.op):
                c = counts[key]
                c["steps"] += 1
                c["first_wrong"] += first_wrong
                if step.checked:
                    c["checked"] += 1
                    c["checked_wrong"] += final_wrong
                    c["checked_first_wrong"] += first_wrong
                    c["repaired"] += first_wrong and not final_wrong
                    c["broken"] += final_wrong and not first_wrong
                    if step.parts:
                        c["parts"] += 1
                        for fault, happened in _check_faults(step).items():
                            c[fault] += happened
                else:
                    c["unchecked_wrong"] += final_wrong
    if not counts:
        return {}
    out: dict[str, Any] = {key: _rates(counts[key]) for key in sorted(counts, key=lambda k: (k not in ("risky", "safe"), k))}
    n = read["responses"]
    out["reading"] = {"responses": n, **{f"{k}_rate": read[k] / n if n else None for k in ("misread", "skipped", "unparsed")}}
    return out


def style_stats(records: Iterable[ResponseRecord], questions: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`~thinklean.eval.metrics.summarize` per detected style (think-mode responses),
    overall and per difficulty; given ``questions`` (the question of each ``prompt_index``), also
    each style's :func:`step_stats` under ``"steps"`` (a risky check may fare differently in a
    response that checks every step than in one that checks only the risky steps)."""
    by_style: dict[str, list[ResponseRecord]] = defaultdict(list)
    for r in records:
        if r.mode == "think":
            by_style[detect_style(r.text)].append(r)
    out: dict[str, dict[str, Any]] = {}
    for style in (s for s in STYLES if s in by_style):
        rows = by_style[style]
        out[style] = {**summarize(rows), "per_difficulty": summarize_by_difficulty(rows)}
        if questions is not None and (steps := step_stats((questions[r.prompt_index], r.text) for r in rows)):
            out[style]["steps"] = steps
    return out
