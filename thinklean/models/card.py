"""Hugging Face model cards: the ``README.md`` that makes a saved model directory shareable as it is.

The card opens with YAML front matter (``library_name: transformers``, ``pipeline_tag``,
``base_model`` when training started from a Hugging Face Hub model, ``tags``), then the
sections Method, Training, Configuration and, when the run evaluated its final model,
Evaluation. Only the ``README.md`` is written: the weights and tokenizer files are untouched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CARD_NAME = "README.md"
SHIPPED_BASE = Path(__file__).resolve().parent.parent / "assets"  # the embedded base models live here
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# evaluation summary entries shown in the card, in this order
_EVAL_ROWS = {"n": "problems", "accuracy": "accuracy", "mean_response_tokens": "mean response tokens",
              "mean_reasoning_tokens": "mean reasoning tokens", "format_error_rate": "format error rate",
              "truncated_rate": "truncated rate"}


@dataclass(frozen=True)
class CardInfo:
    """What a model card records: the training method (``grpo``, ``sft``, ...), the run's config,
    the optimiser or rollout steps done, where training started (a Hub id or a local path) and
    the final evaluation summary (``thinklean.eval.evaluate``'s), if any."""

    method: str
    config: Mapping[str, Any]
    steps: int
    base_model: str | None = None
    evaluation: Mapping[str, Any] | None = None
    tags: tuple[str, ...] = ()


def started_from(model: Any) -> str | None:
    """The directory or Hub id ``model`` was loaded from (``None`` for a freshly built one)."""
    return getattr(model.config, "name_or_path", "") or None


def _is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hub model id (``owner/name``) rather than a local directory."""
    return bool(_HUB_ID.match(name)) and not Path(name).exists()


def _start_text(base_model: str | None) -> str:
    if base_model is None:
        return "a freshly initialised model"
    if Path(base_model).resolve().parent == SHIPPED_BASE:
        return f"thinklean's embedded base model (`{Path(base_model).name}`)"
    return f"[`{base_model}`](https://huggingface.co/{base_model})" if _is_hub_id(base_model) else f"`{base_model}`"


def _method_text(info: CardInfo) -> str:
    config = info.config
    if "reward" in config and "advantage" in config:
        return (f"Reinforcement learning with thinklean's `{info.method}` method: reward `{config['reward']}`, "
                f"advantage `{config['advantage']}`, loss aggregation `{config.get('loss_agg')}`.")
    return f"Supervised fine-tuning with thinklean (`{info.method}`): cross-entropy on the response tokens."


def _evaluation_text(evaluation: Mapping[str, Any]) -> str:
    rows = [f"| {label} | {evaluation[key]:.4g} |" for key, label in _EVAL_ROWS.items()
            if isinstance(evaluation.get(key), (int, float))]
    return "\n".join(["The final model on held-out problems (the run's `eval.json`).", "", "| metric | value |",
                      "| --- | --- |", *rows])


def model_card(info: CardInfo) -> str:
    """The card's Markdown text (front matter + sections)."""
    front: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation"}
    if info.base_model is not None and _is_hub_id(info.base_model):
        front["base_model"] = info.base_model
    front["tags"] = list(dict.fromkeys(["thinklean", info.method, *info.tags, "reasoning"]))
    config = yaml.safe_dump(dict(info.config), sort_keys=False).rstrip()
    sections = [
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---",
        f"# thinklean {info.method} model",
        f"## Method\n\n{_method_text(info)}",
        f"## Training\n\n{info.steps} step{'' if info.steps == 1 else 's'} from {_start_text(info.base_model)}.",
        f"## Configuration\n\n```yaml\n{config}\n```",
    ]
    if info.evaluation:
        sections.append(f"## Evaluation\n\n{_evaluation_text(info.evaluation)}")
    sections.append("## Usage\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                    'model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")\n'
                    'tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")\n```')
    return "\n\n".join(sections) + "\n"


def write_model_card(directory: str | Path, info: CardInfo) -> Path:
    """Write ``DIRECTORY/README.md`` for ``info``; returns its path."""
    path = Path(directory) / CARD_NAME
    path.write_text(model_card(info))
    return path
