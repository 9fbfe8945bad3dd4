"""Shared by the benchmark scripts: write a result dict as JSON and say where."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(result: dict, path: str | Path) -> Path:
    """Write ``result`` to ``path`` (parents created) as indented JSON; prints and returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return out
