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
from dataclasses import asdict
from pathlib import Path

import torch

from thinklean.data.arith import BASE_STYLE_WEIGHTS, sft_records
from thinklean.models.tiny import build_model, build_tokenizer, load_model, save_pretrained
from thinklean.train.sft import SFTConfig, train_sft

BASE_SFT = SFTConfig(steps=500, batch_size=32, lr=2e-3, warmup_ratio=0.03, save_every=100, log_every=10)
BASE_ROWS = 30_000


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_base_model(
    output_dir: str | Path,
    work_dir: str | Path,
    config: SFTConfig = BASE_SFT,
    rows: int = BASE_ROWS,
    seed: int = 0,
    resume: bool = False,
    show_progress: bool = True,
) -> dict:
    """Train the base model in ``work_dir`` and export it (bf16) to ``output_dir``; returns BUILD info."""
    t0 = time.time()
    tokenizer = build_tokenizer(seed=seed)
    model = build_model(tokenizer, seed=seed)
    data = sft_records(rows, seed=seed, style_weights=BASE_STYLE_WEIGHTS)
    summary = train_sft(model, tokenizer, data, config, work_dir, resume=resume, show_progress=show_progress)
    return export_base_model(Path(work_dir) / "model", output_dir, {
        "command": "thinklean demo --rebuild",
        "sft": asdict(config),
        "rows": rows,
        "seed": seed,
        "style_weights": BASE_STYLE_WEIGHTS,
        "final_loss": summary["final_loss"],
        "build_seconds": round(time.time() - t0, 1),
    })


def export_base_model(model_dir: str | Path, output_dir: str | Path, info: dict) -> dict:
    """Copy a trained model directory to ``output_dir`` as bf16 safetensors with ``BUILD.json``."""
    from thinklean.models.tiny import load_tokenizer

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
