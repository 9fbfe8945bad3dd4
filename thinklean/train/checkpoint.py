"""Atomic, resumable checkpoints.

Layout of ``RUN_DIR/checkpoints/step-00000100/``: ``model/`` (an HF directory with safetensors
weights and the tokenizer, loadable by ``thinklean eval --model``; under FSDP ``sharded/``
instead, the model's and optimizer's shards as ``torch.distributed.checkpoint`` writes them,
resumable with the same number of processes), ``trainer.pt`` (optimizer,
scheduler and RNG states, loaded with ``weights_only=True``) and ``state.json`` (step and any
JSON-able trainer state). A checkpoint is written into a temporary directory and renamed into
place, and ``latest`` is replaced atomically afterwards, so a crash never leaves a half-written
checkpoint that ``--resume`` would pick up. Resuming takes the checkpoint ``latest`` names; when
that one is missing or unreadable, it warns and takes the newest intact earlier one
(:func:`find_checkpoint`).

A run directory holds :data:`RUN_FILES`; the CLI refuses to start a new run over them unless
told to resume or overwrite (:func:`check_run_dir`, :func:`clear_run`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thinklean.models.card import CardInfo
from thinklean.models.tiny import check_safetensors, save_pretrained

# a checkpoint's torch.distributed.checkpoint directory under FSDP (model and optimizer shards)
SHARDED_DIR = "sharded"
# what a training run writes into its directory (RL, SFT, projector SFT); --overwrite removes these
RUN_FILES = ("checkpoints", "model", "metrics.jsonl", "config.json", "eval.json", "projector", "projector_refresh.jsonl")


class CheckpointError(ValueError):
    """No usable checkpoint where one is needed, or a run directory that cannot be used as asked."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped (missing or unreadable) in favour of an earlier one."""


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
    """A loaded checkpoint: its directory, step, trainer state, JSON state and model weights."""

    path: Path
    step: int
    trainer: dict[str, Any]
    state: dict[str, Any]
    weights: dict[str, torch.Tensor]

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
    return _publish(root, tmp, step, keep_last)


def save_sharded_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                            scheduler: Any, state: dict[str, Any] | None = None, keep_last: int = 2) -> Path:
    """:func:`save_checkpoint` for a model sharded with FSDP: called by every process, each
    writing its shards (model and optimizer) into ``sharded/``; the main process writes the
    scheduler and RNG states and publishes the directory once all shards are written."""
    import torch.distributed as dist

    from thinklean.train.fsdp import save_sharded

    root = Path(run_dir) / "checkpoints"
    name = f"step-{step:08d}"
    tmp = root / f".tmp-{name}"
    main = dist.get_rank() == 0
    if main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()
    save_sharded(tmp / SHARDED_DIR, model, optimizer)
    final = root / name
    if main:
        torch.save({"scheduler": scheduler.state_dict(), "rng": rng_state()}, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **(state or {})}, indent=1))
        _publish(root, tmp, step, keep_last)
    dist.barrier()
    return final


def _publish(root: Path, tmp: Path, step: int, keep_last: int) -> Path:
    """Rename the written ``tmp`` into place, point ``latest`` at it and prune older checkpoints."""
    name = f"step-{step:08d}"
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(root / "latest", name)
    steps = _checkpoint_dirs(root)
    stale = [p for s, p in steps if s > step]  # from before a resume at an earlier step
    kept = [p for s, p in steps if s <= step]
    for old in stale + kept[: max(0, len(kept) - keep_last)]:
        shutil.rmtree(old)
    return final


def _checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    """``(step, directory)`` of every ``step-N`` directory under ``root``, by step."""
    found = []
    for path in root.glob("step-*"):
        number = path.name.removeprefix("step-")
        if path.is_dir() and number.isdigit():
            found.append((int(number), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The directory ``latest`` points to, or None when the run has no checkpoint."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


def _read(file: Path, read: Callable[[Path], Any], expected: str) -> Any:
    """``read(file)``, or :class:`CheckpointError` naming the file, the failure and ``expected``."""
    try:
        return read(file)
    except Exception as e:  # noqa: BLE001 - whatever a damaged file raises, the checkpoint is unusable
        first = (str(e).strip().splitlines() or [""])[0]
        detail = f"{type(e).__name__}: {first}" if first and len(first) <= 120 else type(e).__name__
        raise CheckpointError(f"{file}: unreadable ({detail}; expected {expected})") from e


def _state(file: Path) -> dict[str, Any]:
    state = json.loads(file.read_text())
    int(state["step"])
    return state


def _trainer(file: Path) -> dict[str, Any]:
    trainer = torch.load(file, weights_only=True)
    # a sharded checkpoint keeps the optimizer state with the model's shards
    needed = {"scheduler", "rng"} if (file.parent / SHARDED_DIR).is_dir() else {"optimizer", "scheduler", "rng"}
    if not isinstance(trainer, dict) or not needed <= trainer.keys():
        raise ValueError("optimizer, scheduler or rng state missing")
    return trainer


def _weights(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    check_safetensors(file)
    return load_file(str(file))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory written by :func:`save_checkpoint`; :class:`CheckpointError`
    naming the file when one is missing or unreadable."""
    path = Path(path)
    state = _read(path / "state.json", _state, "JSON with the checkpoint's step")
    trainer = _read(path / "trainer.pt", _trainer, "the optimizer, scheduler and RNG states")
    if (path / SHARDED_DIR).is_dir():  # FSDP: the shards are read by restore_training_state
        return Checkpoint(path=path, step=int(state["step"]), trainer=trainer, state=state, weights={})
    files = sorted((path / "model").glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path / 'model'}: no *.safetensors weights (expected the model as save_pretrained writes it)")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(_read(file, _weights, "safetensors weights"))
    return Checkpoint(path=path, step=int(state["step"]), trainer=trainer, state=state, weights=weights)


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``RUN_DIR/checkpoints`` holds a ``latest`` pointer or any ``step-N`` directory."""
    root = Path(run_dir) / "checkpoints"
    return (root / "latest").is_file() or bool(_checkpoint_dirs(root))


def find_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The checkpoint to resume from: the one ``latest`` names or, when that is missing or
    unreadable, the newest intact earlier one, with one :class:`CheckpointWarning` naming what was
    skipped. ``None`` when the run has no checkpoint; :class:`CheckpointError` when it has some but
    none is usable."""
    root = Path(run_dir) / "checkpoints"
    if not has_checkpoint(run_dir):
        return None
    dirs = _checkpoint_dirs(root)
    pointer = root / "latest"
    named = pointer.read_text().strip() if pointer.is_file() else ""
    problems = []
    if not re.fullmatch(r"step-\d+", named):
        problems.append(f"{pointer}: {'names ' + repr(named) if named else 'missing or empty'} (expected step-N)")
    else:
        dirs = [(s, p) for s, p in dirs if s <= int(named.removeprefix("step-"))]
        if not (root / named).is_dir():
            problems.append(f"{pointer}: names {named}, which is missing")
    for _, path in reversed(dirs):
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if problems:
            warnings.warn(f"{'; '.join(problems)}; resuming from {path} instead", CheckpointWarning, stacklevel=2)
        return ckpt
    raise CheckpointError(f"{root}: no usable checkpoint ({'; '.join(problems)})")


def check_run_dir(run_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before any work, a new run over an existing one, ``resume`` without a checkpoint,
    and ``resume`` with ``overwrite``: :class:`CheckpointError` naming the flag to use."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise CheckpointError("--resume and --overwrite exclude each other (continue the run, or replace it)")
    if resume and not has_checkpoint(run_dir):
        raise CheckpointError(f"--resume: {run_dir / 'checkpoints'} holds no checkpoint (drop --resume to start a new run)")
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if found and not (resume or overwrite):
        raise CheckpointError(f"--output {run_dir} already holds a run ({', '.join(found)}); pass --resume to continue "
                              "it, --overwrite to replace it, or choose another --output")


def clear_run(run_dir: str | Path) -> None:
    """Remove an earlier run's :data:`RUN_FILES` from ``run_dir`` (``--overwrite``)."""
    for name in RUN_FILES:
        path = Path(run_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def restore_training_state(ckpt: Checkpoint, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                           sharded: bool = False) -> None:
    """Load weights, optimizer, scheduler and RNG states from ``ckpt`` into live objects.

    ``sharded``: an FSDP run (every process calls it), whose model and optimizer shards come from
    ``ckpt``'s ``sharded/`` directory.
    """
    if sharded:
        from thinklean.train.fsdp import load_sharded

        if not (ckpt.path / SHARDED_DIR).is_dir():
            raise CheckpointError(f"{ckpt.path}: no {SHARDED_DIR}/ directory (this checkpoint was not written under "
                                  "FSDP; resume it with the configuration that wrote it)")
        load_sharded(ckpt.path / SHARDED_DIR, model, optimizer)
    else:
        missing, unexpected = model.load_state_dict(ckpt.weights, strict=False)
        tied = {k for k in missing if k.endswith("lm_head.weight")}
        if set(missing) - tied or unexpected:
            raise RuntimeError(f"{ckpt.model_dir}: weights do not match the model (missing {missing}, "
                               f"unexpected {unexpected})")
        optimizer.load_state_dict(ckpt.trainer["optimizer"])
    scheduler.load_state_dict(ckpt.trainer["scheduler"])
    set_rng_state(ckpt.trainer["rng"])
