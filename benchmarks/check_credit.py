"""Which check decisions a reward credits: the sequence advantage of sampled responses, read
back onto each step's choice to check it (docs/task.md, "Credit for a check").

Samples ``--samples`` responses per held-out problem at ``--temperature`` and scores each group
with every reward of :func:`rewards`, turned into GRPO's group-normalised advantage ``A``. Every parsed step
of every response is one decision, check or not, of its kind (risky: a multiplication; safe:
an addition or subtraction). Per reward and kind it prints:

- ``A | check`` and ``A | none``: the mean advantage of the decisions that checked and that did not;
- ``signal``: ``mean(A * (c - p))`` over the decisions, where ``c`` is 1 for a check and ``p``
  the kind's check rate: the expected policy gradient on the logit of a check after this kind
  of step, per decision (a positive signal raises the check rate);
- ``held``: the coefficient of the share of this kind's steps checked in a least-squares fit of
  ``A`` on both kinds' shares (responses with both kinds of step): the credit of one propensity
  with the other held fixed.

Brackets are 95% intervals from 1,000 bootstrap resamples of the problems.

    python benchmarks/check_credit.py --model base --n 250 --samples 8
    python benchmarks/check_credit.py --model base --n 250 --samples 8 --variant every-risky
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import task_sampling_arguments, write_result

from thinklean.core.advantages import group_normalised_scores
from thinklean.core.rewards import correctness_reward, hmpo_reward, kimi_reward, thinkprune_reward
from thinklean.data.arith import VARIANTS, is_risky, parse_steps
from thinklean.eval.evaluate import EvalConfig, arith_examples, run_generation
from thinklean.models.tiny import load_pretrained

KINDS = ("risky", "safe")


def rewards(budget: int) -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The rewards compared, as the demo configures them (``budget``: ThinkPrune's final budget)."""
    return {
        "correctness (GRPO)": correctness_reward,
        "HMPO": hmpo_reward,
        "HMPO, add": lambda c, n, g: hmpo_reward(c, n, g, combine="add"),
        "Kimi": kimi_reward,
        f"ThinkPrune {budget}": lambda c, n, g: thinkprune_reward(c, n, g, budget),
    }


def step_counts(texts: list[str]) -> np.ndarray:
    """``[R, 2, 2]`` per response: steps and checked steps (last axis) of each kind (``KINDS``)."""
    counts = np.zeros((len(texts), len(KINDS), 2))
    for r, text in enumerate(texts):
        for step in parse_steps(text)[0]:
            kind = 0 if is_risky(step.op) else 1
            counts[r, kind] += (1, int(step.checked))
    return counts


def credit(advantages: np.ndarray, counts: np.ndarray, rows: np.ndarray) -> dict[str, dict[str, float]]:
    """The per-kind figures (module docstring) over the responses ``rows`` (indices, repeats allowed)."""
    a, steps, checked = advantages[rows], counts[rows, :, 0], counts[rows, :, 1]
    out: dict[str, dict[str, float]] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for i, kind in enumerate(KINDS):
            n, c = steps[:, i], checked[:, i]
            p = c.sum() / n.sum()
            out[kind] = {
                "decisions": int(n.sum()),
                "check_rate": float(p),
                "advantage_checked": float((a * c).sum() / c.sum()),
                "advantage_unchecked": float((a * (n - c)).sum() / (n - c).sum()),
                "signal": float((a * (c - p * n)).sum() / n.sum()),
            }
        both = (steps > 0).all(axis=1)
        shares = checked[both] / steps[both]
    design = np.column_stack([np.ones(both.sum()), shares])
    coef = np.linalg.lstsq(design, a[both], rcond=None)[0] if both.sum() > 3 else [np.nan] * 3
    for i, kind in enumerate(KINDS):
        out[kind]["held"] = float(coef[1 + i])
    return out


def _finite(value: Any) -> Any:
    """``value`` with every NaN (a kind with no decisions, a fit with too few responses) as ``None``."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    task_sampling_arguments(ap, n=250, samples=8)  # a problem's samples are its group
    ap.add_argument("--budget", type=int, default=120, help="ThinkPrune's budget (the demo schedule ends at 120)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples of the problems for the intervals")
    ap.add_argument("--output", type=Path, default=None,
                    help="JSON file (default: benchmarks/results/check_credit_<model>_<variant>.json)")
    args = ap.parse_args(argv)
    model, tokenizer = load_pretrained(args.model)
    model.eval()
    t0 = time.time()
    examples = arith_examples(args.n, "test", args.seed, VARIANTS[args.variant])
    config = EvalConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, samples=args.samples,
                        seed=args.seed)
    records = run_generation(model, tokenizer, examples, config)
    seconds = time.time() - t0
    correct = torch.tensor([r.correct for r in records])
    lengths = torch.tensor([r.response_tokens for r in records])
    groups = torch.tensor([r.prompt_index for r in records])
    counts = step_counts([r.text for r in records])
    by_group = [np.flatnonzero(groups.numpy() == g) for g in range(len(examples))]
    rng = np.random.default_rng(args.seed)
    resamples = [np.concatenate([by_group[g] for g in rng.integers(0, len(by_group), len(by_group))])
                 for _ in range(args.bootstrap)]
    everyone = np.arange(len(records))

    result = {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": seconds, "responses": len(records),
              "accuracy": correct.float().mean().item(), "mean_tokens": lengths.float().mean().item(), "rewards": {}}
    print(f"{args.model} on {args.variant}: {len(records)} responses ({args.n} groups of {args.samples}), T="
          f"{args.temperature}, accuracy {100 * result['accuracy']:.1f}%, {result['mean_tokens']:.1f} tokens, "
          f"{seconds:.0f} s\n")
    print("| reward | kind | decisions | check rate | A, check | A, none | signal [95%] | held [95%] |")
    print("|---|---|---|---|---|---|---|---|")
    for name, reward in rewards(args.budget).items():
        advantages = group_normalised_scores(reward(correct, lengths, groups), groups).numpy()
        point = credit(advantages, counts, everyone)
        spread = [credit(advantages, counts, rows) for rows in resamples]
        for kind in KINDS:
            for key in ("signal", "held"):
                values = np.array([s[kind][key] for s in spread])
                values = values[np.isfinite(values)]
                point[kind][f"{key}_ci"] = np.percentile(values, [2.5, 97.5]).tolist() if values.size else [math.nan] * 2
            f = point[kind]
            print(f"| {name} | {kind} | {f['decisions']} | {100 * f['check_rate']:.1f}% | {f['advantage_checked']:+.3f} | "
                  f"{f['advantage_unchecked']:+.3f} | {f['signal']:+.4f} [{f['signal_ci'][0]:+.4f}, {f['signal_ci'][1]:+.4f}] | "
                  f"{f['held']:+.3f} [{f['held_ci'][0]:+.3f}, {f['held_ci'][1]:+.3f}] |")
        result["rewards"][name] = point
    out = args.output or Path(__file__).parent / "results" / f"check_credit_{Path(str(args.model)).name}_{args.variant}.json"
    print()
    write_result(_finite(result), out)
    return result


if __name__ == "__main__":
    main()
