"""``thinklean demo``: the shipped base model on held-out problems, end to end, in one command.

A thin script over library calls: load (or ``--rebuild``) the base model, evaluate it, print
the table, and write ``OUTPUT/results.json`` shaped ``{"methods": {"base": {...}}, "config":
{...}}`` — later stages add one entry per trained method under ``methods``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from thinklean.eval.evaluate import EvalConfig, arith_examples, evaluate
from thinklean.eval.tables import print_comparison, print_eval
from thinklean.models.tiny import BASE_MODEL_DIR, load_pretrained


def run_demo(output: str | Path = "demo-out", quick: bool = False, rebuild: bool = False, seed: int = 0,
             n_eval: int | None = None) -> dict[str, Any]:
    """Evaluate the base model and write ``results.json``; returns the results dict."""
    console = Console()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if rebuild:
        from thinklean.train.base_model import build_base_model

        console.print("[bold]rebuilding the base model[/bold] (SFT on mixed-verbosity arithmetic)")
        info = build_base_model(BASE_MODEL_DIR, output / "base-build", seed=seed)
        console.print(f"base model rebuilt: sha256 {info['sha256']}")
    n = n_eval if n_eval is not None else (60 if quick else 500)
    model, tokenizer = load_pretrained(BASE_MODEL_DIR)
    examples = arith_examples(n, "test", seed)
    console.print(f"[bold]evaluating the base model[/bold] on {n} held-out problems (greedy)")
    base = evaluate(model, tokenizer, examples, EvalConfig(seed=seed), output=output / "base" / "eval.json")
    print_eval(base, "base model", console)
    results = {
        "methods": {"base": base},
        "config": {"seed": seed, "n_eval": n, "quick": quick, "model": str(BASE_MODEL_DIR)},
    }
    print_comparison(results["methods"], console)
    (output / "results.json").write_text(json.dumps(results, indent=1))
    console.print(f"wrote {output / 'results.json'} in {time.time() - start:.0f}s")
    return results
