"""Hybrid Accuracy (HAcc, lhrm.md): does the model pick the right mode by itself?

Per prompt: ``k`` sampled rollouts forced into each mode are graded (right and, with
``mode_format``, well formed in that mode: a no-think rollout that reasons and closes with
``</think>`` is not a direct answer, as in HGPO's reward); the *correct mode* is
think iff ``mean_think > mean_no_think + margin``, else no-think (the cheaper one wins ties
and near-ties). The model then answers unforced and greedily; its *chosen mode* is the tag
its response opens with (no tag counts as a wrong choice). HAcc = fraction of prompts where
chosen == correct. Reported with the unforced answers' accuracy, mean tokens and think ratio,
overall and per difficulty.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from thinklean.data.formats import NO_THINK, THINK, format_prompt, response_mode
from thinklean.data.grading import format_ok, grade
from thinklean.data.jsonl import Example
from thinklean.rollout import SamplingConfig, generate


@dataclass(frozen=True)
class HybridRecord:
    """One prompt: forced-mode mean rewards, the correct and the chosen mode, the unforced answer."""

    prompt_index: int
    difficulty: int | None
    think_reward: float  # mean correctness of the k forced think rollouts (and format, with mode_format)
    no_think_reward: float
    correct_mode: str  # "think" or "no_think"
    chosen_mode: str | None  # first tag of the unforced greedy response; None: no tag
    correct: bool  # unforced answer right
    response_tokens: int  # unforced response length
    text: str


def correct_mode(think_reward: float, no_think_reward: float, margin: float) -> str:
    """``"think"`` iff thinking beats answering directly by more than ``margin``."""
    return "think" if think_reward > no_think_reward + margin else "no_think"


def summarize_hybrid(records: Sequence[HybridRecord]) -> dict[str, Any]:
    """HAcc, think ratio, accuracy and mean tokens of the unforced answers, forced-mode accuracy."""
    if not records:
        return {"n": 0}
    n = len(records)
    return {
        "n": n,
        "hacc": sum(r.chosen_mode == r.correct_mode for r in records) / n,
        "think_ratio": sum(r.chosen_mode == "think" for r in records) / n,
        "no_tag_rate": sum(r.chosen_mode is None for r in records) / n,
        "accuracy": sum(r.correct for r in records) / n,
        "mean_response_tokens": sum(r.response_tokens for r in records) / n,
        "forced_think_accuracy": sum(r.think_reward for r in records) / n,
        "forced_no_think_accuracy": sum(r.no_think_reward for r in records) / n,
        "think_correct_ratio": sum(r.correct_mode == "think" for r in records) / n,  # prompts where think is right
    }


def hybrid_accuracy(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    k: int = 4,
    margin: float = 0.2,
    max_new_tokens: int = 320,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 128,
    output: str | Path | None = None,
    mode_format: bool = True,
) -> dict[str, Any]:
    """HAcc and friends overall and ``per_difficulty``; ``output`` gets ``{"summary", "records"}`` JSON.

    ``2k`` sampled rollouts per prompt (``temperature``, seeded by ``seed``) decide the correct
    mode; one greedy unforced response per prompt gives the chosen mode and the accuracy.
    """
    if k < 1:
        raise ValueError(f"k (forced samples per mode) must be >= 1, got {k}")
    prompts = [format_prompt(e.prompt, tokenizer) for e in examples]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    sampled = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
    forced = generate(model, tokenizer, prompts, 2 * k, sampled, ([THINK] * k + [NO_THINK] * k) * len(prompts), generator)
    greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size)
    unforced = generate(model, tokenizer, prompts, 1, greedy)

    rewards = [[0.0, 0.0] for _ in examples]  # [think, no_think] sums
    for i, text in enumerate(forced.texts):
        g = int(forced.group_ids[i])
        right = grade(text, examples[g].answer) and (format_ok(text) or not mode_format)
        rewards[g][0 if i % (2 * k) < k else 1] += float(right)
    records = []
    for g, e in enumerate(examples):
        think, no_think = rewards[g][0] / k, rewards[g][1] / k
        text = unforced.texts[g]
        records.append(HybridRecord(
            prompt_index=g, difficulty=e.difficulty, think_reward=think, no_think_reward=no_think,
            correct_mode=correct_mode(think, no_think, margin), chosen_mode=response_mode(text),
            correct=grade(text, e.answer), response_tokens=int(unforced.lengths[g]), text=text,
        ))

    summary = summarize_hybrid(records)
    difficulties = sorted({r.difficulty for r in records if r.difficulty is not None})
    summary["per_difficulty"] = {str(d): summarize_hybrid([r for r in records if r.difficulty == d]) for d in difficulties}
    summary["config"] = {"k": k, "margin": margin, "mode_format": mode_format, "max_new_tokens": max_new_tokens, "temperature": temperature,
                         "seed": seed, "n_examples": len(examples)}
    if output is not None:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"summary": summary, "records": [asdict(r) for r in records]}, indent=1))
        tmp.replace(path)
    return summary


def print_hybrid(summary: Mapping[str, Any], title: str = "hybrid accuracy", console: Any | None = None) -> None:
    """One row per difficulty and an overall row: HAcc, think ratio, accuracy, tokens, forced accuracies."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title)
    for col in ("difficulty", "n", "HAcc", "think ratio", "accuracy", "mean tokens", "forced think acc", "forced no-think acc"):
        table.add_column(col, justify="right")
    rows = [(d, s) for d, s in summary.get("per_difficulty", {}).items()] + [("all", summary)]
    for name, s in rows:
        pct = [f"{100 * s[key]:.1f}%" for key in ("hacc", "think_ratio", "accuracy")]
        forced = [f"{100 * s[key]:.1f}%" for key in ("forced_think_accuracy", "forced_no_think_accuracy")]
        table.add_row(name, str(s["n"]), *pct, f"{s['mean_response_tokens']:.1f}", *forced)
    console.print(table)
