"""The 2026 length-shaping rules next to GRPO, HMPO, Kimi and L1: one table from demo outputs.

    thinklean demo --methods linear_passrate,efficiency_bonus,gr3,lead,opo,quantile_penalty,shortest_bonus \\
        --seed 0 --output runs/length-rules
    python benchmarks/length_rules.py runs/length-rules --reference demo-s0 \\
        --output benchmarks/results/length_rules.json

Per row: held-out accuracy and mean response tokens (500 problems sampled at T=1), the same per
difficulty, and the tokens saved against GRPO. ``--reference`` adds the rows of an earlier demo
with the same seed, budget and base model (its ``results.json`` config must match) that the new
run did not train, e.g. ``grpo`` and ``hmpo``; rows missing from the run are listed as missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _results import write_result

RULES = ("linear_passrate", "efficiency_bonus", "gr3", "lead", "opo", "quantile_penalty", "shortest_bonus")
REFERENCES = ("base", "grpo", "hmpo", "kimi", "l1", "iapo", "thinkprune")


def row(summary: dict[str, Any], grpo_tokens: float | None) -> dict[str, Any]:
    """Accuracy, tokens and per-difficulty figures of one demo row's evaluation summary."""
    tokens = summary["mean_response_tokens"]
    return {
        "accuracy": summary["accuracy"],
        "mean_response_tokens": tokens,
        "saved_vs_grpo": None if grpo_tokens is None else 1 - tokens / grpo_tokens,
        "per_difficulty": {level: {"accuracy": d["accuracy"], "mean_response_tokens": d["mean_response_tokens"],
                                   "n": d["n"]} for level, d in sorted(summary["per_difficulty"].items())},
        "wall_seconds": summary.get("wall_seconds"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="demo output directory with the rule rows")
    ap.add_argument("--reference", type=Path, default=None, help="earlier demo directory for GRPO, HMPO, ...")
    ap.add_argument("--output", type=Path, default=None, help="JSON file for the table")
    ap.add_argument("--note", default="", help="free text stored with the table (command, date, machine)")
    args = ap.parse_args()
    results = json.loads((args.run / "results.json").read_text())
    methods = dict(results["methods"])
    if args.reference is not None:
        reference = json.loads((args.reference / "results.json").read_text())
        keys = ("seed", "budget", "base_model_sha256")
        if any(reference["config"].get(k) != results["config"].get(k) for k in keys):
            raise SystemExit(f"{args.reference}: another seed, budget or base model than {args.run}")
        methods = {**{m: reference["methods"][m] for m in REFERENCES if m in reference["methods"]}, **methods}
    grpo = methods.get("grpo", {}).get("mean_response_tokens")
    table = {name: {**row(summary, grpo), "source": "reference" if name in REFERENCES else "run"}
             for name, summary in methods.items()}
    out = {"run": str(args.run), "reference": str(args.reference) if args.reference else None,
           "config": {k: results["config"][k] for k in ("seed", "budget", "base_model_sha256")},
           "note": args.note, "rows": table, "missing": [r for r in RULES if r not in methods]}
    for name, r in table.items():
        print(f"{name:18} {100 * r['accuracy']:5.1f}%  {r['mean_response_tokens']:6.1f} tokens")
    if args.output is not None:
        write_result(out, args.output)


if __name__ == "__main__":
    main()
