"""Atomic, resumable checkpoints.

Layout of ``RUN_DIR/checkpoints/step-00000100/``: ``model/`` (an HF directory with safetensors
weights and the tokenizer, loadable by ``thinklean eval --model``), ``trainer.pt`` (optimizer,
scheduler and RNG states, loaded with ``weights_only=True``) and ``state.json`` (step and any
JSON-able trainer state). A checkpoint is written into a temporary directory and renamed into
place, and ``latest`` is replaced atomically afterwards, so a crash never leaves a half-written
checkpoint that ``--resume`` would pick up.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thinklean.models.card import CardInfo
from thinklean.models.tiny import save_pretrained


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Python and torch RNG states (CPU, plus CUDA when present)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpoint:
    """A loaded checkpoint: its directory, step, trainer state and JSON state."""

    path: Path
    step: int
    trainer: dict[str, Any]
    state: dict[str, Any]

    @property
    def model_dir(self) -> Path:
        return self.path / "model"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any] | None = None,
    keep_last: int = 2,
    card: CardInfo | None = None,
) -> Path:
    """Write ``step``'s checkpoint atomically, point ``latest`` at it, prune older ones; ``card``:
    the model card of its ``model`` directory."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = root / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_pretrained(model, tokenizer, tmp / "model", card=card)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
        tmp / "trainer.pt",
    )
    (tmp / "state.json").write_text(json.dumps({"step": step, **(state or {})}, indent=1))
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(root / "latest", name)
    kept = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in kept[: max(0, len(kept) - keep_last)]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The directory ``latest`` points to, or None when the run has no checkpoint."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory written by :func:`save_checkpoint` (model weights excluded)."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    trainer = torch.load(path / "trainer.pt", weights_only=True)
    return Checkpoint(path=path, step=int(state["step"]), trainer=trainer, state=state)


def restore_training_state(ckpt: Checkpoint, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
    """Load weights, optimizer, scheduler and RNG states from ``ckpt`` into live objects."""
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for file in sorted(ckpt.model_dir.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")}
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"{ckpt.model_dir}: weights do not match the model (missing {missing}, unexpected {unexpected})")
    optimizer.load_state_dict(ckpt.trainer["optimizer"])
    scheduler.load_state_dict(ckpt.trainer["scheduler"])
    set_rng_state(ckpt.trainer["rng"])
