"""Demo rows over several seeds: mean and spread of accuracy and tokens, and where the tokens went.

    for s in 0 1 2; do thinklean demo --seed $s --output demo-s$s; done
    python benchmarks/demo_seeds.py demo-s0 demo-s1 demo-s2 --output benchmarks/results/demo_seeds.json

Per method: accuracy and mean response tokens (mean over the seeds, min-max), tokens saved
against GRPO, the share of risky and of safe steps the responses check (embedded task), and the
wall time. Each seed evaluates its own held-out draw of ``n_eval`` problems at T=1.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """``mean (min-max)``, or ``-`` for no values; a range with a negative end reads ``a to b``."""
    if not values:
        return "-"
    low, high = scale * min(values), scale * max(values)
    sep = " to " if low < 0 or high < 0 else "-"
    return f"{scale * statistics.fmean(values):.{digits}f} ({low:.{digits}f}{sep}{high:.{digits}f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="demo output directories (one per seed)")
    ap.add_argument("--output", type=Path, default=None, help="JSON file for the table")
    args = ap.parse_args()
    results = [json.loads((run / "results.json").read_text()) for run in args.runs]
    methods = [m for m in results[0]["methods"] if all(m in r["methods"] for r in results)]
    rows = {}
    for name in methods:
        summaries = [r["methods"][name] for r in results]
        grpo = [r["methods"].get("grpo", {}).get("mean_response_tokens") for r in results]
        saved = [1 - s["mean_response_tokens"] / g for s, g in zip(summaries, grpo) if g and name not in ("base", "grpo")]
        steps = [s.get("steps", {}) for s in summaries]
        rows[name] = {
            "seeds": [r["config"]["seed"] for r in results],
            "accuracy": [s["accuracy"] for s in summaries],
            "mean_response_tokens": [s["mean_response_tokens"] for s in summaries],
            "saved_vs_grpo": saved,
            "risky_check_rate": [st["risky"]["check_rate"] for st in steps if st.get("risky")],
            "safe_check_rate": [st["safe"]["check_rate"] for st in steps if st.get("safe")],
            "truncated_rate": [s["truncated_rate"] for s in summaries],
            "wall_seconds": [s["wall_seconds"] for s in summaries if "wall_seconds" in s],  # absent: not recorded
        }
    print(f"{len(args.runs)} seeds: " + ", ".join(str(s) for s in rows[methods[0]]["seeds"]) + " (mean, min-max)")
    print("| method | accuracy (%) | mean tokens | saved vs GRPO (%) | risky steps checked (%) | safe steps checked (%) | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        cells = [_spread(row["accuracy"], 100), _spread(row["mean_response_tokens"]), _spread(row["saved_vs_grpo"], 100),
                 _spread(row["risky_check_rate"], 100), _spread(row["safe_check_rate"], 100),
                 _spread(row["wall_seconds"], digits=0)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"runs": [str(r) for r in args.runs], "methods": rows}, indent=1))
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
