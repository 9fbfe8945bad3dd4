"""Rich terminal tables for evaluation summaries and method comparisons."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def print_eval(summary: Mapping[str, Any], title: str = "evaluation", console: Console | None = None) -> None:
    """Overall row plus one row per difficulty: accuracy, mean/median/p90 tokens, format errors."""
    console = console or Console()
    table = Table(title=title)
    for col in ("difficulty", "n", "accuracy", "mean tokens", "median", "p90", "reasoning", "format err"):
        table.add_column(col, justify="right")
    rows = [(str(d), s) for d, s in summary.get("per_difficulty", {}).items()] + [("all", summary)]
    for name, s in rows:
        table.add_row(
            name, str(s["n"]), _pct(s["accuracy"]), f"{s['mean_response_tokens']:.1f}",
            f"{s['median_response_tokens']:.0f}", f"{s['p90_response_tokens']:.0f}",
            f"{s['mean_reasoning_tokens']:.1f}", _pct(s["format_error_rate"]),
        )
    console.print(table)
    if summary.get("per_style"):
        styles = ", ".join(f"{k}: {v['n']} × {v['mean_response_tokens']:.0f} tok" for k, v in summary["per_style"].items())
        console.print(f"responses by style: {styles}")


def print_comparison(methods: Mapping[str, Mapping[str, Any]], console: Console | None = None) -> None:
    """One row per method: accuracy, mean tokens, compression vs base and vs GRPO when present."""
    console = console or Console()
    table = Table(title="methods on held-out problems")
    for col in ("method", "accuracy", "mean tokens", "tokens saved vs base", "saved vs grpo", "format err"):
        table.add_column(col, justify="right")
    base = methods.get("base", {}).get("mean_response_tokens")
    grpo = methods.get("grpo", {}).get("mean_response_tokens")
    for name, s in methods.items():
        tokens = s["mean_response_tokens"]
        table.add_row(
            name, _pct(s["accuracy"]), f"{tokens:.1f}",
            "-" if not base or name == "base" else f"{100 * (1 - tokens / base):+.1f}%",
            "-" if not grpo or name in ("base", "grpo") else f"{100 * (1 - tokens / grpo):+.1f}%",
            _pct(s.get("format_error_rate")),
        )
    console.print(table)
