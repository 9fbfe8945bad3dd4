"""Where IAPO's early-exit probe finds information in sampled responses (docs/task.md).

IAPO (iapo.md) credits a token with the drop in answer entropy it causes: ``H^A_t`` is the
entropy of the answer the model gives when made to stop thinking before token ``t``. That only
ranks tokens if the model's early answer is uncertain where the reasoning is unfinished. This
script samples responses, probes every position and averages the smoothed gain ``s_t`` per token
over the spans the response wrote: risky and safe steps, their checks (a risky check that changes
the first result is "repairing"), the choice after each step to check it or not, and everything
else, beside the policy's own entropy on those tokens and, at each choice, the probability it
gave to checking. Two probes: the spec's (entropy of the first answer token) and the sum of the
entropies of every answer token, teacher-forced with the response's own answer (the first
answer digit is often certain when the last ones are not).

``--write-mix`` instead writes an SFT mix that teaches a calibrated early answer: base-style rows
(:func:`thinklean.data.arith.sft_records`) plus a ``--share`` of rows whose reasoning stops at a
random word and answers the true result, with the loss on the answer only (``masked_spans``).

    python benchmarks/iapo_probe_spans.py --write-mix early-exit.jsonl
    python benchmarks/iapo_probe_spans.py --model base --output benchmarks/results/iapo_spans_base.json
"""

from __future__ import annotations

import argparse
import random
import re
import time
from collections import defaultdict
from pathlib import Path

import torch
from _results import write_result

from thinklean.core.losses import entropy_from_logits
from thinklean.data.arith import (
    BASE_STYLE_WEIGHTS,
    REPAIR_RATE,
    generate_problems,
    parse_steps,
    problem_record,
    render_trace,
    sample_style,
    sft_records,
)
from thinklean.data.formats import THINK, THINK_END, boxed, format_prompt
from thinklean.data.jsonl import write_jsonl
from thinklean.eval.evaluate import arith_examples
from thinklean.methods.iapo import DEFAULT_EXIT
from thinklean.methods.iapo_probe import answer_entropies, discounted_gain, information_gain
from thinklean.models.tiny import load_pretrained
from thinklean.rollout import SamplingConfig, generate
from thinklean.rollout.engine import position_ids_from_mask

KINDS = ("risky step", "risky check", "risky check, repairing", "safe step", "safe check",
         "check chosen after risky", "check chosen after safe", "no check after risky", "no check after safe", "other")
BOXED = re.compile(r"\\boxed\{([^}]*)\}")


def early_exit_mix(n: int, share: float) -> list[dict]:
    """``n`` rows: ``sft_records`` rows (seed 7) and ``int(n * share)`` early-exit rows, shuffled."""
    n_exit = int(n * share)
    rows = sft_records(n - n_exit, seed=7, style_weights=BASE_STYLE_WEIGHTS, repair_rate=REPAIR_RATE)
    rng = random.Random("early-exit-0")
    for problem in generate_problems(n_exit, "train", 8, distinct=False):
        reasoning, _ = render_trace(problem, sample_style(rng, BASE_STYLE_WEIGHTS), rng, REPAIR_RATE)
        cut = rng.choice([0] + [i for i, c in enumerate(reasoning) if c == " "])
        solution = f"{f'{THINK} {reasoning[:cut]}'.rstrip()} {THINK_END} {boxed(problem.answer)}"
        answer_start = solution.rindex("{") + 1
        rows.append(problem_record(problem, solution, style="early-exit", masked_spans=[[0, answer_start]]))
    random.Random(1).shuffle(rows)
    return rows


def char_kinds(text: str) -> list[str]:
    """The :data:`KINDS` label of every character of a response. After each step the response
    chooses whether to check it; that choice is the first word that follows the step (a check's
    opener, or the space and first number of the next step), labelled "check chosen" / "no
    check" after it."""
    labels = ["other"] * len(text)
    steps = parse_steps(text)[0]
    choices = []
    for step, following in zip(steps, [*steps[1:], None]):
        risky = step.op == "*"
        labels[slice(*step.span)] = ["risky step" if risky else "safe step"] * (step.span[1] - step.span[0])
        after = "risky" if risky else "safe"
        if step.check_span is not None:
            kind = ("risky check, repairing" if step.final != step.first else "risky check") if risky else "safe check"
            labels[slice(*step.check_span)] = [kind] * (step.check_span[1] - step.check_span[0])
            choices.append((step.check_span[0], text.index(" ", step.check_span[0] + 1), f"check chosen after {after}"))
        elif following is not None:
            # from the space before the number: the embedded tokenizer writes it as its own token
            choices.append((following.span[0] - 1, text.index(" ", following.span[0]), f"no check after {after}"))
    for start, end, kind in choices:
        labels[start:end] = [kind] * (end - start)
    return labels


def token_kinds(tokenizer, ids: list[int], text: str) -> list[str]:
    """The majority label of each response token's characters."""
    labels, kinds, end = char_kinds(text), [], 0
    for i in range(len(ids)):
        start, end = end, len(tokenizer.decode(ids[: i + 1]))
        chars = labels[start:end] or ["other"]
        kinds.append(max(KINDS, key=chars.count))
    return kinds


CHOICES = ("check chosen after risky", "check chosen after safe", "no check after risky", "no check after safe")


def next_token_logits(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """``[T, V]`` float32: the policy's logits for response token ``t`` of one row."""
    mask = torch.cat([prompt_mask, response_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt_ids, response_ids], 1), attention_mask=mask,
                       position_ids=position_ids_from_mask(mask)).logits
    return logits[0, prompt_ids.shape[1] - 1: -1].float()


def check_probabilities(choices: list[tuple[str, int, torch.Tensor]]) -> dict[str, dict[str, float]]:
    """Per choice kind: how sure the policy was to check. The tokens that open a check are the
    ones sampled where a check was chosen; ``P(check)`` is their summed probability."""
    openers = sorted({token for kind, token, _ in choices if kind.startswith("check chosen")})
    out = {}
    for kind in CHOICES:
        p_check = [float(probs[openers].sum()) for k, _, probs in choices if k == kind]
        if p_check:
            out[kind] = {"n": len(p_check), "mean_p_check": sum(p_check) / len(p_check),
                         "undecided": sum(0.1 < p < 0.9 for p in p_check) / len(p_check)}
    return out


def main(argv: list[str] | None = None) -> dict | None:
    """Run from the command line (``argv``); returns the result dict (``None`` with ``--write-mix``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="base")
    ap.add_argument("--n", type=int, default=200, help="held-out problems, one response each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", type=Path, default=None, help="JSON file")
    ap.add_argument("--discount", type=float, default=0.97,
                    help="also report the first-token gain discounted over the tokens that follow (gain_discount)")
    ap.add_argument("--write-mix", type=Path, default=None, help="write the early-exit SFT mix here and stop")
    ap.add_argument("--mix-rows", type=int, default=9600)
    ap.add_argument("--share", type=float, default=0.25, help="early-exit share of the mix")
    args = ap.parse_args(argv)
    if args.write_mix is not None:
        write_jsonl(args.write_mix, early_exit_mix(args.mix_rows, args.share))
        print(f"wrote {args.mix_rows} rows to {args.write_mix}")
        return None
    torch.manual_seed(args.seed)
    model, tokenizer = load_pretrained(args.model)
    model.eval()
    t0 = time.time()
    examples = arith_examples(args.n, "test", args.seed)
    batch = generate(model, tokenizer, [format_prompt(e.prompt) for e in examples], 1,
                     SamplingConfig(max_new_tokens=320, temperature=1.0),
                     generator=torch.Generator().manual_seed(args.seed))
    exit_ids = tokenizer(DEFAULT_EXIT, add_special_tokens=False).input_ids
    credit = f"first token, discounted {args.discount}"
    totals = {probe: defaultdict(float) for probe in ("first token", "all answer tokens", credit)}
    policy_entropy: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    start_entropy = {"first token": 0.0, "all answer tokens": 0.0}
    responses = 0
    choices: list[tuple[str, int, torch.Tensor]] = []  # (kind, sampled token, next-token probabilities)
    for row, text in enumerate(batch.texts):
        answer = BOXED.search(text)
        if answer is None:
            continue
        answer_ids = tokenizer(answer[1], add_special_tokens=False).input_ids
        length = int(batch.response_mask[row].sum())
        inputs = (batch.prompt_ids[row: row + 1], batch.prompt_mask[row: row + 1],
                  batch.response_ids[row: row + 1, :length], batch.response_mask[row: row + 1, :length])
        per_token = torch.cat([answer_entropies(model, *inputs, exit_ids + answer_ids[:j]) for j in range(len(answer_ids))])
        logits = next_token_logits(model, *inputs)
        entropies = {"first token": per_token[:1], "all answer tokens": per_token.sum(0, keepdim=True)}
        kinds = token_kinds(tokenizer, batch.response_ids[row, :length].tolist(), text)
        ones = torch.ones(1, length)
        gains = {probe: information_gain(entropy, ones, smooth=True) for probe, entropy in entropies.items()}
        gains[credit] = discounted_gain(gains["first token"], ones, args.discount)
        for probe, gain in gains.items():
            for kind, g in zip(kinds, gain[0].tolist()):
                totals[probe][kind] += g
        for probe, entropy in entropies.items():
            start_entropy[probe] += float(entropy[0, 0])
        for kind, h in zip(kinds, entropy_from_logits(logits).tolist()):
            counts[kind] += 1
            policy_entropy[kind] += h
        probabilities = logits.softmax(-1)
        for t, kind in enumerate(kinds):
            if kind in CHOICES and (t == 0 or kinds[t - 1] != kind):  # the first token of the choice word
                choices.append((kind, int(inputs[2][0, t]), probabilities[t]))
        responses += 1
    result = {
        "model": args.model, "responses": responses, "seconds": round(time.time() - t0, 1),
        "tokens": {k: counts[k] for k in KINDS},
        "mean_gain_per_token": {p: {k: totals[p][k] / counts[k] if counts[k] else None for k in KINDS} for p in totals},
        "mean_policy_entropy": {k: policy_entropy[k] / counts[k] if counts[k] else None for k in KINDS},
        "answer_entropy_before_thinking": {p: v / max(responses, 1) for p, v in start_entropy.items()},
        "choice_to_check": check_probabilities(choices),
    }
    print(f"{args.model}: {responses} responses, {result['seconds']:.0f} s; answer entropy before thinking (nats): "
          + ", ".join(f"{p} {v:.3f}" for p, v in result["answer_entropy_before_thinking"].items()))
    print("\n| span | tokens | " + " | ".join(f"gain per token, {p} (nats)" for p in totals)
          + " | policy entropy (nats) |")
    print("|---|---|" + "---|" * (len(totals) + 1))
    for kind in KINDS:
        cells = " | ".join("-" if result["mean_gain_per_token"][p][kind] is None
                           else f"{result['mean_gain_per_token'][p][kind]:.4f}" for p in totals)
        entropy = result["mean_policy_entropy"][kind]
        print(f"| {kind} | {counts[kind]} | {cells} | {'-' if entropy is None else f'{entropy:.3f}'} |")
    print("\n| choice | n | mean P(check) | share with 0.1 < P(check) < 0.9 |\n|---|---|---|---|")
    for kind, row in result["choice_to_check"].items():
        print(f"| {kind} | {row['n']} | {row['mean_p_check']:.3f} | {row['undecided']:.3f} |")
    if args.output is not None:
        write_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
