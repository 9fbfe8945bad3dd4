"""Response formats: think / no-think / implicit-thought tags and prompt templates.

Think mode:     ``<think> reasoning </think> \\boxed{N}``
No-think mode:  ``<no_think> \\boxed{N} </no_think>``
Latent step:    ``<implicit_thought>N</implicit_thought>`` (LiteReason)

In the embedded tokenizer every tag below is a single special token; with other tokenizers the
tags are ordinary text.
"""

from __future__ import annotations

from typing import Any

THINK = "<think>"
THINK_END = "</think>"
NO_THINK = "<no_think>"
NO_THINK_END = "</no_think>"
LATENT = "<implicit_thought>"
LATENT_END = "</implicit_thought>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"

MODE_TAGS = (THINK, NO_THINK)
SPECIAL_TOKENS = [PAD, EOS, THINK, THINK_END, NO_THINK, NO_THINK_END, LATENT, LATENT_END]


def boxed(answer: str | int) -> str:
    """The final-answer marker graded by :mod:`thinklean.data.grading`."""
    return f"\\boxed{{{answer}}}"


def think_response(reasoning: str, answer: str | int) -> str:
    """``<think> reasoning </think> \\boxed{answer}``."""
    return f"{THINK} {reasoning} {THINK_END} {boxed(answer)}"


def no_think_response(answer: str | int) -> str:
    """``<no_think> \\boxed{answer} </no_think>``."""
    return f"{NO_THINK} {boxed(answer)} {NO_THINK_END}"


def format_prompt(question: str, tokenizer: Any | None = None) -> str:
    """The text the model is conditioned on; the response follows it directly.

    A tokenizer with a chat template (real instruct models) gets the question as one user turn;
    otherwise (the embedded tokenizer) the prompt is the question followed by a newline.
    """
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return f"{question}\n"


def response_mode(response: str) -> str | None:
    """``"think"``, ``"no_think"`` or ``None``: the mode tag the response opens with."""
    stripped = response.lstrip()
    if stripped.startswith(THINK):
        return "think"
    if stripped.startswith(NO_THINK):
        return "no_think"
    return None
