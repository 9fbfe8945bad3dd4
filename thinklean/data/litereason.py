"""LiteReason SFT data (litereason.md): correct sampled traces with sentences made latent.

For each problem, ``k`` traces are sampled from the model (temperature 0.7, top-p 0.8, as the
authors) and the correct ones kept (:func:`thinklean.methods.litereason.litereason_records`). A trace's reasoning is split into sentences and, for each
replacement ratio (0.10 and 0.25), a few random variants replace ``max(1, round(ratio * S))``
of its ``S`` replaceable sentences by a latent segment::

    <implicit_thought>N</implicit_thought>,   N = max(1, min(5, floor(0.2 * tokens(sentence))))

so a longer thought gets more latent steps. Rows carry the LiteReason prompt (the question plus
:data:`INSTRUCTION`), the variant as ``solution``, the ``ratio`` and the number of ``replaced``
sentences. Everything is a pure function of the seed.

:func:`target_rows` builds the other kind of row, for embedded-task problems: a rendered trace
with operations made latent segments of :data:`TARGET_DIGITS` steps whose ``latent_targets`` are
the values the operations compute (docs/litereason.md).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from thinklean.data.arith import TASK, ArithProblem, is_risky, render_reasoning
from thinklean.data.formats import LATENT, LATENT_END, THINK, THINK_END, think_response
from thinklean.data.jsonl import Example

RATIOS = (0.10, 0.25)
TARGET_DIGITS = 4  # the embedded task's values are below 10,000: one latent step per digit
MAX_LATENT_STEPS = 5
INSTRUCTION = (f"You may replace a reasoning sentence by {LATENT}N{LATENT_END}, "
               f"N from 1 to {MAX_LATENT_STEPS} reflecting the thought's complexity.")
# A sentence ends at . ! ? or a latent segment's closing tag, before whitespace; the group keeps separators.
_SENTENCE_END = re.compile(rf"((?:(?<=[.!?])|(?<={re.escape(LATENT_END)}))\s+)")


def litereason_prompt(question: str) -> str:
    """The question followed by :data:`INSTRUCTION` (unchanged if it already ends with it)."""
    return question if question.endswith(INSTRUCTION) else f"{question} {INSTRUCTION}"


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: split at whitespace after ``.``, ``!``, ``?`` or ``</implicit_thought>``."""
    return _pieces(text)[1][::2]


def _pieces(text: str) -> tuple[str, list[str], str]:
    """``(leading space, [sentence, separator, sentence, ...], trailing space)``; joined they give ``text``."""
    core = text.strip()
    if not core:
        return text, [], ""
    lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()):]
    return lead, _SENTENCE_END.split(core), trail


def latent_steps_for(sentence: str, tokenizer: Any, max_steps: int = MAX_LATENT_STEPS) -> int:
    """``N = max(1, min(max_steps, floor(0.2 * tokens(sentence))))``; tokens without special tokens."""
    tokens = len(tokenizer(sentence, add_special_tokens=False)["input_ids"])
    return max(1, min(max_steps, tokens // 5))  # tokens // 5 == floor(0.2 * tokens), exact in integers


def latent_segment(steps: int) -> str:
    """``<implicit_thought>steps</implicit_thought>``."""
    return f"{LATENT}{steps}{LATENT_END}"


def _reasoning_bounds(response: str) -> tuple[int, int]:
    """Character span of the reasoning: inside ``<think> ... </think>``, else the whole response."""
    start, end = response.find(THINK), response.find(THINK_END)
    if start >= 0 and end > start:
        return start + len(THINK), end
    return 0, len(response)


def latent_variant(response: str, tokenizer: Any, ratio: float, rng: random.Random,
                   max_steps: int = MAX_LATENT_STEPS) -> tuple[str, int] | None:
    """``response`` with ``max(1, round(ratio * S))`` random reasoning sentences made latent.

    Replaceable sentences: those of the reasoning span without ``\\boxed`` (the answer) and
    without a latent tag (already latent). Returns ``(variant, sentences replaced)``, or None
    when no sentence is replaceable. Text outside the reasoning span is kept as it is.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return _replace(response, tokenizer, max_steps,
                    lambda replaceable: rng.sample(replaceable, max(1, int(ratio * len(replaceable) + 0.5))))


def latent_prefix_variant(response: str, tokenizer: Any, count: int,
                          max_steps: int = MAX_LATENT_STEPS) -> tuple[str, int] | None:
    """``response`` with its first ``count`` replaceable reasoning sentences (all, if fewer) made
    latent: stage ``count`` of a Coconut-style curriculum (arXiv 2412.06769), which replaces
    reasoning from the front one step per stage. Returns ``(variant, sentences replaced)``, or
    None when no sentence is replaceable (see :func:`latent_variant`)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    return _replace(response, tokenizer, max_steps, lambda replaceable: replaceable[:count])


def _replace(response: str, tokenizer: Any, max_steps: int,
             choose: Callable[[list[int]], Sequence[int]]) -> tuple[str, int] | None:
    """Make latent the replaceable reasoning sentences that ``choose`` picks (by piece index)."""
    start, end = _reasoning_bounds(response)
    lead, pieces, trail = _pieces(response[start:end])
    replaceable = [i for i in range(0, len(pieces), 2)
                   if "\\boxed" not in pieces[i] and LATENT not in pieces[i] and LATENT_END not in pieces[i]]
    if not replaceable:
        return None
    chosen = choose(replaceable)
    for i in chosen:
        pieces[i] = latent_segment(latent_steps_for(pieces[i], tokenizer, max_steps))
    return response[:start] + lead + "".join(pieces) + trail + response[end:], len(chosen)


def variant_rows(example: Example, trace: str, tokenizer: Any, rng: random.Random,
                 ratios: Sequence[float] = RATIOS, variants: int = 2) -> list[dict]:
    """SFT rows for one correct ``trace``: up to ``variants`` distinct variants per ratio."""
    rows = []
    for ratio in ratios:
        seen: set[str] = set()
        for _ in range(variants):
            made = latent_variant(trace, tokenizer, ratio, rng)
            if made is None or made[0] in seen:
                continue
            seen.add(made[0])
            row = {"prompt": litereason_prompt(example.prompt), "answer": example.answer, "solution": made[0],
                   "ratio": ratio, "replaced": made[1]}
            if example.difficulty is not None:
                row["difficulty"] = example.difficulty
            rows.append(row)
    return rows


def records_summary(rows: Sequence[dict]) -> str:
    """One line for the terminal: rows per ratio (per stage for :func:`target_rows`) and mean
    latent segments per row."""
    if rows and "stage" in rows[0]:
        per_stage = {stage: sum(1 for r in rows if r["stage"] == stage) for stage in sorted({r["stage"] for r in rows})}
        mean = sum(r["replaced"] for r in rows) / len(rows)
        stages = ", ".join(f"{count} at stage {stage}" for stage, count in per_stage.items())
        return f"{len(rows)} rows with latent targets ({stages}); {mean:.1f} latent segments per row"
    per_ratio = {ratio: sum(1 for r in rows if r["ratio"] == ratio) for ratio in sorted({r["ratio"] for r in rows})}
    mean = sum(r["replaced"] for r in rows) / len(rows) if rows else 0.0
    ratios = ", ".join(f"{count} at ratio {ratio:.2f}" for ratio, count in per_ratio.items())
    return f"{len(rows)} rows ({ratios or 'none'}); {mean:.1f} latent segments per row"


TARGET_KINDS = ("results", "checks", "safe")


def target_rows(problems: Sequence[ArithProblem], stages: int = 1, targets: str = "results") -> list[dict]:
    """Rows with latent targets, in ``stages`` curriculum stages (Coconut, arXiv 2412.06769).

    Each problem gives one row per stage ``s`` in ``1..stages``: its first ``s`` operations (every
    one at the last stage) are made latent, the rest written (a written operation after a latent
    one restates the value the latent computed). An operation made latent becomes
    ``<implicit_thought>4</implicit_thought>`` segments whose ``latent_targets`` are the values it
    computes, each written with :data:`TARGET_DIGITS` digits, one digit per latent step:

    - ``targets="results"``: one segment per operation, its result (``"2082"``); written
      operations are terse (``347 * 6 = 2082.``);
    - ``targets="checks"``: a risky operation (a multiplication) gets three segments, its check's
      partial products and their sum (``"1800"``, ``"0282"``, ``"2082"`` for 347 * 6), as the
      ``risky`` style checks it; a safe one gets one. Written operations are in the ``risky``
      style (a multiplication followed by its check), so latent compute goes where checks pay.
    - ``targets="safe"``: only safe operations (additions, subtractions) are made latent, one
      segment each with its result; a multiplication is always written with its check, as the
      ``risky`` style writes it, and the other written operations are terse.

    Rows carry ``stage``, ``replaced`` (operations made latent) and ``difficulty``.
    """
    if stages < 1:
        raise ValueError(f"stages must be at least 1, got {stages}")
    if targets not in TARGET_KINDS:
        raise ValueError(f"targets must be one of {', '.join(TARGET_KINDS)}, got {targets!r}")
    checks, written_risky = targets == "checks", targets == "safe"
    values_of = [problem.values() for problem in problems]
    for problem, values in zip(problems, values_of):
        if max(values) >= 10 ** TARGET_DIGITS:
            raise ValueError(f"{problem.question!r}: a value has more than {TARGET_DIGITS} digits")
    rows = []
    for stage in range(1, stages + 1):
        for problem, values in zip(problems, values_of):
            latent = problem.difficulty if stage == stages else min(stage, problem.difficulty)
            parts, latent_targets, replaced = [], [], 0
            for j, ((symbol, k), a, b) in enumerate(zip(problem.ops, values, values[1:])):
                risky_check = (checks or written_risky) and is_risky(symbol)
                if j < latent and not (written_risky and risky_check):
                    replaced += 1
                    computed = [a - a % TASK.split, a % TASK.split] if risky_check else []
                    computed = [v * k for v in computed] + [b]
                    parts += [latent_segment(TARGET_DIGITS)] * len(computed)
                    latent_targets += [f"{v:0{TARGET_DIGITS}d}" for v in computed]
                else:
                    step = ArithProblem(a, ((symbol, k),))
                    parts.append(render_reasoning(step, "risky" if risky_check else "terse",
                                                  random.Random(f"{problem.question}|{j}")))
            rows.append({"prompt": litereason_prompt(problem.question), "answer": str(problem.answer),
                         "solution": think_response(" ".join(parts), problem.answer), "difficulty": problem.difficulty,
                         "latent_targets": latent_targets, "stage": stage, "replaced": replaced})
    return rows
