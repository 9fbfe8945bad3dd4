"""What the embedded task asks of a model, measured on held-out problems (docs/task.md).

Samples ``--samples`` responses per problem at ``--temperature`` and prints:
accuracy, tokens and truncation overall, per difficulty and per style (which steps the response
checked); the terse floor (the terse reference solution of the same problems, tokenised) and
the model's tokens against it; step error rates for risky and safe steps and per operation,
with and without a check. Writes everything as JSON.

    python benchmarks/task_properties.py --model base --n 500 --samples 4 --output benchmarks/results/task_base.json
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from _results import task_sampling_arguments, write_result

from thinklean.data.arith import STYLES, TASK, VARIANTS, Variant, generate_problems, solution_text
from thinklean.eval.evaluate import EvalConfig, arith_examples, evaluate
from thinklean.models.tiny import load_pretrained


def terse_floor(tokenizer, n: int, seed: int, variant: Variant = TASK) -> dict[str, float]:
    """Mean tokens (with EOS) of the terse reference solutions of the evaluated problems."""
    problems = generate_problems(n, "test", seed, variant=variant)
    per: dict[str, list[int]] = {}
    for p in problems:
        tokens = len(tokenizer(solution_text(p, "terse", random.Random(0), variant), add_special_tokens=False).input_ids) + 1
        per.setdefault(str(p.difficulty), []).append(tokens)
    out = {d: sum(v) / len(v) for d, v in sorted(per.items())}
    out["all"] = sum(sum(v) for v in per.values()) / len(problems)
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    task_sampling_arguments(ap, n=500, samples=4)
    ap.add_argument("--output", type=Path, default=None, help="JSON file (default: benchmarks/results/task_<name>.json)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer = load_pretrained(args.model)
    model.eval()
    t0 = time.time()
    config = EvalConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, samples=args.samples,
                        seed=args.seed)
    variant = VARIANTS[args.variant]
    summary = evaluate(model, tokenizer, arith_examples(args.n, "test", args.seed, variant), config)
    floor = terse_floor(tokenizer, args.n, args.seed, variant)
    seconds = time.time() - t0

    print(f"{args.model}: {summary['n']} responses, T={args.temperature}, cap {args.max_new_tokens}, {seconds:.0f} s")
    print(f"accuracy {_pct(summary['accuracy'])}, mean tokens {summary['mean_response_tokens']:.1f} "
          f"({summary['mean_response_tokens'] / floor['all']:.2f}x the terse floor {floor['all']:.1f}), "
          f"truncated {_pct(summary['truncated_rate'])}, format errors {_pct(summary['format_error_rate'])}")
    difficulties = sorted(summary["per_difficulty"], key=int)
    print("\n| style | share | accuracy | tokens | truncated | " + " | ".join(f"d{d} acc / tok" for d in difficulties) + " |")
    print("|---" * (5 + len(difficulties)) + "|")
    rows = [("all", {**summary, "per_difficulty": summary["per_difficulty"]})]
    rows += [(s, summary["per_style"][s]) for s in STYLES if s in summary["per_style"]]
    for name, st in rows:
        cells = [f"{_pct(st['per_difficulty'][d]['accuracy'])} / {st['per_difficulty'][d]['mean_response_tokens']:.0f}"
                 if d in st["per_difficulty"] else "-" for d in difficulties]
        print(f"| {name} | {st['n'] / summary['n']:.2f} | {_pct(st['accuracy'])} | {st['mean_response_tokens']:.1f} | "
              f"{_pct(st['truncated_rate'])} | " + " | ".join(cells) + " |")
    print("| terse floor | - | - | " + f"{floor['all']:.1f} | - | " + " | ".join(f"{floor[d]:.0f}" for d in difficulties) + " |")

    print("\n| steps | n | checked | error, first written | error, unchecked | error after a check | repaired | broken |")
    print("|---|---|---|---|---|---|---|---|")
    steps = dict(summary.get("steps", {}))
    reading = steps.pop("reading", None)
    for key, s in steps.items():
        print(f"| {key} | {s['steps']} | {_pct(s['check_rate'])} | {_pct(s['first_error_rate'])} | "
              f"{_pct(s['unchecked_error_rate'])} | {_pct(s['checked_error_rate'])} | {s['repaired']} | {s['broken']} |")
    faults = steps.get("risky", {}).get("check_faults")
    if faults:
        print(f"\nrisky checks ({steps['risky']['checked']}) that went wrong, by where: "
              + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in faults.items()))
    risky_by_style = {s: st["steps"]["risky"] for s, st in summary["per_style"].items()
                      if st.get("steps", {}).get("risky", {}).get("checked")}
    if risky_by_style:
        print("risky steps wrong after a check, by the response's style: "
              + ", ".join(f"{s} {_pct(r['checked_error_rate'])} of {r['checked']}" for s, r in risky_by_style.items()))
    if reading:
        print(f"\nresponses whose steps do not follow the question (operation or operand, in order): "
              f"{_pct(reading['misread_rate'])} (steps left out, in order: {_pct(reading['skipped_rate'])}); "
              f"reasoning that does not parse to the end: {_pct(reading['unparsed_rate'])}")
    out = args.output or Path(__file__).parent / "results" / f"task_{Path(str(args.model)).name}.json"
    print()
    write_result({"args": {k: str(v) for k, v in vars(args).items()}, "seconds": seconds, "terse_floor": floor,
                  "summary": summary}, out)


if __name__ == "__main__":
    main()
