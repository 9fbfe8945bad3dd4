"""LiteReason: does the latent channel carry information? Five arms, same data, steps and lr.

    python benchmarks/litereason_channel.py                      # >= 300 held-out problems per difficulty
    python benchmarks/litereason_channel.py --curriculum b       # + arm (b) with a Coconut-style curriculum
    python benchmarks/litereason_channel.py --quick              # smoke run: a few problems and steps

Every arm starts from the shipped base model and trains the LM (and its latent source, if any)
on the same 2-3-operation training problems, whose every operation sentence is replaced by a
latent segment of K steps (``<think> <implicit_thought>K</implicit_thought> ... </think>
\\boxed{36}``; the empty-think arm writes ``<think> </think> \\boxed{36}``), so the answer can only
come from what the latent steps carry or from the LM's own single pass:

- (a) ``spec``: the paper's projector (``output_norm="none"``);
- (b) ``fixed``: the projector scaled to the token-embedding norm (the default);
- (c) ``pause``: one learned constant embedding at every latent step, no hidden-state channel;
- (d) ``empty``: an empty think block, no latent steps;
- (e) ``oracle``: each operation's latent steps are the mean token embedding of its result's
  digits (the intermediate values), the information a working channel would have to carry;
- (f) ``distil``: the fixed projector, trained with the LM as in (e) (oracle latents, scaled to
  the projector's output norm, teacher-forced at the latent steps) plus an auxiliary loss that
  pulls the projector's output at each latent step towards that step's oracle vector (squared
  error over the oracle vectors' squared norm, i.e. 2 (1 - cosine), weight ``--distil-weight``);
  evaluated like (a)-(c), on its own chained latents;
- (g) ``soft``: as (f), but the latent is the LM's own next-token distribution times the
  embedding matrix (scaled to the token-embedding norm), no projector weights: where the value is
  what the LM would write next, this latent starts out right.

``--oracle-code digits`` changes what (e), (f) and (g) put at the latent steps: one latent step per digit
of the result written with 4 digits (K = 4), each the embedding of that digit, so the latents
name the value with its digit order (the mean code names only the digits); (f) then learns to
write a number one continuous digit at a time.

Evaluation: held-out problems of the same difficulties, the reasoning forced as in training up
to ``\\boxed{`` and the answer decoded greedily. Reported per arm: accuracy (overall and per
difficulty), discrete tokens, latent steps, the median latent input norm (and the token-embedding
norm), the mean cosine between each latent input and the oracle vector of its step (how much
of the intermediate value a projector writes), and swap-KL (KL in nats of the answer's first-token distribution when each problem gets
the latents of the next problem with the same number of operations; averaged). A table and a JSON.

``--curriculum ARM`` adds that arm trained stage by stage (Coconut, arXiv 2412.06769): stage s
makes the first s operation sentences latent and keeps the rest as text, the steps split evenly.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable, Sequence

import torch
from _results import write_result
from rich.console import Console
from rich.table import Table

ARMS = {"a": "spec", "b": "fixed", "c": "pause", "d": "empty", "e": "oracle", "f": "distil", "g": "soft"}
DIFFICULTIES = (2, 3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base", help="'base' (shipped) or a local model directory")
    p.add_argument("--arms", default="abcdefg", help="which arms to run (letters of a-g; '' with --curriculum: only that run)")
    p.add_argument("--oracle-code", choices=["mean", "digits"], default="mean",
                   help="arms (e)-(g): mean = K copies of the mean embedding of a result's digits; digits = "
                        "one latent step per digit of the result written with 4 digits (K = 4)")
    p.add_argument("--written-operands", action="store_true",
                   help="keep each operation's operands as text ('347 * 6 = ' + latent segment + '.'): a control "
                        "where the latents only carry a result the LM would otherwise write digit by digit")
    p.add_argument("--distil-weight", type=float, default=1.0, help="arm (f): weight of the latent distillation loss")
    p.add_argument("--train", type=int, default=4000, help="training problems (2 and 3 operations in equal shares)")
    p.add_argument("--eval", type=int, default=300, help="held-out problems per difficulty")
    p.add_argument("--steps", type=int, default=500, help="optimizer steps per arm")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4, help="peak lr: 10%% warm-up, cosine to 0.1x (LM and latent source)")
    p.add_argument("--latent-steps", type=int, default=2, help="K: latent steps per operation sentence")
    p.add_argument("--curriculum", choices=["a", "b", "c", "e", "f", "g"], default=None,
                   help="also run this arm with latent sentences introduced stage by stage")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 training problems, 2 steps, 3 problems per difficulty")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/litereason_channel.json")
    args = p.parse_args(argv)
    if args.quick:
        args.train, args.eval, args.steps, args.batch_size = 8, 3, 2, 4
    if not set(args.arms) <= set(ARMS) or not (args.arms or args.curriculum):
        p.error(f"--arms {args.arms!r}: letters of {''.join(ARMS)} ('' with --curriculum: that run only)")
    if not 1 <= args.latent_steps <= 5:
        p.error(f"--latent-steps {args.latent_steps}: 1 to 5 (the projector's max_steps)")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from thinklean.data.arith import generate_problems, render_reasoning
    from thinklean.data.formats import THINK, THINK_END, format_prompt, think_response
    from thinklean.data.grading import grade
    from thinklean.data.litereason import latent_segment, litereason_prompt, split_sentences
    from thinklean.methods.litereason import projector_sft_config, split_sft_batch, teacher_forced_target_loss, train_projector
    from thinklean.models.projector import ReasoningProjector, SoftLatent, embedding_norm
    from thinklean.models.tiny import load_pretrained
    from thinklean.rollout.engine import SamplingConfig
    from thinklean.rollout.latent import generate_latent, latent_forward, latent_replay_inputs, segment_finder
    from thinklean.train.sft import train_sft

    torch.set_num_threads(args.threads)
    _, tokenizer = load_pretrained(args.model)
    digits = args.oracle_code == "digits"
    k = 4 if digits else args.latent_steps
    train = generate_problems(args.train, "train", args.seed + 7, difficulties=DIFFICULTIES, distinct=False)
    held_out = generate_problems(args.eval * len(DIFFICULTIES), "test", args.seed, difficulties=DIFFICULTIES)

    def sentences(problem) -> list[str]:
        return split_sentences(render_reasoning(problem, "terse", random.Random(0)))  # one per operation

    def latent_sentence(problem, j: int) -> str:
        """Operation ``j``'s sentence made latent: the segment alone, or (``--written-operands``)
        after its operands, ``347 * 6 = <segment>.``"""
        if not args.written_operands:
            return latent_segment(k)
        (symbol, operand), value = problem.ops[j], problem.values()[j]
        return f"{value} {symbol} {operand} = {latent_segment(k)}."

    def latent_trace(problem) -> str:
        return " ".join(latent_sentence(problem, j) for j in range(len(problem.ops)))

    def solution(problem, latent_ops: int) -> str:
        """The terse trace with its first ``latent_ops`` sentences replaced by K-step segments."""
        parts = sentences(problem)
        latent = [latent_sentence(problem, j) for j in range(latent_ops)]
        return think_response(" ".join(latent + parts[latent_ops:]), problem.answer)

    def rows(latent_ops: Callable[[object], int], empty: bool = False) -> list[dict]:
        return [{"prompt": litereason_prompt(p.question), "answer": str(p.answer),
                 "solution": f"{THINK} {THINK_END} \\boxed{{{p.answer}}}" if empty else solution(p, latent_ops(p))}
                for p in train]

    def prompt_ids(question: str) -> tuple[int, ...]:
        return tuple(tokenizer(format_prompt(litereason_prompt(question), tokenizer), add_special_tokens=False).input_ids)

    def oracle_ids(problem) -> list[list[int]]:
        """Token ids of each intermediate value (the result of every operation); with the digits
        code, written with 4 digits (one token each)."""
        return [tokenizer(f"{v:04d}" if digits else str(v), add_special_tokens=False).input_ids
                for v in problem.values()[1:]]

    oracle_by_prompt = {prompt_ids(p.question): oracle_ids(p) for p in [*train, *held_out]}

    def oracle_vectors(model, ids: Sequence[Sequence[int]], segments: int) -> torch.Tensor:
        """``[segments * K, d]``: K copies of the mean embedding of each of the first results (digits
        code: the embeddings of its 4 digits, in order)."""
        embed = model.get_input_embeddings()
        if digits:
            rows = [embed(torch.tensor(value, device=embed.weight.device)) for value in ids[:segments]]
            return torch.cat(rows) if rows else embed.weight[:0]
        means = [embed(torch.tensor(value, device=embed.weight.device)).mean(0) for value in ids[:segments]]
        return torch.stack([m for m in means for _ in range(k)]) if means else embed.weight[:0]

    def oracle_loss(source: ReasoningProjector):
        find = segment_finder(tokenizer, source.max_steps)

        def loss_fn(model, batch):
            prompts, prompt_mask, response, response_mask = split_sft_batch(batch)
            lengths = response_mask.sum(1).tolist()
            segments = [find(response[b, :n].tolist()) for b, n in enumerate(lengths)]
            vectors = [oracle_vectors(model, oracle_by_prompt[tuple(prompts[b][prompt_mask[b].bool()].tolist())],
                                      len(segments[b])) for b in range(len(lengths))]
            out = latent_forward(model, source, prompts, prompt_mask, response, response_mask, segments,
                                 latent_inputs=vectors)
            scored = response_mask.bool()
            return torch.nn.functional.cross_entropy(out.logits[scored].float(), response[scored]), int(scored.sum())

        return loss_fn

    def distil_loss(source: ReasoningProjector):
        """Arm (f): the oracle arm's loss plus the projector's distance to the oracle vectors,
        read at the position before each latent slot (the hidden state the chain would feed it)."""
        find = segment_finder(tokenizer, source.max_steps)

        def loss_fn(model, batch):
            prompts, prompt_mask, response, response_mask = split_sft_batch(batch)
            lengths = response_mask.sum(1).tolist()
            segments = [find(response[b, :n].tolist()) for b, n in enumerate(lengths)]
            vectors = [torch.nn.functional.normalize(oracle_vectors(
                model, oracle_by_prompt[tuple(prompts[b][prompt_mask[b].bool()].tolist())], len(segments[b])), dim=-1)
                * source.output_scale for b in range(len(lengths))]  # on the projector's output scale
            return teacher_forced_target_loss(model, source, prompts, prompt_mask, response, response_mask, segments,
                                              vectors, args.distil_weight)

        return loss_fn

    class Pause(ReasoningProjector):
        """Pause tokens: one learned vector (random direction, token-embedding norm) at every
        latent step, whatever the hidden state; the unused block only fills the interface."""

        def __init__(self, model) -> None:
            super().__init__(model.config.hidden_size, model.config.intermediate_size, num_blocks=1)
            direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(args.seed))
            self.pause = torch.nn.Parameter(torch.nn.functional.normalize(direction, dim=0) * embedding_norm(model))

        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return self.pause.to(hidden.dtype).expand_as(hidden)

    def fit(arm: str, model, source, stage_rows: list[dict], steps: int, seed: int) -> None:
        config = projector_sft_config(len(stage_rows), lr=args.lr, batch_size=args.batch_size, grad_clip=1.0, seed=seed,
                                      steps=steps)
        with tempfile.TemporaryDirectory() as scratch:
            if arm == "empty":
                train_sft(model, tokenizer, stage_rows, config, scratch, show_progress=False)
            elif arm == "oracle":
                train_sft(model, tokenizer, stage_rows, config, scratch, loss_fn=oracle_loss(source),
                          show_progress=False)
            elif arm in ("distil", "soft"):
                train_sft(model, tokenizer, stage_rows, config, scratch, loss_fn=distil_loss(source),
                          parameters=[*model.parameters(), *source.parameters()], show_progress=False)
            else:
                train_projector(model, tokenizer, source, stage_rows, scratch, config, with_lm=True,
                                show_progress=False, probe_every=0)

    def evaluate(arm: str, model, source) -> dict:
        model.eval()
        prompts = [format_prompt(litereason_prompt(p.question), tokenizer) for p in held_out]
        boxed = "\\boxed{"
        prefixes = [f"{THINK} {THINK_END} {boxed}" if arm == "empty" else
                    f"{THINK} {latent_trace(p)} {THINK_END} {boxed}" for p in held_out]
        with torch.no_grad():
            if arm == "empty":
                vectors = [torch.empty(0, model.config.hidden_size) for _ in held_out]
            elif arm == "oracle":
                vectors = [oracle_vectors(model, oracle_ids(p), len(p.ops)) for p in held_out]
            else:  # the rollout engine's own latent steps, through the forced reasoning
                longest = max(len(tokenizer(x, add_special_tokens=False).input_ids) for x in prefixes)
                batch = generate_latent(model, tokenizer, source, prompts, 1,
                                        SamplingConfig(max_new_tokens=longest + 1, temperature=0.0),
                                        forced_prefixes=prefixes)
                vectors = list(batch.latent_inputs)
            decoded = [greedy(model, prompt, prefix, v) for prompt, prefix, v in zip(prompts, prefixes, vectors)]
            swap = None
            if arm != "empty":
                kls = []
                for d in DIFFICULTIES:
                    rows_d = [i for i, p in enumerate(held_out) if p.difficulty == d]
                    for i, j in zip(rows_d, rows_d[1:] + rows_d[:1]):
                        if i != j:
                            swapped = greedy(model, prompts[i], prefixes[i], vectors[j], max_new_tokens=0)[1]
                            original = decoded[i][1]
                            kls.append(float((original.exp() * (original - swapped)).sum()))
                swap = sum(kls) / len(kls) if kls else None
        correct = [grade(prefix + text, str(p.answer)) for (text, _, _), prefix, p in zip(decoded, prefixes, held_out)]
        norms = torch.cat([v.float().norm(dim=-1) for v in vectors]) if arm != "empty" else torch.empty(0)
        with torch.no_grad():
            cosines = [torch.nn.functional.cosine_similarity(v.float(), oracle_vectors(model, oracle_ids(p), len(p.ops)).float(), dim=-1)
                       for v, p in zip(vectors, held_out) if v.shape[0]]
        oracle_cosine = float(torch.cat(cosines).mean()) if cosines else None
        decoded_values = value_readout(model, vectors) if arm not in ("empty", "oracle") else None
        teacher = None  # (f): the same LM given the scaled oracle latents: what a perfect projector would reach
        if arm in ("distil", "soft"):
            with torch.no_grad():
                scaled = [torch.nn.functional.normalize(oracle_vectors(model, oracle_ids(p), len(p.ops)), dim=-1)
                          * source.output_scale for p in held_out]
                answers = [greedy(model, prompt, prefix, v)[0] for prompt, prefix, v in zip(prompts, prefixes, scaled)]
            teacher = sum(grade(prefix + text, str(p.answer)) for text, prefix, p in zip(answers, prefixes, held_out)) / len(held_out)
        return {"accuracy": sum(correct) / len(correct),
                "by_difficulty": {d: sum(c for c, p in zip(correct, held_out) if p.difficulty == d) / args.eval
                                  for d in DIFFICULTIES},
                "discrete_tokens": sum(n for _, _, n in decoded) / len(decoded),
                "latent_steps": sum(v.shape[0] for v in vectors) / len(vectors),
                "latent_norm": float(norms.median()) if norms.numel() else None,
                "embedding_norm": embedding_norm(model), "oracle_cosine": oracle_cosine,
                "accuracy_with_oracle_latents": teacher, "value_readout": decoded_values, "swap_kl": swap,
                "example": prefixes[0] + decoded[0][0]}

    find_segments = segment_finder(tokenizer, k)

    def value_readout(model, vectors: Sequence[torch.Tensor]) -> dict[str, float]:
        """Share of latent segments whose first latent is nearest (cosine) to the oracle vector of
        the right intermediate value among all values 0-9999: does the projector write the value?
        Per operation position (``op1``, ``op2``, ...) and overall. The tokenizer writes numbers
        digit by digit, so an oracle vector (a mean) names a value's digits, not their order:
        a guess counts when its digits are the value's in some order."""
        if digits:
            return digit_readout(model, vectors)
        with torch.no_grad():
            embed = model.get_input_embeddings()
            candidates = torch.stack([embed(torch.tensor(tokenizer(str(v), add_special_tokens=False).input_ids)).mean(0)
                                      for v in range(10_000)]).float()
            candidates = torch.nn.functional.normalize(candidates, dim=-1)
            hits: dict[int, list[bool]] = {}
            for v, p in zip(vectors, held_out):
                firsts = torch.nn.functional.normalize(v[::k].float(), dim=-1)
                guesses = (firsts @ candidates.T).argmax(-1).tolist()
                for j, (guess, value) in enumerate(zip(guesses, p.values()[1:])):
                    hits.setdefault(j + 1, []).append(sorted(str(guess)) == sorted(str(value)))
        return shares(hits)

    def digit_readout(model, vectors: Sequence[torch.Tensor]) -> dict[str, float]:
        """Digits code: share of latent segments whose 4 latents, each read as its nearest digit
        embedding, spell the right intermediate value."""
        with torch.no_grad():
            table = model.get_input_embeddings()(torch.tensor(
                [tokenizer(str(d), add_special_tokens=False).input_ids[0] for d in range(10)])).float()
            hits: dict[int, list[bool]] = {}
            for v, p in zip(vectors, held_out):
                read = (torch.nn.functional.normalize(v.float(), dim=-1) @ torch.nn.functional.normalize(table, dim=-1).T).argmax(-1)
                for j, value in enumerate(p.values()[1:]):
                    hits.setdefault(j + 1, []).append("".join(map(str, read[j * k:(j + 1) * k].tolist())) == f"{value:04d}")
        return shares(hits)

    def shares(hits: dict[int, list[bool]]) -> dict[str, float]:
        everything = [h for row in hits.values() for h in row]
        return {"all": sum(everything) / len(everything), **{f"op{j}": sum(h) / len(h) for j, h in sorted(hits.items())}}

    def greedy(model, prompt: str, prefix: str, vectors: torch.Tensor, max_new_tokens: int = 8):
        """Decode the answer after ``prompt + prefix`` with ``vectors`` (``[latent steps, d]``) in the
        prefix's latent slots (no cache: a few tokens; 0 tokens: only the first distribution).
        Returns (text, the first answer token's log-probs ``[V]``, discrete tokens incl. the prefix)."""
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        forced = tokenizer(prefix, add_special_tokens=False).input_ids
        segments = find_segments(forced)
        inputs, _, _ = latent_replay_inputs(model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long),
                                            torch.tensor([forced]), torch.ones(1, len(forced), dtype=torch.long),
                                            [segments], [vectors])
        embed, out, first = model.get_input_embeddings(), [], None
        for _ in range(max(1, max_new_tokens)):
            logprobs = torch.log_softmax(model(inputs_embeds=inputs).logits[0, -1].float(), -1)
            first = logprobs if first is None else first
            token = int(logprobs.argmax())
            if max_new_tokens == 0 or token == tokenizer.eos_token_id:
                break
            out.append(token)
            if "}" in tokenizer.decode([token]):
                break
            inputs = torch.cat([inputs, embed(torch.tensor([[token]]))], dim=1)
        return tokenizer.decode(out), first, len(forced) + len(out)

    def run(letter: str, curriculum: bool = False) -> dict:
        arm = ARMS[letter]
        start = time.perf_counter()
        model, _ = load_pretrained(args.model)
        source = {"spec": lambda: ReasoningProjector.from_model(model, output_norm="none"),
                  "pause": lambda: Pause(model), "soft": lambda: SoftLatent(model)}.get(arm, lambda: ReasoningProjector.from_model(model))()
        stages = max(DIFFICULTIES) if curriculum else 1
        for stage in range(1, stages + 1):
            latent_ops = (lambda p, s=stage: min(s, len(p.ops))) if curriculum else (lambda p: len(p.ops))
            steps = args.steps // stages + (args.steps % stages if stage == stages else 0)
            fit(arm, model, source, rows(latent_ops, empty=arm == "empty"), steps, args.seed + stage)
        code = f" [{args.oracle_code} code]" if arm in ("oracle", "distil", "soft") else ""
        code += " [written operands]" if args.written_operands else ""
        record = {"arm": f"({letter}) {arm}{code}" + (" + curriculum" if curriculum else ""), **evaluate(arm, model, source),
                  "seconds": round(time.perf_counter() - start, 1)}
        print(f"{record['arm']}: accuracy {100 * record['accuracy']:.1f}%"
              + ("" if record["accuracy_with_oracle_latents"] is None else
                 f" ({100 * record['accuracy_with_oracle_latents']:.1f}% given the oracle latents)"), flush=True)
        return record

    records = [run(letter) for letter in args.arms]
    if args.curriculum:
        records.append(run(args.curriculum, curriculum=True))

    table = Table(title=f"LiteReason channel: {len(train)} training problems, {args.steps} steps at lr {args.lr}, "
                        f"greedy on {len(held_out)} held-out 2-3-operation problems")
    for column in ("arm", "accuracy", "2 / 3 ops", "discrete tokens", "latent steps", "latent norm (emb.)",
                   "cos to oracle", "swap-KL", "seconds"):
        table.add_column(column)

    def num(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in records:
        table.add_row(r["arm"], f"{100 * r['accuracy']:.1f}%",
                      " / ".join(f"{100 * v:.0f}" for v in r["by_difficulty"].values()),
                      f"{r['discrete_tokens']:.1f}", f"{r['latent_steps']:.1f}",
                      f"{num(r['latent_norm'], '.3g')} ({r['embedding_norm']:.3g})", num(r["oracle_cosine"], ".2f"),
                      num(r["swap_kl"], ".3g"),
                      f"{r['seconds']:.0f}")
    Console(width=160).print(table)
    result = {"model": args.model, "train": len(train), "eval_per_difficulty": args.eval, "steps": args.steps,
              "batch_size": args.batch_size, "lr": args.lr, "distil_weight": args.distil_weight, "oracle_code": args.oracle_code, "written_operands": args.written_operands, "latent_steps": k, "seed": args.seed, "quick": args.quick,
              "records": records}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
