"""LiteReason data (sentences made latent) and projector SFT (LM frozen, loss after the first segment)."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from types import SimpleNamespace

import pytest
import torch

from thinklean.data.arith import THREE_DIGIT, generate_problems, solution_text
from thinklean.data.formats import LATENT, LATENT_END
from thinklean.data.grading import format_ok, grade
from thinklean.data.jsonl import Example
from thinklean.data.litereason import (
    INSTRUCTION,
    latent_steps_for,
    latent_prefix_variant,
    latent_variant,
    litereason_prompt,
    split_sentences,
    variant_rows,
)
from thinklean.methods.litereason import litereason_records, projector_sft_config, projector_sft_loss, train_projector
from thinklean.eval.latent_probe import PROBE_KEYS
from thinklean.models.projector import ReasoningProjector, embedding_norm
from thinklean.models.tiny import build_model
from thinklean.runlog import read_metrics
from thinklean.train.sft import collate, encode_rows

SEGMENT = re.compile(rf"{LATENT}(\d+){LATENT_END}")


class WordTokenizer:
    """One token per whitespace-separated word, so token counts can be read off the text."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": list(range(len(text.split())))}


def words(n: int, tag: str) -> str:
    return " ".join([tag] + ["w"] * (n - 2) + ["end."])


def walk_variant(sentences: list[str], reasoning: str) -> tuple[list[int], list[int]]:
    """Which sentences a variant replaced (indices) and each replacement's N, in order."""
    replaced, steps, rest = [], [], reasoning.strip()
    for i, sentence in enumerate(sentences):
        match = SEGMENT.match(rest)
        if rest.startswith(sentence):
            rest = rest[len(sentence):].lstrip()
        else:
            assert match is not None, (sentence, rest)
            replaced.append(i)
            steps.append(int(match.group(1)))
            rest = rest[match.end():].lstrip()
    assert rest == ""
    return replaced, steps


# ------------------------------------------------------------------------------------- data


@pytest.mark.parametrize(("tokens", "steps"), [(1, 1), (4, 1), (5, 1), (9, 1), (10, 2), (14, 2), (15, 3),
                                               (24, 4), (25, 5), (40, 5)])
def test_latent_steps_are_a_fifth_of_the_sentence_tokens_clamped_to_one_to_five(tokens, steps):
    sentence = " ".join(["w"] * tokens)
    assert latent_steps_for(sentence, WordTokenizer()) == steps


def test_sentences_split_at_end_punctuation_and_closing_tags_only():
    text = f" Start with 3. Add 2: 3 + 2 = 5! Sure? {LATENT}2{LATENT_END} Then 2.5 stays. last "
    assert split_sentences(text) == ["Start with 3.", "Add 2: 3 + 2 = 5!", "Sure?", f"{LATENT}2{LATENT_END}",
                                     "Then 2.5 stays.", "last"]


@pytest.mark.parametrize(("ratio", "expected"), [(0.10, 2), (0.25, 5)])
def test_a_variant_replaces_the_ratio_of_sentences_each_by_n_latent_steps(ratio, expected):
    # 20 sentences of 3..22 words: round(0.10 * 20) = 2 and round(0.25 * 20) = 5 become latent.
    sentences = [words(3 + i, f"s{i}") for i in range(20)]
    trace = f"<think> {' '.join(sentences)} </think> \\boxed{{7}}"
    variant, count = latent_variant(trace, WordTokenizer(), ratio, random.Random(0))
    assert count == expected
    assert variant.startswith("<think> ") and variant.endswith(" </think> \\boxed{7}")
    replaced, steps = walk_variant(sentences, variant[len("<think>"): -len("</think> \\boxed{7}")])
    assert len(replaced) == expected
    # sentence i has 3 + i words: N = clamp(floor((3 + i) / 5), 1, 5)
    assert steps == [max(1, min(5, (3 + i) // 5)) for i in replaced]
    assert format_ok(variant) and grade(variant, "7")


def test_every_variant_replaces_at_least_one_sentence_and_never_the_answer_or_a_segment():
    # Three replaceable sentences: 0.10 * 3 rounds to 0, but a variant always replaces one.
    trace = f"A a a. {LATENT}3{LATENT_END} B b b. C c. So \\boxed{{4}}."
    for seed in range(10):
        variant, count = latent_variant(trace, WordTokenizer(), 0.10, random.Random(seed))
        assert count == 1
        assert variant.endswith(" So \\boxed{4}.")
        assert f" {LATENT}3{LATENT_END} " in variant and len(SEGMENT.findall(variant)) == 2
    assert latent_variant("So \\boxed{4}.", WordTokenizer(), 0.25, random.Random(0)) is None


def test_a_prefix_variant_replaces_the_first_sentences_in_order():
    # Curriculum stage 2 of "A a a. B b b b b b. C c. So \boxed{4}.": the first two sentences
    # become segments of N = max(1, floor(3 / 5)) = 1 and floor(6 / 5) = 1; C and the answer stay.
    trace = "<think> A a a. B b b b b b. C c. </think> So \\boxed{4}."
    variant, count = latent_prefix_variant(trace, WordTokenizer(), 2)
    assert count == 2
    assert variant == f"<think> {LATENT}1{LATENT_END} {LATENT}1{LATENT_END} C c. </think> So \\boxed{{4}}."
    # A stage past the end makes every sentence latent; the answer is never replaced.
    everything, count = latent_prefix_variant(trace, WordTokenizer(), 9)
    assert count == 3 and everything.endswith(f"{LATENT}1{LATENT_END} </think> So \\boxed{{4}}.")
    assert latent_prefix_variant("So \\boxed{4}.", WordTokenizer(), 1) is None
    with pytest.raises(ValueError, match="at least 1"):
        latent_prefix_variant(trace, WordTokenizer(), 0)


def test_variant_rows_carry_the_instructed_prompt_the_ratio_and_distinct_variants():
    example = Example(prompt="Start with 1. Add 2. What is the result?", answer="3", difficulty=1)
    trace = "<think> Start with 1. Add 2: 1 + 2 = 3. The result is 3. </think> \\boxed{3}"
    rows = variant_rows(example, trace, WordTokenizer(), random.Random(0), variants=5)
    assert {r["ratio"] for r in rows} == {0.10, 0.25}
    for ratio in (0.10, 0.25):
        solutions = [r["solution"] for r in rows if r["ratio"] == ratio]
        assert len(solutions) == len(set(solutions)) <= 3  # three sentences: three distinct variants at most
    assert all(r["prompt"] == f"{example.prompt} {INSTRUCTION}" and r["answer"] == "3" and r["difficulty"] == 1
               and r["replaced"] == 1 for r in rows)
    assert litereason_prompt(rows[0]["prompt"]) == rows[0]["prompt"]


def test_records_keep_only_correct_traces_and_are_deterministic(monkeypatch, tiny_model, tiny_tokenizer):
    problems = generate_problems(3, "train", 0)
    examples = [Example(prompt=p.question, answer=str(p.answer), difficulty=p.difficulty) for p in problems]
    right = [solution_text(p, "full", random.Random(i)) for i, p in enumerate(problems)]
    wrong = "<think> I guess. </think> \\boxed{1000}"
    calls = []

    def fake_generate(model, tokenizer, prompts, k, sampling, generator=None):
        calls.append((len(prompts), k, sampling.temperature, sampling.top_p))
        texts = {0: [right[0], wrong, right[0]], 1: [wrong] * 3, 2: [wrong, right[2], wrong]}
        return SimpleNamespace(texts=[t for i in range(len(prompts)) for t in texts[i]])

    monkeypatch.setattr("thinklean.methods.litereason.generate", fake_generate)
    rows = litereason_records(tiny_model, tiny_tokenizer, examples, k=3, seed=1, show_progress=False)
    assert calls == [(3, 3, 0.7, 0.8)]
    # problem 1 has no correct trace; problem 0's duplicate trace counts once
    assert {r["prompt"] for r in rows} == {litereason_prompt(examples[0].prompt), litereason_prompt(examples[2].prompt)}
    assert all(grade(r["solution"], r["answer"]) and format_ok(r["solution"]) and LATENT in r["solution"] for r in rows)
    assert {r["ratio"] for r in rows} == {0.10, 0.25}
    assert litereason_records(tiny_model, tiny_tokenizer, examples, k=3, seed=1, show_progress=False) == rows


# ------------------------------------------------------------------------------- projector SFT


def _sft_rows(tokenizer, n: int = 4) -> list[dict]:
    problems = generate_problems(n, "train", 0, variant=THREE_DIGIT)
    rows = []
    for i, p in enumerate(problems):
        example = Example(prompt=p.question, answer=str(p.answer))
        trace = solution_text(p, "full", random.Random(i), variant=THREE_DIGIT)
        rows += variant_rows(example, trace, tokenizer, random.Random(i), variants=1)
    return rows


def test_projector_sft_loss_scores_the_tokens_after_the_first_segment(tiny_model, tiny_tokenizer, projector):
    solution = f"<think> 1 + 2 = 3. {LATENT}2{LATENT_END} So 3. {LATENT}1{LATENT_END} </think> \\boxed{{3}}"
    row = {"prompt": "Start with 1. Add 2. What is the result?", "solution": solution}
    batch = collate(encode_rows(tiny_tokenizer, [row], 512), tiny_tokenizer.pad_token_id)
    response = tiny_tokenizer(solution, add_special_tokens=False).input_ids + [tiny_tokenizer.eos_token_id]
    first_end = response.index(tiny_tokenizer.convert_tokens_to_ids(LATENT_END))
    loss, count = projector_sft_loss(projector, tiny_tokenizer)(tiny_model, batch)
    assert count == len(response) - (first_end + 1)  # " So 3. <it>1</it> </think> \boxed{3}" + EOS
    _, every = projector_sft_loss(projector, tiny_tokenizer, all_response_tokens=True)(tiny_model, batch)
    assert every == len(response)
    tiny_model.requires_grad_(False)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())


def test_projector_sft_trains_only_the_projector_and_the_loss_falls(tmp_path, tiny_tokenizer, make_projector):
    # Larger initial weights than the default 0.02 make the random LM's logits depend on its
    # inputs enough for a projector alone to move the loss visibly within a few steps.
    tiny_model = build_model(tiny_tokenizer, seed=0, initializer_range=0.1, hidden_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, intermediate_size=128)
    projector = make_projector(tiny_model)
    rows = _sft_rows(tiny_tokenizer)
    lm_before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    projector_before = {k: v.clone() for k, v in projector.state_dict().items()}
    # one batch holding every row, so each step's loss is on the same data; the projector's output
    # has a fixed norm (output_norm="embedding"), so only its direction can move the loss
    config = projector_sft_config(len(rows), lr=1e-1, epochs=8, batch_size=len(rows))
    summary = train_projector(tiny_model, tiny_tokenizer, projector, rows, tmp_path, config, show_progress=False)

    assert summary["steps"] == 8
    losses = [m["loss"] for m in read_metrics(tmp_path / "metrics.jsonl")]
    # each step sees another batch, so compare the ends of the curve, not neighbouring steps
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.1 and sum(losses[-3:]) / 3 < sum(losses[:2]) / 2 - 0.1
    assert all(torch.equal(v, lm_before[k]) for k, v in tiny_model.state_dict().items())
    assert all(not torch.equal(v, projector_before[k]) for k, v in projector.named_parameters())
    assert torch.equal(projector.output_scale, projector_before["output_scale"])  # fixed, not learned
    assert all(p.requires_grad for p in tiny_model.parameters())  # flags restored
    assert not any(p.requires_grad for p in projector.parameters())
    saved = ReasoningProjector.load(tmp_path / "model")
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in projector.state_dict().items())


def test_projector_sft_logs_the_latent_probe_at_the_first_every_nth_and_last_step(tmp_path, tiny_model,
                                                                                  tiny_tokenizer, projector):
    rows = _sft_rows(tiny_tokenizer, n=2)
    config = projector_sft_config(len(rows), lr=1e-3, epochs=10, batch_size=len(rows))
    train_projector(tiny_model, tiny_tokenizer, projector, rows, tmp_path, config, show_progress=False, probe_every=4)
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert config.steps == len(metrics) == 10
    assert [m["step"] for m in metrics if "probe_swap_kl" in m] == [1, 4, 8, 10]
    first = metrics[0]
    assert set(PROBE_KEYS) <= set(first) and first["probe_swap_kl"] >= 0
    assert first["probe_embedding_norm"] == pytest.approx(embedding_norm(tiny_model))


def test_with_lm_the_lm_learns_too_on_every_response_token(tmp_path, tiny_model, tiny_tokenizer, projector):
    rows = _sft_rows(tiny_tokenizer, n=2)
    lm_before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    config = projector_sft_config(len(rows), lr=1e-3, batch_size=len(rows))
    train_projector(tiny_model, tiny_tokenizer, projector, rows, tmp_path, config, with_lm=True, show_progress=False)
    assert any(not torch.equal(v, lm_before[k]) for k, v in tiny_model.state_dict().items())
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["tokens"] == sum(
        len(tiny_tokenizer(r["solution"], add_special_tokens=False).input_ids) + 1 for r in rows)


def test_projector_sft_settings_follow_the_spec():
    config = projector_sft_config(100)
    assert (config.steps, config.batch_size, config.lr, config.grad_clip) == (7, 16, 1e-4, 0.2)
    assert (config.warmup_ratio, config.min_lr_ratio) == (0.1, 0.1)
    refresh = projector_sft_config(40, constant_lr=True, batch_size=8, grad_accum=2)
    assert refresh.steps == 3 and (refresh.warmup_ratio, refresh.min_lr_ratio) == (0.0, 1.0)


def test_data_and_sft_commands_write_rows_and_a_model_with_its_projector(monkeypatch, tmp_path, tiny_model_dir,
                                                                         tiny_tokenizer, capsys):
    from thinklean.cli import main
    from thinklean.models.tiny import load_model

    problems = generate_problems(2, "train", 0)
    traces = [solution_text(p, "full", random.Random(i)) for i, p in enumerate(problems)]
    monkeypatch.setattr("thinklean.methods.litereason.generate",
                        lambda model, tokenizer, prompts, k, sampling, generator=None:
                        SimpleNamespace(texts=[traces[i] for i in range(len(prompts)) for _ in range(k)]))
    data = tmp_path / "lr.jsonl"
    assert main(["data", "litereason", "--model", str(tiny_model_dir), "--n", "2", "--k", "2",
                 "--output", str(data)]) == 0
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    # two problems x two ratios x up to two distinct variants (the 1-operation trace has few sentences)
    assert 2 * 2 < len(rows) <= 2 * 2 * 2
    assert f"{len(rows)} rows" in capsys.readouterr().out

    out = tmp_path / "sft"
    assert main(["litereason-sft", "--model", str(tiny_model_dir), "--data", str(data), "--batch-size", "4",
                 "--output", str(out)]) == 0
    assert (out / "model" / "projector.json").is_file()
    ReasoningProjector.load(out / "model")
    before, after = load_model(tiny_model_dir).state_dict(), load_model(out / "model").state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


def test_litereason_sft_has_help_with_defaults(capsys):
    from thinklean.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["litereason-sft", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--with-lm" in out and "--seed" in out and "default: 0.0001" in out


def test_latent_probe_benchmark_forces_latent_only_and_empty_think(tmp_path, tiny_model, tiny_tokenizer, projector,
                                                                   monkeypatch):
    from pathlib import Path

    from thinklean.models.tiny import save_pretrained

    model_dir = tmp_path / "model"
    save_pretrained(tiny_model, tiny_tokenizer, model_dir)
    projector.save(model_dir)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import litereason_latent_probe

    out = tmp_path / "probe.json"
    result = litereason_latent_probe.main(["--model", str(model_dir), "--n", "6", "--forced", "3", "--latent-steps", "3",
                                           "--max-new-tokens", "8", "--out", str(out)])
    rows = result["rows"]
    assert list(rows) == ["greedy", "T=1", "1 op, latent only (K=3)", "1 op, empty think"]
    latent_only, empty = rows["1 op, latent only (K=3)"], rows["1 op, empty think"]
    assert latent_only["n"] == empty["n"] == 3 and rows["greedy"]["n"] == 6
    assert latent_only["with_latent"] == 1.0 and latent_only["latent_steps"] >= 3.0
    assert latent_only["example"].startswith(f"<think> {LATENT}3{LATENT_END}")
    assert empty["example"].startswith("<think> </think>")
    assert json.loads(out.read_text())["rows"]["greedy"]["n"] == 6


@pytest.mark.parametrize("experiment", ["capacity", "curriculum"])
def test_capacity_benchmark_trains_and_evaluates_every_pass(tmp_path, tiny_model, tiny_tokenizer, monkeypatch,
                                                            experiment):
    from pathlib import Path

    from thinklean.models.tiny import save_pretrained

    model_dir = tmp_path / "model"
    save_pretrained(tiny_model, tiny_tokenizer, model_dir)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import litereason_capacity

    out = tmp_path / "capacity.json"
    result = litereason_capacity.main(["--experiment", experiment, "--model", str(model_dir), "--rows", "20",
                                       "--epochs", "2", "--stages", "2", "--eval", "12", "--threads", "1",
                                       "--out", str(out)])
    records = result["records"]
    if experiment == "capacity":  # 1-2-op problems only: 4 of the 12 held-out ones
        assert [(r["run"], r["pass"]) for r in records] == [("every sentence latent", 1), ("every sentence latent", 2),
                                                            ("empty think", 1), ("empty think", 2)]
        assert result["held_out"] == 4 and all(set(r["by_difficulty"]) == {1, 2} for r in records)
        assert all(r["example"].startswith("<think> </think>") for r in records[2:])
    else:
        assert [r["pass"] for r in records] == [1, 2] and result["held_out"] == 12
    assert all(r["steps"] == 2 for r in records)  # ceil(20 rows / batch 16)
    assert json.loads(out.read_text())["records"][0]["pass"] == 1


def test_start_model_builder_reuses_its_data_and_a_finished_model(tmp_path, tiny_model_dir):
    from thinklean.data.jsonl import write_jsonl
    from thinklean.methods.litereason import PAPER_RECIPE, build_start_model

    recipe = dataclasses.replace(PAPER_RECIPE, problems=2, k=1, epochs=1, max_new_tokens=4)
    with pytest.raises(ValueError, match="no correct trace among 1 samples of 2 problems"):  # untrained tiny model
        build_start_model(tiny_model_dir, tmp_path / "none", recipe)
    assert not (tmp_path / "none" / "litereason.jsonl").exists()

    rows = [{"prompt": litereason_prompt("Start with 1. Add 2. What is the result?"), "answer": "3",
             "solution": f"<think> {LATENT}2{LATENT_END} </think> \\boxed{{3}}"}] * 3
    write_jsonl(tmp_path / "build" / "litereason.jsonl", rows)
    model_dir = build_start_model(tiny_model_dir, tmp_path / "build", recipe)
    assert model_dir == tmp_path / "build" / "model" and (model_dir / "projector.safetensors").is_file()
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert build_start_model(tiny_model_dir, tmp_path / "build", recipe) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp
