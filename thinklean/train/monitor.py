"""Per-step metrics (one JSON line each) and the rich progress bar shared by the trainers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class NonFiniteLossError(RuntimeError):
    """Raised when a loss or gradient norm is NaN/inf; the last good checkpoint is kept."""


def check_finite(step: int, **values: float) -> None:
    """Stop the run with a clear message when any value is NaN or infinite."""
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLossError(
            f"step {step}: non-finite {', '.join(f'{k}={v}' for k, v in bad.items())}; "
            "stopping (the last good checkpoint is kept; lower the learning rate or enable grad clipping)"
        )


class MetricsLog:
    """Appends one JSON object per call to ``RUN_DIR/metrics.jsonl`` (flushed each line)."""

    def __init__(self, path: str | Path, truncate_after_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():
            # On resume, drop lines logged after the checkpoint so the history has no duplicates.
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= truncate_after_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif truncate_after_step is None and self.path.exists():
            self.path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def progress_bar(disable: bool = False) -> Progress:
    """A rich progress bar with step counter, elapsed time, ETA and a free-text field."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=disable,
    )
