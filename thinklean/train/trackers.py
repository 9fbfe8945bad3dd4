"""Experiment trackers (TensorBoard, Weights & Biases, MLflow, Trackio) through accelerate's
tracker API: ``Accelerator(log_with=...)``, ``init_trackers`` and ``log``.

``report_to`` is ``none``, one tracker, a comma-separated list of them, or ``all`` (every
installed one). Each tracker is an optional extra (``pip install 'thinklean[wandb]'``).
:class:`thinklean.train.monitor.MetricsLog` sends each ``metrics.jsonl`` record to the
trackers, so every trainer logs the same metrics; accelerate logs on the main process only.
The run is ``thinklean`` (the W&B / Trackio project, the MLflow experiment) and takes the run
directory's name; TensorBoard writes its event files under ``RUN_DIR/tensorboard/thinklean``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PROJECT = "thinklean"
# tracker -> the module it needs (each tracker's pip extra has the tracker's name)
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
CHOICES = ("none", *TRACKERS, "all")


class TrackerError(ValueError):
    """A ``report_to`` value naming an unknown tracker or one whose package is missing."""


def installed(tracker: str) -> bool:
    """Whether ``tracker``'s package can be imported."""
    return importlib.util.find_spec(TRACKERS[tracker]) is not None


def resolve_report_to(report_to: str) -> list[str]:
    """The trackers ``report_to`` names, each installed; :class:`TrackerError` otherwise.

    ``"none"`` -> ``[]``; ``"all"`` -> every installed tracker (at least one must be).
    """
    names = [name.strip() for name in report_to.split(",") if name.strip()]
    unknown = [name for name in names if name not in CHOICES]
    if unknown or not names:
        raise TrackerError(f"unknown tracker {', '.join(unknown) or repr(report_to)} "
                           f"(expected {', '.join(CHOICES)} or a comma-separated list of trackers)")
    if names == ["none"]:
        return []
    if "all" in names:
        found = [tracker for tracker in TRACKERS if installed(tracker)]
        if not found:
            raise TrackerError("'all' found no tracker installed (e.g. pip install 'thinklean[tensorboard]'; "
                               f"extras: {', '.join(TRACKERS)})")
        return found
    if "none" in names:
        raise TrackerError("'none' cannot be combined with trackers")
    for name in names:
        if not installed(name):
            raise TrackerError(f"the {name} tracker needs the {TRACKERS[name]} package: pip install 'thinklean[{name}]'")
    return list(dict.fromkeys(names))


def accelerator_kwargs(report_to: str, run_dir: str | Path) -> dict[str, Any]:
    """``Accelerator`` keyword arguments that enable ``report_to``'s trackers for ``run_dir``
    (none for ``"none"``, so untracked runs build the same Accelerator as before)."""
    from accelerate.utils import ProjectConfiguration

    trackers = resolve_report_to(report_to)
    if not trackers:
        return {}
    run_dir = Path(run_dir)
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard"))
    return {"log_with": trackers, "project_config": project}


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``config`` as hyper-parameters: nested dicts become ``outer.inner`` keys and values other
    than numbers, strings, booleans and ``None`` become strings (what every tracker accepts)."""
    params: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            params.update(flat_params(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            params[name] = value
        else:
            params[name] = str(value)
    return params


def scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of ``record`` (``step`` excluded: it is the x axis), keys prefixed."""
    return {f"{prefix}{key}": value for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


def start_run(accelerator: Any, run_dir: str | Path, config: Mapping[str, Any]) -> None:
    """Open a tracker run named after ``run_dir`` with ``config`` as its hyper-parameters."""
    name = Path(run_dir).name
    accelerator.init_trackers(PROJECT, config=flat_params(config),
                              init_kwargs={"wandb": {"name": name}, "mlflow": {"run_name": name},
                                           "trackio": {"name": name}})


def finish_run(accelerator: Any) -> None:
    """Close the trackers (not ``end_training``, which would also end the process group)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()
