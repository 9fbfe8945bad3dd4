"""Teacher-forced accuracy of an embedded-task model by token role (what it has learnt so far).

Feeds each held-out problem's terse solution after its prompt and checks the greedy next-token
prediction at every position, grouped by what the token is: ``lhs`` (the value a step starts
from: a copy of the start number for step 1, of the previous result after), ``op`` (operator
symbol), ``operand`` (a copy of the k-th operation's number from the prompt), ``result`` (the
arithmetic). ``1`` marks step 1, ``n`` later steps. Useful while building a base model: copying
is learnt first, the look-up of later operands next, the arithmetic last.

    python benchmarks/base_model_roles.py MODEL_DIR [--n 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch

from thinklean.data.arith import generate_problems
from thinklean.data.formats import THINK, format_prompt
from thinklean.models.tiny import load_pretrained


def role_spans(problem) -> tuple[str, list[tuple[int, int, str]]]:
    """The terse response text (without the answer) and ``(start, end, role)`` character spans."""
    values = problem.values()
    text, spans = THINK, []
    for i, ((symbol, k), a, b) in enumerate(zip(problem.ops, values[:-1], values[1:])):
        tag = "1" if i == 0 else "n"
        for piece, role in ((" ", None), (str(a), "lhs" + tag), (" " + symbol, "op" + tag), (" ", None),
                            (str(k), "operand" + tag), (" = ", None), (str(b), "result"), (".", None)):
            if role:
                spans.append((len(text), len(text) + len(piece), role))
            text += piece
    return text, spans


@torch.no_grad()
def role_accuracy(model_dir: str, n: int = 200, seed: int = 0) -> dict[str, float]:
    """Greedy teacher-forced accuracy per role on ``n`` held-out problems."""
    model, tokenizer = load_pretrained(model_dir)
    model.eval()
    hits, totals = Counter(), Counter()
    for problem in generate_problems(n, "test", seed):
        prompt = tokenizer(format_prompt(problem.question, tokenizer), add_special_tokens=False).input_ids
        text, spans = role_spans(problem)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        logits = model(torch.tensor([prompt + enc.input_ids])).logits[0, len(prompt) - 1 : -1]
        for (start, end), pred, target in zip(enc.offset_mapping, logits.argmax(-1).tolist(), enc.input_ids):
            role = next((r for a, b, r in spans if start < b and end > a), None)
            if role:
                totals[role] += 1
                hits[role] += pred == target
    return {role: hits[role] / totals[role] for role in sorted(totals)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory (or 'base' for the shipped one)")
    parser.add_argument("--n", type=int, default=200, help="held-out problems (default 200)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    accuracy = role_accuracy(args.model, args.n)
    print(" | ".join(f"{role} {acc:.2f}" for role, acc in accuracy.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "n": args.n, "accuracy": accuracy}, f, indent=1)


if __name__ == "__main__":
    main()
