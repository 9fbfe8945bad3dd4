"""HGPO diagnostic: how the unforced first-token distribution drifts while HGPO trains.

    python benchmarks/hgpo_tag_mass.py --model runs/hft/model --steps 12                 # as configured
    python benchmarks/hgpo_tag_mass.py --model runs/hft/model --steps 12 --tag-mass 0    # the paper's objective
    python benchmarks/hgpo_tag_mass.py --model runs/hft/model --steps 12 --tag-mass 0 --alpha 0

HGPO forces every rollout's first token (the mode tag), so the model's own choice at that
position is never sampled during training. After each step this measures, on held-out prompts,
the mean probability of ``<think>``, ``<no_think>`` and of the most likely other token at the
first response position (where a hybrid model decides its mode); a table per step and a JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _results import write_result
from rich.console import Console
from rich.table import Table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an HFT model directory (thinklean sft on `thinklean data hft`)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--alpha", type=float, default=1.0, help="HGPO inter-mode weight (0: intra term only)")
    p.add_argument("--tag-mass", type=float, default=1.0, help="weight of the term keeping probability on the tags (0: off)")
    p.add_argument("--prompts", type=int, default=40, help="held-out prompts the first-token distribution is averaged over")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/hgpo_tag_mass.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from thinklean.data.formats import NO_THINK, THINK, format_prompt
    from thinklean.eval.evaluate import arith_examples
    from thinklean.methods.lhrm import HGPOTrainer
    from thinklean.models.tiny import load_pretrained
    from thinklean.methods.config import load_config

    model, tokenizer = load_pretrained(args.model)
    probes = [tokenizer(format_prompt(e.prompt, tokenizer)).input_ids for e in arith_examples(args.prompts, "test", args.seed)]
    think, no_think = tokenizer.convert_tokens_to_ids(THINK), tokenizer.convert_tokens_to_ids(NO_THINK)

    @torch.no_grad()
    def first_token(m) -> dict[str, float | str]:
        was_training = m.training
        m.eval()
        mean = sum(torch.softmax(m(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1) for ids in probes) / len(probes)
        m.train(was_training)
        others = mean.clone()
        others[[think, no_think]] = 0
        top = int(others.argmax())
        return {"p_think": float(mean[think]), "p_no_think": float(mean[no_think]),
                "top_other": tokenizer.convert_ids_to_tokens(top), "p_top_other": float(mean[top])}

    rows = [{"step": 0, **first_token(model)}]

    class Probed(HGPOTrainer):
        def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
            rows.append({"step": step, **first_token(self.model), "accuracy": metrics["accuracy"]})

    overrides = {"steps": args.steps, "lr": args.lr, "seed": args.seed, "save_every": 0, "max_new_tokens": 160,
                 "method_kwargs": {"alpha": args.alpha, "delta": 0.2, "tag_mass": args.tag_mass}}
    config = load_config("hgpo", None, {k: (v, 0) for k, v in overrides.items()})
    train = arith_examples(config.train_problems, "train", args.seed)
    Probed(model, tokenizer, config, train, Path("/tmp") / "thinklean-hgpo-tag-mass").train(show_progress=False)

    table = Table(title=f"first response token on {len(probes)} held-out prompts "
                        f"(HGPO, lr {args.lr}, alpha {args.alpha}, tag_mass {args.tag_mass})")
    for name in ("step", "P(<think>)", "P(<no_think>)", "P(tags)", "top other token", "its P", "batch accuracy"):
        table.add_column(name)
    for r in rows:
        table.add_row(str(r["step"]), f"{r['p_think']:.3f}", f"{r['p_no_think']:.3f}", f"{r['p_think'] + r['p_no_think']:.3f}",
                      repr(r["top_other"]), f"{r['p_top_other']:.3f}", f"{r['accuracy']:.3f}" if "accuracy" in r else "-")
    Console().print(table)
    result = {"model": args.model, "steps": args.steps, "lr": args.lr, "alpha": args.alpha, "tag_mass": args.tag_mass,
              "seed": args.seed, "rows": rows}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
