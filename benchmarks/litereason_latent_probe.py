"""LiteReason diagnostic: do the projector's latent steps carry the reasoning they replace?

    python benchmarks/litereason_latent_probe.py --model runs/lr-sft/model --n 300

Decodes held-out problems with latent steps (greedy and T=1; the prompt carries LiteReason's
instruction) and reports accuracy, discrete tokens, how many responses use latent segments and
accuracy with and without them. Then, on 1-operation problems, it forces the whole computation
into latent steps (``<think> <implicit_thought>K</implicit_thought>``) and, as the control, into
nothing (``<think> </think>``): if the latents carried the arithmetic, the first would beat the
second. A table and a JSON.
"""

from __future__ import annotations

import argparse

import torch
from _results import write_result
from rich.console import Console
from rich.table import Table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model directory with projector.safetensors (thinklean litereason-sft)")
    p.add_argument("--n", type=int, default=300, help="held-out problems for the free decoding")
    p.add_argument("--forced", type=int, default=40, help="held-out 1-operation problems for the forced prefixes")
    p.add_argument("--latent-steps", type=int, default=2, help="K in the forced latent-only prefix")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/litereason_latent_probe.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from thinklean.data.formats import LATENT, LATENT_END, format_prompt
    from thinklean.data.grading import grade
    from thinklean.data.litereason import litereason_prompt
    from thinklean.eval.evaluate import arith_examples
    from thinklean.methods.litereason import load_projector
    from thinklean.models.tiny import load_pretrained
    from thinklean.rollout.engine import SamplingConfig
    from thinklean.rollout.latent import generate_latent

    model, tokenizer = load_pretrained(args.model)
    projector = load_projector(model)

    def decode(examples, temperature: float, prefix: str | None = None, max_new_tokens: int = args.max_new_tokens):
        prompts = [format_prompt(litereason_prompt(e.prompt), tokenizer) for e in examples]
        batch = generate_latent(model, tokenizer, projector, prompts,
                                config=SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature),
                                generator=torch.Generator().manual_seed(args.seed),
                                forced_prefixes=[prefix] * len(prompts) if prefix else None)
        correct = [grade(text, e.answer) for text, e in zip(batch.texts, examples)]
        latent = [steps > 0 for steps in batch.latent_steps.tolist()]

        def accuracy(rows: list[bool]) -> float | None:
            return sum(rows) / len(rows) if rows else None

        return {"n": len(examples), "accuracy": accuracy(correct),
                "discrete_tokens": float(batch.response_mask.sum(1).float().mean()),
                "with_latent": accuracy(latent), "latent_steps": float(batch.latent_steps.float().mean()),
                "accuracy_with_latent": accuracy([c for c, u in zip(correct, latent) if u]),
                "accuracy_without_latent": accuracy([c for c, u in zip(correct, latent) if not u]),
                "example": batch.texts[0]}

    held_out = arith_examples(args.n, "test", args.seed)
    one_op = [e for e in arith_examples(max(args.n, 6 * args.forced + 60), "test", args.seed) if e.difficulty == 1]
    one_op = one_op[: args.forced]
    latent_only = f"<think> {LATENT}{args.latent_steps}{LATENT_END}"
    rows = {
        "greedy": decode(held_out, 0.0),
        "T=1": decode(held_out, 1.0),
        f"1 op, latent only (K={args.latent_steps})": decode(one_op, 0.0, latent_only, 40),
        "1 op, empty think": decode(one_op, 0.0, "<think> </think>", 40),
    }
    table = Table(title=f"latent steps of {args.model}")
    for name in ("decoding", "n", "accuracy", "discrete tokens", "with latent", "latent steps", "acc. with / without latent"):
        table.add_column(name)

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    for name, r in rows.items():
        table.add_row(name, str(r["n"]), pct(r["accuracy"]), f"{r['discrete_tokens']:.1f}", pct(r["with_latent"]),
                      f"{r['latent_steps']:.2f}", f"{pct(r['accuracy_with_latent'])} / {pct(r['accuracy_without_latent'])}")
    Console().print(table)
    result = {"model": args.model, "seed": args.seed, "rows": rows}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
