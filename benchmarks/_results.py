"""Shared by the benchmark scripts: the embedded-task sampling flags, and writing a result dict
as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def write_result(result: dict, path: str | Path) -> Path:
    """Write ``result`` to ``path`` (parents created) as indented JSON; prints and returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return out


def task_sampling_arguments(ap: argparse.ArgumentParser, n: int, samples: int) -> None:
    """``--model --n --samples --temperature --max-new-tokens --seed --variant``: which model samples
    how many held-out problems of which task variant, as the demo samples (T=1, 320 tokens)."""
    from thinklean.data.arith import TASK, VARIANTS

    ap.add_argument("--model", default="base")
    ap.add_argument("--n", type=int, default=n, help="held-out problems")
    ap.add_argument("--samples", type=int, default=samples, help="responses per problem")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", choices=list(VARIANTS), default=TASK.name,
                    help="the problem generator (x7x9, every-risky: the control arms, docs/task.md)")
