"""Run logs any layer may read or show: ``metrics.jsonl`` records and the terminal progress bar.

It imports nothing of thinklean, so data builders, evaluation and reports use it without
depending on the trainers (:class:`thinklean.train.monitor.MetricsLog` writes the records).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


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
