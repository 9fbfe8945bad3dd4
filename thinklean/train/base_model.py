"""Build the embedded base reasoning model: SFT of a tiny Qwen2 on the task's checking styles.

The result is what ``thinklean demo`` starts RL from. It is shipped inside the package
(``thinklean/assets/base``, bfloat16 safetensors) with ``BUILD.json`` recording the command,
settings and the weights' SHA-256; ``thinklean demo --rebuild`` runs this again.

The current recipe (:data:`BASE_STAGES`) starts from the third base model
(``thinklean/assets/base-v3``, built by the same command from ``base-v2``, which was built from
``base-v1``; each keeps its ``BUILD.json``), which checks most steps of the task
(:mod:`thinklean.data.arith`), and teaches it safe checks that restate the result they confirmed,
in a mix that checks every step in three rows of five. ``init=None`` trains a tokenizer and a fresh
model instead.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from thinklean.data.arith import REPAIR_RATE, TASK, VARIANTS, X7X9_RESTATE, sft_records
from thinklean.models.tiny import (
    BASE_V3_MODEL_DIR,
    build_model,
    build_tokenizer,
    load_model,
    load_tokenizer,
    save_pretrained,
)
from thinklean.train.sft import SFTConfig, train_sft


@dataclass(frozen=True)
class BuildStage:
    """One SFT stage of the base-model recipe: its settings, style mix, number of rows, the
    share of checked risky steps first written wrong (their wrong digits masked from the loss),
    the task variant its rows come from (:data:`thinklean.data.arith.VARIANTS`), the chance that
    the ``partial`` style checks a step, and whether every risky step's first-written result is
    masked from the loss (:func:`thinklean.data.arith.render_trace`)."""

    name: str
    config: SFTConfig
    style_weights: dict[str, float]
    rows: int
    repair_rate: float = 0.0
    variant: str = TASK.name
    check_rate: float = 0.5
    mask_products: bool = False


# From base-v3 (the task's problems and check openers, most steps checked), one stage in which a
# safe check restates the result it confirmed ("Correct. The result is 2434."), so that the
# redundant share of a checking response grows: three rows in five check every step, one checks
# each step with probability 0.8, one only the risky steps; every risky step's first-written result
# is masked from the loss (docs/base-model.md, docs/task.md).
RESTATE_STYLE_WEIGHTS = {"full": 0.6, "partial": 0.2, "risky": 0.2}
BASE_STAGES = (
    BuildStage("restate", SFTConfig(steps=200, batch_size=32, lr=1e-4, save_every=100),
               RESTATE_STYLE_WEIGHTS, 6_400, REPAIR_RATE, X7X9_RESTATE.name, 0.8, mask_products=True),
)


def stage_record(stage: BuildStage) -> dict:
    """A stage as ``BUILD.json`` records it: every field, ``config`` as ``sft`` and the variant's
    settings in full."""
    record: dict = {}
    for field in fields(stage):
        value = getattr(stage, field.name)
        if field.name == "config":
            record["sft"] = asdict(value)
        elif field.name == "variant":
            record["variant"] = asdict(VARIANTS[value])
        else:
            record[field.name] = value
    return record


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_base_model(
    output_dir: str | Path,
    work_dir: str | Path,
    stages: tuple[BuildStage, ...] = BASE_STAGES,
    init: str | Path | None = BASE_V3_MODEL_DIR,
    seed: int = 0,
    resume: bool = True,
    show_progress: bool = True,
) -> dict:
    """Train the base model stage by stage in ``work_dir`` (each stage resumable) and export it
    (bf16) to ``output_dir``; returns the BUILD info written next to the weights.

    ``init``: a model directory to start from (its tokenizer too); ``None`` trains a tokenizer on
    the task corpus and starts from freshly initialised weights.
    """
    t0 = time.time()
    work_dir = Path(work_dir)
    origin: dict = {}
    if init is not None:
        init = Path(init)
        tokenizer, model = load_tokenizer(init), load_model(init)
        origin = {"path": init.name, "sha256": sha256_file(init / "model.safetensors")}
        if (init / "BUILD.json").is_file():
            origin["build"] = json.loads((init / "BUILD.json").read_text())
    else:
        # the tokenizer is built once per work dir: a resumed build must not re-derive it from a
        # corpus whose wording may have changed since (different merges = different token ids)
        tokenizer_dir = work_dir / "tokenizer"
        if (tokenizer_dir / "tokenizer.json").is_file():
            tokenizer = load_tokenizer(tokenizer_dir)
        else:
            tokenizer = build_tokenizer(seed=seed)
            tokenizer.save_pretrained(str(tokenizer_dir))
        model = build_model(tokenizer, seed=seed)
    summaries = []
    for i, stage in enumerate(stages):
        stage_dir = work_dir / stage.name
        summary_path = stage_dir / "summary.json"
        if (stage_dir / "model" / "model.safetensors").is_file() and summary_path.is_file():
            model = load_model(stage_dir / "model")
        else:
            data = sft_records(stage.rows, seed=seed + i, style_weights=stage.style_weights,
                               repair_rate=stage.repair_rate, variant=VARIANTS[stage.variant],
                               check_rate=stage.check_rate, mask_products=stage.mask_products)
            summary = train_sft(model, tokenizer, data, stage.config, stage_dir, resume=resume, show_progress=show_progress)
            summary_path.write_text(json.dumps(summary))
        summaries.append({"stage": stage.name, **json.loads(summary_path.read_text())})
    return export_base_model(work_dir / stages[-1].name / "model", output_dir, {
        "command": "thinklean demo --rebuild",
        "init": origin or None,
        "stages": [stage_record(s) for s in stages],
        "seed": seed,
        "summaries": summaries,
        "build_seconds": round(time.time() - t0, 1),
    })


def export_base_model(model_dir: str | Path, output_dir: str | Path, info: dict) -> dict:
    """Copy a trained model directory to ``output_dir`` as bf16 safetensors with ``BUILD.json``."""
    output_dir = Path(output_dir)
    tmp = output_dir.with_name(output_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    save_pretrained(model, tokenizer, tmp, dtype=torch.bfloat16)
    info = {**info, "params": sum(p.numel() for p in model.parameters()), "sha256": sha256_file(tmp / "model.safetensors")}
    (tmp / "BUILD.json").write_text(json.dumps(info, indent=1))
    if output_dir.exists():
        shutil.rmtree(output_dir)
    tmp.rename(output_dir)
    return info
