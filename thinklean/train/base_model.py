"""Build the embedded base reasoning model: tokenizer + tiny Qwen2 + SFT on mixed-verbosity data.

The result is what ``thinklean demo`` starts RL from. It is shipped inside the package
(``thinklean/assets/base``, bfloat16 safetensors) with ``BUILD.json`` recording the command,
settings and the weights' SHA-256; ``thinklean demo --rebuild`` runs this again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from thinklean.data.arith import BASE_STYLE_WEIGHTS, sft_records
from thinklean.models.tiny import build_model, build_tokenizer, load_model, load_tokenizer, save_pretrained
from thinklean.train.sft import SFTConfig, train_sft

@dataclass(frozen=True)
class BuildStage:
    """One SFT stage of the base-model recipe: its settings, style mix and number of rows."""

    name: str
    config: SFTConfig
    style_weights: dict[str, float]
    rows: int


# Stage 1 teaches the arithmetic on short terse/normal solutions (dense signal per token: the
# model must learn to copy numbers from the prompt); stage 2 adds the verbose style, so the
# base model is accurate *and* often verbose — the redundancy the RL methods remove.
# lr matters most: at 2e-3 attention stays diffuse (copied numbers come out as blends of the
# prompt's numbers, 2% accuracy after 900 steps); at 5e-4 the operand look-ups are learnt by
# step 400 (see docs/base-model.md).
BASE_STAGES = (
    BuildStage("arithmetic", SFTConfig(steps=1200, batch_size=32, lr=5e-4, warmup_ratio=0.05, save_every=100),
               {"terse": 0.6, "normal": 0.4, "verbose": 0.0}, 60_000),
    BuildStage("styles", SFTConfig(steps=300, batch_size=32, lr=3e-4, warmup_ratio=0.05, save_every=50),
               BASE_STYLE_WEIGHTS, 12_000),
)


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
    seed: int = 0,
    resume: bool = True,
    show_progress: bool = True,
) -> dict:
    """Train the base model stage by stage in ``work_dir`` (each stage resumable) and export it
    (bf16) to ``output_dir``; returns the BUILD info written next to the weights."""
    t0 = time.time()
    work_dir = Path(work_dir)
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
            data = sft_records(stage.rows, seed=seed + i, style_weights=stage.style_weights)
            summary = train_sft(model, tokenizer, data, stage.config, stage_dir, resume=resume, show_progress=show_progress)
            summary_path.write_text(json.dumps(summary))
        summaries.append({"stage": stage.name, **json.loads(summary_path.read_text())})
    return export_base_model(work_dir / stages[-1].name / "model", output_dir, {
        "command": "thinklean demo --rebuild",
        "stages": [{"name": s.name, "sft": asdict(s.config), "style_weights": s.style_weights, "rows": s.rows} for s in stages],
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
