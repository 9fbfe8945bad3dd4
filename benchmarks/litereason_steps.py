"""LiteReason: which latent steps go wrong? Error rate of latent operations, risky against safe.

    python benchmarks/litereason_steps.py --model runs/lr-sft/model --targets checks
    python benchmarks/litereason_steps.py --model runs/lr-sft/model --targets results --quick

Samples one response per held-out embedded-task problem with latent decoding (T=1 and the
320-token cap, as the demo samples), reads every latent segment back as the 4 digits whose
embeddings are nearest (cosine) to its 4 latent inputs, and compares each operation's result
segment with the true intermediate value. An operation counts only while every earlier one was
read right (its input was right), so the rate is the step's own error. ``--targets`` says how
the model's rows laid out the segments (``checks``: a multiplication has three, its check's
partial products and then the result; ``results``: one per operation; ``safe``: one per addition
or subtraction, a multiplication is written with its check and counts by the value the check
carries on with). Responses whose segments do not follow that layout are counted apart. Prints
a table, writes JSON.
"""

from __future__ import annotations

import argparse
import re

import torch
from _results import write_result
from rich.console import Console
from rich.table import Table

from thinklean.data.litereason import TARGET_KINDS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a LiteReason model directory (LM + projector.json)")
    p.add_argument("--targets", choices=TARGET_KINDS, default="results",
                   help="the segment layout it was trained on")
    p.add_argument("--n", type=int, default=500, help="held-out problems")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=320)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: 8 problems")
    p.add_argument("--out", default="benchmarks/results/litereason_steps.json")
    args = p.parse_args(argv)
    if args.quick:
        args.n = 8
    return args


WRITTEN_PRODUCT = re.compile(r"(\d+) \* (\d+) = (\d+)\.(?:[^<]*?The result is (\d+)\.)?")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from thinklean.data.arith import is_risky, parse_question
    from thinklean.data.formats import format_prompt
    from thinklean.data.grading import grade
    from thinklean.data.litereason import TARGET_DIGITS, litereason_prompt
    from thinklean.eval.evaluate import arith_examples
    from thinklean.methods.litereason import load_projector
    from thinklean.models.tiny import load_pretrained
    from thinklean.rollout import SamplingConfig
    from thinklean.rollout.latent import generate_latent

    torch.set_num_threads(args.threads)
    model, tokenizer = load_pretrained(args.model)
    source = load_projector(model, warn=False)
    examples = arith_examples(args.n, "test", args.seed)
    prompts = [format_prompt(litereason_prompt(e.prompt), tokenizer) for e in examples]
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        batch = generate_latent(model, tokenizer, source, prompts, 1,
                                SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature),
                                generator)
        table = model.get_input_embeddings()(torch.tensor(
            [tokenizer(str(d), add_special_tokens=False).input_ids[0] for d in range(10)])).float()
    table = torch.nn.functional.normalize(table, dim=-1)
    counts = {kind: {"steps": 0, "wrong": 0} for kind in ("risky", "safe")}
    risky_segments = {"checks": 3, "results": 1, "safe": 0}[args.targets]  # latent segments per multiplication
    off_layout = correct = 0
    for example, vectors, segments, text in zip(examples, batch.latent_inputs, batch.latent_segments, batch.texts):
        correct += grade(text, example.answer)
        problem = parse_question(example.prompt)
        per_op = [risky_segments if is_risky(s) else 1 for s, _ in problem.ops]
        if [n for _, n in segments] != [TARGET_DIGITS] * sum(per_op):
            off_layout += 1
            continue
        read = (torch.nn.functional.normalize(vectors.float(), dim=-1) @ table.T).argmax(-1).tolist()
        digits = "".join(map(str, read))
        end, written = 0, WRITTEN_PRODUCT.finditer(text)
        for (symbol, _), value, segs in zip(problem.ops, problem.values()[1:], per_op):
            end += segs * TARGET_DIGITS
            kind = "risky" if is_risky(symbol) else "safe"
            counts[kind]["steps"] += 1
            if segs == 0:  # written: the value its check carries on with, else its first result
                product = next(written, None)
                result = None if product is None else int(product[4] or product[3])
            else:
                result = digits[end - TARGET_DIGITS: end]
                value = f"{value:0{TARGET_DIGITS}d}"
            if result != value:
                counts[kind]["wrong"] += 1
                break
    rates = {kind: c["wrong"] / c["steps"] if c["steps"] else None for kind, c in counts.items()}
    result = {"model": args.model, "targets": args.targets, "n": args.n, "temperature": args.temperature,
              "seed": args.seed, "accuracy": correct / len(examples), "off_layout": off_layout / len(examples),
              "steps": counts, "error_rate": rates,
              "discrete_tokens": float(batch.lengths.float().mean()),
              "latent_steps": float(batch.latent_steps.float().mean())}
    view = Table(title=f"latent step errors: {args.model} ({args.n} held-out problems, T={args.temperature})")
    for column in ("step", "latent steps read", "wrong", "error rate"):
        view.add_column(column)
    for kind, c in counts.items():
        view.add_row(kind, str(c["steps"]), str(c["wrong"]), "-" if rates[kind] is None else f"{100 * rates[kind]:.1f}%")
    Console(width=120).print(view)
    print(f"accuracy {100 * result['accuracy']:.1f}%, {result['discrete_tokens']:.1f} discrete tokens, "
          f"{result['latent_steps']:.1f} latent steps, off layout {100 * result['off_layout']:.1f}%")
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
