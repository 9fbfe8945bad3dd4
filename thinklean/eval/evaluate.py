"""Evaluate a model on a set of problems: batched generation, grading, metrics, JSON output."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thinklean.data.arith import TASK, Variant, generate_problems
from thinklean.data.formats import format_prompt, response_mode
from thinklean.data.grading import format_ok, grade, reasoning_span
from thinklean.data.jsonl import Example
from thinklean.eval.metrics import ResponseRecord, records_to_json, summarize, summarize_by_difficulty
from thinklean.eval.steps import step_stats, style_stats
from thinklean.rollout import RolloutBatch, SamplingConfig, generate
from thinklean.rollout.vllm_engine import VLLMRollout


@dataclass
class EvalConfig:
    """Generation settings for evaluation (greedy by default)."""

    max_new_tokens: int = 320
    temperature: float = 0.0
    top_p: float = 1.0
    samples: int = 1
    batch_size: int = 128
    seed: int = 0
    forced_prefix: str = ""  # written at the start of every response, e.g. "<think>" (hybrid models)
    answer_extraction: str = "boxed"  # or "flexible": the last number when nothing is boxed (grading.extract_answer)


def arith_examples(n: int = 500, split: str = "test", seed: int = 0, variant: Variant = TASK) -> list[Example]:
    """Embedded-task problems (difficulties 1–6 in equal shares) of ``variant``'s generator; test
    problems are distinct, training problems may repeat (there are only about a thousand with one
    operation)."""
    return [
        Example(prompt=p.question, answer=str(p.answer), difficulty=p.difficulty)
        for p in generate_problems(n, split, seed, distinct=split == "test", variant=variant)
    ]


REASONING_GYM = "reasoning-gym:"


def reasoning_gym_examples(task: str, n: int, seed: int = 0) -> list[Example]:
    """``n`` problems of a reasoning-gym task (e.g. ``gsm_symbolic``), generated offline from ``seed``.

    Needs the optional package ``reasoning-gym`` (``pip install "thinklean[reasoning-gym]"``).
    Answers are graded like every dataset here, on the response's last ``\\boxed{}``, so tasks
    with numeric or math answers fit; ImportError / ValueError say what is missing or unknown.
    """
    try:
        import reasoning_gym
    except ImportError as e:
        raise ImportError("needs the optional package reasoning-gym: pip install \"thinklean[reasoning-gym]\"") from e
    if n < 1:
        raise ValueError(f"the number of problems to generate must be >= 1, got {n}")
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        close = difflib.get_close_matches(task, DATASETS, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "e.g. gsm_symbolic, basic_arithmetic, chain_sum"
        raise ValueError(f"unknown reasoning-gym task {task!r} ({hint})")
    return [Example(prompt=entry["question"], answer=str(entry["answer"]))
            for entry in reasoning_gym.create_dataset(task, size=n, seed=seed)]


def _count_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False).input_ids) if text else 0


def grade_rollout(tokenizer: Any, examples: Sequence[Example], batch: RolloutBatch, start: int = 0,
                  extraction: str = "boxed") -> list[ResponseRecord]:
    """One graded record per row of ``batch``, whose group ``g`` is ``examples[start + g]``.
    ``response_tokens`` is the row's length (discrete tokens only, for latent rollouts);
    ``extraction`` as in :func:`thinklean.data.grading.extract_answer`."""
    records = []
    for i, text in enumerate(batch.texts):
        index = start + int(batch.group_ids[i])
        example = examples[index]
        records.append(ResponseRecord(
            prompt_index=index, difficulty=example.difficulty, correct=grade(text, example.answer, extraction),
            format_ok=format_ok(text), response_tokens=int(batch.lengths[i]),
            reasoning_tokens=_count_tokens(tokenizer, reasoning_span(text)), mode=response_mode(text),
            finished=bool(batch.finished[i]), text=text,
        ))
    return records


def run_generation(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    config: EvalConfig,
    on_progress: Callable[[int], None] | None = None,
    engine: VLLMRollout | None = None,
) -> list[ResponseRecord]:
    """Generate ``config.samples`` responses per example and grade each one.

    ``on_progress(n)`` is called after each chunk of ``n`` examples is graded. ``engine``: a vLLM
    engine holding ``model``'s weights samples instead of thinklean's decode loop.
    """
    prompts = [format_prompt(e.prompt, tokenizer) for e in examples]
    generator = None if engine else torch.Generator(device=next(model.parameters()).device).manual_seed(config.seed)
    sampling = SamplingConfig(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        batch_size=config.batch_size,
    )
    # chunks of whole decode batches: same batches, same sampling order, as one generate call
    chunk = math.lcm(config.batch_size, config.samples) // config.samples
    records = []
    for start in range(0, len(prompts), chunk):
        part = prompts[start : start + chunk]
        prefixes = [config.forced_prefix] * (len(part) * config.samples) if config.forced_prefix else None
        if engine is None:
            batch = generate(model, tokenizer, part, config.samples, sampling, forced_prefixes=prefixes, generator=generator)
        else:  # every row of the evaluation gets its own seed
            batch = engine.generate(part, config.samples, sampling, prefixes, seed=config.seed * 1_000_003 + start * config.samples)
        records += grade_rollout(tokenizer, examples, batch, start, config.answer_extraction)
        if on_progress is not None:
            on_progress(len(part))
    return records


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    config: EvalConfig = EvalConfig(),
    output: str | Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    engine: VLLMRollout | None = None,
) -> dict[str, Any]:
    """Metrics overall, per difficulty and per reasoning style, and (on the embedded task) step
    error rates with and without checks; optionally written as JSON.

    ``output`` receives ``{"summary": ..., "responses": [...]}`` (the per-response records);
    ``on_progress`` and ``engine`` as in :func:`run_generation`.
    """
    records = run_generation(model, tokenizer, examples, config, on_progress=on_progress, engine=engine)
    ks = [k for k in (1, 2, 4, 8) if k <= config.samples] if config.samples > 1 else []
    summary = summarize(records, ks)
    summary["per_difficulty"] = summarize_by_difficulty(records)
    summary["per_style"] = style_stats(records, [e.prompt for e in examples])
    steps = step_stats((examples[r.prompt_index].prompt, r.text) for r in records)
    if steps:  # embedded-task responses: step error rates with and without checks
        summary["steps"] = steps
    summary["config"] = {**config.__dict__, "n_examples": len(examples)}
    if output is not None:
        path = Path(output)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"summary": summary, "responses": records_to_json(records)}, indent=1))
        tmp.replace(path)
    return summary
