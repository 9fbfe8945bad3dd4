"""LiteReason diagnostic: can the embedded model learn to do arithmetic in latent steps at all?

    python benchmarks/litereason_capacity.py --experiment capacity --epochs 6
    python benchmarks/litereason_capacity.py --experiment curriculum

Both train the LM *and* the projector (``train_projector(with_lm=True)``) from the shipped base
model on rendered terse traces (``7 + 5 = 12. 12 * 3 = 36.``, the shortest correct traces the
task has), so they measure the most favourable case.

- ``capacity``: 1- and 2-operation problems, two response formats trained the same way: every
  reasoning sentence latent (``<think> <implicit_thought>N</implicit_thought> </think>
  \\boxed{36}``, N = 1 or 2 per step) against no reasoning at all (``<think> </think>
  \\boxed{36}``). If the latent steps carried computation, the first would learn faster and
  further than the second, whose answer needs the arithmetic inside one forward pass.
- ``curriculum``: a Coconut-style curriculum (arXiv 2412.06769) over all difficulties: stage s
  replaces the first s sentences (:func:`~thinklean.data.litereason.latent_prefix_variant`),
  one pass per stage, so stage 6 is fully latent.

Each evaluation decodes held-out problems greedily with latent steps (the prompt carries
LiteReason's instruction). A table and a JSON.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from _results import write_result
from rich.console import Console
from rich.table import Table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", choices=["capacity", "curriculum"], required=True)
    p.add_argument("--model", default="base", help="'base' (shipped) or a local model directory")
    p.add_argument("--rows", type=int, default=4000, help="training rows per pass (capacity) or stage (curriculum)")
    p.add_argument("--epochs", type=int, default=6, help="capacity: passes over the rows, evaluated after each")
    p.add_argument("--stages", type=int, default=6, help="curriculum: stages (stage s replaces the first s sentences)")
    p.add_argument("--lr", type=float, default=3e-4, help="constant after 10%% warm-up per pass, cosine to 0.1x")
    p.add_argument("--eval", type=int, default=300, help="held-out problems drawn (capacity keeps the 1-2-op ones)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/litereason_<experiment>.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from thinklean.data.arith import generate_problems, solution_text
    from thinklean.data.formats import format_prompt
    from thinklean.data.grading import grade
    from thinklean.data.litereason import latent_prefix_variant, litereason_prompt
    from thinklean.eval.evaluate import arith_examples
    from thinklean.methods.litereason import load_projector, projector_sft_config, train_projector
    from thinklean.models.tiny import load_pretrained
    from thinklean.rollout.engine import SamplingConfig
    from thinklean.rollout.latent import generate_latent

    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    difficulties = (1, 2) if args.experiment == "capacity" else (1, 2, 3, 4, 5, 6)
    problems = generate_problems(args.rows, "train", args.seed + 7, difficulties=difficulties, distinct=False)
    traces = [(p, solution_text(p, "terse", rng)) for p in problems]
    held_out = [e for e in arith_examples(args.eval, "test", args.seed) if e.difficulty in difficulties]

    _, tokenizer = load_pretrained(args.model)

    def rows_for(solution) -> list[dict]:
        return [{"prompt": litereason_prompt(p.question), "answer": str(p.answer), "solution": solution(p, trace)}
                for p, trace in traces]

    def evaluate(model, projector, prefix: str | None) -> dict:
        prompts = [format_prompt(litereason_prompt(e.prompt), tokenizer) for e in held_out]
        batch = generate_latent(model, tokenizer, projector, prompts,
                                config=SamplingConfig(max_new_tokens=120, temperature=0.0),
                                forced_prefixes=[prefix] * len(prompts) if prefix else None)
        correct = [grade(text, e.answer) for text, e in zip(batch.texts, held_out)]
        by_difficulty = {d: [c for c, e in zip(correct, held_out) if e.difficulty == d] for d in difficulties}
        return {"accuracy": sum(correct) / len(correct),
                "by_difficulty": {d: sum(v) / len(v) for d, v in by_difficulty.items() if v},
                "discrete_tokens": float(batch.response_mask.sum(1).float().mean()),
                "latent_steps": float(batch.latent_steps.float().mean()), "example": batch.texts[0]}

    def run(name: str, solution, passes: int, prefix: str | None = None) -> list[dict]:
        """Train a fresh base model + projector pass by pass (``solution(problem, trace, pass)``)."""
        model, _ = load_pretrained(args.model)
        projector = load_projector(model, warn=False)
        records = []
        for index in range(1, passes + 1):
            start = time.perf_counter()
            rows = rows_for(lambda p, trace: solution(p, trace, index))
            config = projector_sft_config(len(rows), lr=args.lr, grad_clip=1.0, seed=args.seed + index)
            with tempfile.TemporaryDirectory() as scratch:
                summary = train_projector(model, tokenizer, projector, rows, scratch, config, with_lm=True,
                                          show_progress=False)
            record = {"run": name, "pass": index, "steps": config.steps, "loss": summary["final_loss"],
                      **evaluate(model, projector, prefix),
                      "seconds": round(time.perf_counter() - start, 1)}
            print(f"{name} pass {index}: accuracy {100 * record['accuracy']:.1f}%", flush=True)
            records.append(record)
        return records

    def latent_prefix(p, trace, count: int) -> str:
        return latent_prefix_variant(trace, tokenizer, count)[0]

    if args.experiment == "capacity":
        records = (run("every sentence latent", lambda p, trace, _: latent_prefix(p, trace, 99), args.epochs)
                   + run("empty think", lambda p, trace, _: f"<think> </think> \\boxed{{{p.answer}}}", args.epochs,
                         prefix="<think> </think>"))
    else:
        records = run("curriculum", latent_prefix, args.stages)

    table = Table(title=f"LiteReason {args.experiment}: LM + projector trained from {args.model}, greedy on "
                        f"{len(held_out)} held-out problems")
    for column in ("run", "pass", "steps", "accuracy", "by difficulty", "discrete tokens", "latent steps", "seconds"):
        table.add_column(column)
    for r in records:
        table.add_row(r["run"], str(r["pass"]), str(r["steps"]), f"{100 * r['accuracy']:.1f}%",
                      " ".join(f"{100 * v:.0f}" for v in r["by_difficulty"].values()), f"{r['discrete_tokens']:.1f}",
                      f"{r['latent_steps']:.2f}", f"{r['seconds']:.0f}")
    Console().print(table)
    result = {"experiment": args.experiment, "model": args.model, "rows": args.rows, "lr": args.lr, "seed": args.seed,
              "held_out": len(held_out), "records": records}
    write_result(result, args.out or Path("benchmarks/results") / f"litereason_{args.experiment}.json")
    return result


if __name__ == "__main__":
    main()
