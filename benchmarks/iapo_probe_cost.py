"""IAPO probe cost: the early-exit answer-entropy probe against the old-logprob forward pass.

    python benchmarks/iapo_probe_cost.py                  # shipped base model, demo rollout (8 x 8, <= 200 tokens)
    python benchmarks/iapo_probe_cost.py --chunks 8 16 32 --exit-string " </think>"
    python benchmarks/iapo_probe_cost.py --strides 1 2 4 8 --chunks 16 --max-batch-tokens 2048 \
        --out benchmarks/results/iapo_probe_stride.json

One rollout of the demo configuration is sampled once; then, on the same rows, each pass is
timed ``--repeats`` times (best taken): the old-logprob pass (``RLTrainer._fill_logprobs``, the
no-grad forward over prompt + response that PPO-style trainers run anyway) and
``answer_entropies`` (``H^A_t`` at every response position) for each chunk size. The ratio
probe / old-logprob is the probe's added cost (iapo.md: "must not cost T forward passes").
The probe runs ``E`` exit tokens per response position, so its floor is about
``(P + T + E * T) / (P + T)`` old-logprob passes for ``E`` exit tokens; ``stride`` s probes every
s-th position (interpolating between), about ``1 + E * T / (s * (P + T))``. Its first forward over
prompt + response also yields IAPO's token entropy ``h_t``, which would otherwise need a pass of
its own, so "beyond that pass" (ratio - 1) is what IAPO pays on top of what it needs anyway.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from _results import write_result
from rich.console import Console
from rich.table import Table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base", help="'base' (shipped) or a local HF model directory")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--chunks", type=int, nargs="+", default=[8, 16, 32], help="probe chunk sizes C")
    p.add_argument("--max-batch-tokens", type=int, nargs="+", default=[0, 2048],
                   help="answer_entropies sub-batch budgets to time (0: one sub-batch of all rows)")
    p.add_argument("--strides", type=int, nargs="+", default=[1],
                   help="probe strides to time (1: exact probe; s: every s-th position, interpolated)")
    p.add_argument("--exit-string", default=None, help="default: IAPO's ' </think> \\boxed{'")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--out", default="benchmarks/results/iapo_probe_cost.json")
    return p.parse_args(argv)


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from thinklean.data.arith import generate_problems
    from thinklean.data.jsonl import Example
    from thinklean.methods.iapo import DEFAULT_EXIT
    from thinklean.methods.iapo_probe import answer_entropies
    from thinklean.models.tiny import load_pretrained, resolve_model_path
    from thinklean.train.rl import RLConfig, RLTrainer

    model, tokenizer = load_pretrained(resolve_model_path(args.model))
    examples = [Example(prompt=p.question, answer=str(p.answer), difficulty=p.difficulty)
                for p in generate_problems(args.prompts, "train", args.seed)]
    config = RLConfig(prompts_per_step=args.prompts, samples_per_prompt=args.samples, max_new_tokens=args.max_new_tokens,
                      save_every=0, seed=args.seed)
    trainer = RLTrainer(model, tokenizer, config, examples, Path("/tmp") / "thinklean-iapo-probe-cost")
    batch = trainer.collect(0)
    r = batch.rollout
    exit_string = args.exit_string if args.exit_string is not None else DEFAULT_EXIT
    exit_ids = tokenizer(exit_string, add_special_tokens=False).input_ids

    old = best_time(lambda: trainer._fill_logprobs(batch, model, "old_logprobs"), args.repeats)
    rows = []
    for stride in args.strides:
        for budget in args.max_batch_tokens:
            for chunk in args.chunks:
                seconds = best_time(lambda chunk=chunk, budget=budget, stride=stride: answer_entropies(
                    model, r.prompt_ids, r.prompt_mask, r.response_ids, r.response_mask, exit_ids, chunk_size=chunk,
                    max_batch_tokens=budget or None, stride=stride), args.repeats)
                rows.append({"stride": stride, "max_batch_tokens": budget or None, "chunk_size": chunk,
                             "probe_seconds": seconds, "ratio": seconds / old})
    P, T = float(r.prompt_mask.sum(1).float().mean()), float(r.lengths.float().mean())
    result = {
        "model": str(args.model), "rows": len(r.lengths), "mean_prompt_tokens": P, "mean_response_tokens": T,
        "exit_string": exit_string, "exit_tokens": len(exit_ids), "old_logprob_seconds": old, "probes": rows,
        "floor_ratio": (P + T + len(exit_ids) * T) / (P + T), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
    }
    table = Table(title=f"IAPO probe vs old-logprob pass ({len(r.lengths)} rows, {P:.0f} + {T:.0f} tokens, "
                        f"exit {exit_string!r} = {len(exit_ids)} tokens)")
    for name in ("pass", "stride", "sub-batch tokens", "chunk C", "seconds", "x old-logprob", "beyond that pass"):
        table.add_column(name)
    table.add_row("old logprobs", "-", "-", "-", f"{old:.2f}", "1.00", "-")
    for row in rows:
        table.add_row("probe", str(row["stride"]), str(row["max_batch_tokens"] or "all rows"), str(row["chunk_size"]),
                      f"{row['probe_seconds']:.2f}", f"{row['ratio']:.2f}", f"{row['ratio'] - 1:.2f}")
    Console().print(table)
    print(f"floor at stride 1: (P + T + E*T) / (P + T) = {result['floor_ratio']:.2f}")
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
