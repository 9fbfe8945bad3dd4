"""Per-step metrics (one JSON line each, also sent to any experiment trackers; read them back
with :func:`thinklean.runlog.read_metrics`) and the stop on a non-finite loss."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from thinklean.train import trackers


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
    """Appends one JSON object per call to ``RUN_DIR/metrics.jsonl`` (flushed each line).

    With an ``accelerator`` built with trackers (:func:`thinklean.train.trackers.accelerator_kwargs`),
    a tracker run starts with ``config`` as its hyper-parameters and receives every record's
    numbers at the record's ``step``; :meth:`close` logs the final evaluation and ends the run.
    """

    def __init__(self, path: str | Path, truncate_after_step: int | None = None, accelerator: Any = None,
                 config: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():
            # On resume, drop lines logged after the checkpoint so the history has no duplicates.
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= truncate_after_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif truncate_after_step is None and self.path.exists():
            self.path.unlink()
        self.accelerator = accelerator if accelerator is not None and accelerator.log_with else None
        if self.accelerator is not None:
            trackers.start_run(self.accelerator, self.path.parent, config or {})

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.accelerator is not None:
            self.accelerator.log(trackers.scalars(record), step=record.get("step"))

    def close(self, step: int | None = None, evaluation: Mapping[str, Any] | None = None) -> None:
        """End the tracker run, first logging ``evaluation``'s numbers as ``eval/NAME`` at ``step``."""
        if self.accelerator is None:
            return
        if evaluation:
            self.accelerator.log(trackers.scalars(evaluation, prefix="eval/"), step=step)
        trackers.finish_run(self.accelerator)
