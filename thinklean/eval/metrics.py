"""Evaluation metrics over per-response records (pure Python; no model)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ResponseRecord:
    """One graded response. Token counts are in the evaluated model's tokenizer."""

    prompt_index: int
    difficulty: int | None
    correct: bool
    format_ok: bool
    response_tokens: int
    reasoning_tokens: int
    mode: str | None  # "think", "no_think" or None (no tag)
    finished: bool
    text: str


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator ``1 - C(n-c, k) / C(n, k)`` for ``c`` correct of ``n`` samples."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(records: Sequence[ResponseRecord], ks: Sequence[int] = ()) -> dict[str, Any]:
    """Accuracy, token statistics, format-error rate, think ratio (and pass@k when sampled).

    ``accuracy`` is the mean over all responses (greedy: one per prompt; sampled: the mean over
    k samples). ``tokens_per_correct`` = total response tokens / number of correct responses.
    """
    if not records:
        return {"n": 0}
    lengths = [r.response_tokens for r in records]
    n_correct = sum(r.correct for r in records)
    out: dict[str, Any] = {
        "n": len(records),
        "accuracy": n_correct / len(records),
        "mean_response_tokens": sum(lengths) / len(records),
        "median_response_tokens": _quantile(lengths, 0.5),
        "p90_response_tokens": _quantile(lengths, 0.9),
        "mean_reasoning_tokens": sum(r.reasoning_tokens for r in records) / len(records),
        "tokens_per_correct": sum(lengths) / n_correct if n_correct else float("inf"),
        "format_error_rate": sum(not r.format_ok for r in records) / len(records),
        "think_ratio": sum(r.mode == "think" for r in records) / len(records),
        "truncated_rate": sum(not r.finished for r in records) / len(records),
    }
    by_prompt: dict[int, list[bool]] = defaultdict(list)
    for r in records:
        by_prompt[r.prompt_index].append(r.correct)
    for k in ks:
        usable = [v for v in by_prompt.values() if len(v) >= k]
        if usable:
            out[f"pass@{k}"] = sum(pass_at_k(len(v), sum(v), k) for v in usable) / len(usable)
    return out


def summarize_by_difficulty(records: Sequence[ResponseRecord]) -> dict[str, dict[str, Any]]:
    """:func:`summarize` per difficulty level (keys are strings, JSON-friendly)."""
    groups: dict[int, list[ResponseRecord]] = defaultdict(list)
    for r in records:
        if r.difficulty is not None:
            groups[r.difficulty].append(r)
    return {str(d): summarize(groups[d]) for d in sorted(groups)}


def compression(tokens: float, base_tokens: float) -> float:
    """``1 - tokens / base_tokens``: the fraction of the base model's tokens saved."""
    return 1.0 - tokens / base_tokens if base_tokens > 0 else float("nan")


def tokens_at_accuracy(curve: Sequence[tuple[float, float]], reference_accuracy: float) -> float | None:
    """Fewest mean response tokens at which a run is at least as accurate as a reference.

    ``curve`` holds one ``(accuracy, mean_tokens)`` pair per evaluated checkpoint, in training
    order (accuracy as a fraction); consecutive checkpoints are joined by straight lines. The
    result is the smallest token count on that path where accuracy >= ``reference_accuracy``:
    a checkpoint at or above the reference, or a point where a segment crosses it, found by
    linear interpolation. Every crossing counts and the cheapest wins, so a non-monotone curve
    (accuracy dips and recovers) needs no special case: the question is how few tokens the
    method needs to match the reference, not when in training it first did. ``None`` when no
    checkpoint reaches the reference, because extrapolating past the evaluated checkpoints
    would invent data; for the same reason, when every checkpoint is above the reference the
    cheapest checkpoint is returned (the saving at iso-accuracy is then a lower bound).
    """
    if not curve:
        raise ValueError("tokens_at_accuracy needs at least one (accuracy, tokens) checkpoint")
    candidates = [tokens for accuracy, tokens in curve if accuracy >= reference_accuracy]
    for (acc0, tok0), (acc1, tok1) in zip(curve, curve[1:]):
        if (acc0 - reference_accuracy) * (acc1 - reference_accuracy) < 0:
            fraction = (reference_accuracy - acc0) / (acc1 - acc0)
            candidates.append(tok0 + fraction * (tok1 - tok0))
    return min(candidates) if candidates else None


def iso_accuracy_compression(
    curve: Sequence[tuple[float, float]], reference_accuracy: float, reference_tokens: float
) -> float | None:
    """:func:`compression` of :func:`tokens_at_accuracy` against the reference's tokens.

    E.g. the base model's (accuracy, mean tokens) as reference: the fraction of the base
    model's tokens a run saves while matching its accuracy. ``None`` when the run's
    checkpoints never reach the reference accuracy.
    """
    tokens = tokens_at_accuracy(curve, reference_accuracy)
    return None if tokens is None else compression(tokens, reference_tokens)


def records_to_json(records: Sequence[ResponseRecord]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]
