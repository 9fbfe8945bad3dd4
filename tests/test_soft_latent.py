"""LiteReason's soft latent source and latent-target SFT: rows, loss, staged training, RL, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil

import pytest
import torch
import torch.nn.functional as F

from thinklean.cli import main
from thinklean.data.arith import ArithProblem, generate_problems, solution_text
from thinklean.data.formats import LATENT, LATENT_END
from thinklean.data.jsonl import Example
from thinklean.data.litereason import INSTRUCTION, target_rows
from thinklean.methods.litereason import (
    LiteReasonTrainer,
    latent_target_loss,
    litereason_records,
    projector_sft_config,
    train_projector,
)
from thinklean.models.projector import ReasoningProjector, SoftLatent, load_source
from thinklean.runlog import read_metrics
from thinklean.train.rl import RLConfig
from thinklean.train.settings import ConfigError
from thinklean.train.sft import collate, encode_rows

SEGMENT = f"{LATENT}4{LATENT_END}"


def test_the_soft_latent_is_the_lms_expected_next_embedding_at_the_median_embedding_norm(tiny_model):
    source = SoftLatent(tiny_model)
    hidden = torch.randn(3, tiny_model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    table = tiny_model.get_input_embeddings().weight.detach()
    probs = torch.softmax(hidden @ tiny_model.lm_head.weight.detach().T, dim=-1)
    expected = probs @ table
    expected = expected / expected.norm(dim=-1, keepdim=True) * table.norm(dim=-1).median()
    torch.testing.assert_close(source(hidden), expected, rtol=1e-5, atol=1e-6)
    # no weights of its own: freezing it leaves the LM trainable, and it moves with the LM
    assert list(source.parameters()) == []
    source.requires_grad_(False)
    assert all(p.requires_grad for p in tiny_model.parameters())
    assert source.hidden_size == tiny_model.config.hidden_size and source.dtype == torch.float32


def test_a_saved_soft_source_reloads_on_its_lm_and_a_projector_as_a_projector(tiny_model, tmp_path):
    soft = SoftLatent(tiny_model, max_steps=4)
    (tmp_path / "projector.safetensors").write_bytes(b"stale")
    soft.save(tmp_path)
    assert not (tmp_path / "projector.safetensors").exists()
    assert json.loads((tmp_path / "projector.json").read_text())["source"] == "soft"
    loaded = load_source(tmp_path, tiny_model)
    hidden = torch.randn(2, tiny_model.config.hidden_size)
    assert isinstance(loaded, SoftLatent) and loaded.max_steps == 4
    assert torch.equal(loaded(hidden), soft(hidden))

    ReasoningProjector.from_model(tiny_model).save(tmp_path / "p")
    assert isinstance(load_source(tmp_path / "p", tiny_model), ReasoningProjector)
    (tmp_path / "p" / "projector.json").write_text(json.dumps({"source": "magic"}))
    with pytest.raises(ValueError, match=r"p/projector.json: source must be one of projector, soft, got 'magic'"):
        load_source(tmp_path / "p", tiny_model)
    with pytest.raises(FileNotFoundError, match="no projector.json"):
        load_source(tmp_path / "missing", tiny_model)


def test_target_rows_make_operations_latent_stage_by_stage_with_the_values_they_compute_as_targets():
    problem = ArithProblem(347, (("*", 6), ("+", 5)))  # 2082 (checked: 1800 + 282), then 2087
    one_op = ArithProblem(12, (("+", 3),))
    rows = target_rows([problem, one_op], stages=2, targets="results")
    assert [(r["stage"], r["replaced"], r["latent_targets"]) for r in rows] == [
        (1, 1, ["2082"]), (1, 1, ["0015"]), (2, 2, ["2082", "2087"]), (2, 1, ["0015"])]
    assert rows[0]["solution"] == f"<think> {SEGMENT} 2082 + 5 = 2087. </think> \\boxed{{2087}}"
    assert rows[2]["solution"] == f"<think> {SEGMENT} {SEGMENT} </think> \\boxed{{2087}}"
    assert rows[0]["prompt"] == f"{problem.question} {INSTRUCTION}" and rows[0]["answer"] == "2087"
    assert rows[0]["difficulty"] == 2

    # checks: a multiplication's latent steps carry its check's partial products, then the result
    rows = target_rows([problem, one_op], stages=2, targets="checks")
    assert [r["latent_targets"] for r in rows] == [["1800", "0282", "2082"], ["0015"],
                                                   ["1800", "0282", "2082", "2087"], ["0015"]]
    assert rows[0]["solution"] == f"<think> {SEGMENT} {SEGMENT} {SEGMENT} 2082 + 5 = 2087. </think> \\boxed{{2087}}"
    # ... and a written multiplication is followed by its check, as the risky style writes it
    written = target_rows([ArithProblem(120, (("+", 3), ("*", 6)))], stages=2, targets="checks")[0]
    assert written["latent_targets"] == ["0123"]
    assert written["solution"].startswith(f"<think> {SEGMENT} 123 * 6 = 738. ")
    assert written["solution"].endswith("100 * 6 = 600, 23 * 6 = 138, 600 + 138 = 738. The result is 738. "
                                        "</think> \\boxed{738}")

    # safe: multiplications are written with their check, only the other operations are latent
    rows = target_rows([problem, ArithProblem(120, (("+", 3), ("*", 6)))], stages=1, targets="safe")
    assert [(r["replaced"], r["latent_targets"]) for r in rows] == [(1, ["2087"]), (1, ["0123"])]
    assert rows[0]["solution"].startswith("<think> 347 * 6 = 2082. ")
    assert rows[0]["solution"].endswith(f"300 * 6 = 1800, 47 * 6 = 282, 1800 + 282 = 2082. The result is 2082. "
                                        f"{SEGMENT} </think> \\boxed{{2087}}")
    assert rows[1]["solution"] == (f"<think> {SEGMENT} 123 * 6 = 738. " + rows[1]["solution"].split("738. ", 1)[1])
    assert "600 + 138 = 738. The result is 738. </think>" in rows[1]["solution"]

    with pytest.raises(ValueError, match="more than 4 digits"):
        target_rows([ArithProblem(9999, (("+", 5),))], targets="checks")
    with pytest.raises(ValueError, match="stages must be at least 1"):
        target_rows([problem], stages=0)
    with pytest.raises(ValueError, match="targets must be one of results, checks, safe"):
        target_rows([problem], targets="digits")


def test_the_target_loss_equals_a_hand_built_teacher_forced_reference(tiny_model, tiny_tokenizer):
    torch.manual_seed(0)
    source = SoftLatent(tiny_model)
    row = target_rows([ArithProblem(347, (("*", 6), ("+", 5)))], stages=2, targets="results")[0]  # 1 segment, then text
    encoded = encode_rows(tiny_tokenizer, [row], 512)[0]
    loss, count = latent_target_loss(source, tiny_tokenizer, [row], 512)(tiny_model, collate([encoded], 0))

    # reference: the prompt, the response up to the segment's closing tag, 4 slots holding the
    # digits' embeddings at the source's norm, the rest of the response
    prompt = list(encoded.input_ids[:encoded.prompt_len])
    response = list(encoded.input_ids[encoded.prompt_len:])
    close = tiny_tokenizer(f"<think> {SEGMENT}", add_special_tokens=False).input_ids
    assert response[:len(close)] == close
    embed = tiny_model.get_input_embeddings()
    digits = torch.tensor(tiny_tokenizer("2082", add_special_tokens=False).input_ids)
    assert len(digits) == 4
    slots = F.normalize(embed(digits), dim=-1) * source.output_scale
    inputs = torch.cat([embed(torch.tensor(prompt + response[:len(close)])), slots.detach(),
                        embed(torch.tensor(response[len(close):]))])[None]
    hidden = tiny_model(inputs_embeds=inputs, output_hidden_states=True).hidden_states[-1][0]
    logits = tiny_model.lm_head(hidden)
    first_slot = len(prompt) + len(close)
    # response token t is predicted at the position before it; after the slots, shifted by 4
    before = [len(prompt) - 1 + t + (4 if t >= len(close) else 0) for t in range(len(response))]
    cross_entropy = F.cross_entropy(logits[before], torch.tensor(response))
    written = source(hidden[first_slot - 1: first_slot + 3])
    distance = (written - slots).pow(2).sum(-1).mean() / slots.pow(2).sum(-1).mean()
    assert count == len(response)
    torch.testing.assert_close(loss, cross_entropy + distance, rtol=1e-5, atol=1e-6)


def test_targets_that_do_not_match_the_segments_are_named_by_row(tiny_model, tiny_tokenizer):
    rows = target_rows(generate_problems(2, "train", 0), stages=1, targets="results")
    rows[1] = {**rows[1], "latent_targets": ["12"]}
    with pytest.raises(ValueError, match=r"row 1: latent segments of \[4, 4\] steps but latent_targets \['12'\]"):
        latent_target_loss(SoftLatent(tiny_model), tiny_tokenizer, rows, 512)
    with pytest.raises(ValueError, match="row 0: no latent_targets"):
        latent_target_loss(SoftLatent(tiny_model), tiny_tokenizer, [{k: v for k, v in rows[0].items()
                                                                     if k != "latent_targets"}, rows[1]], 512)


def test_staged_training_splits_the_steps_and_the_loss_falls(tmp_path, tiny_model, tiny_tokenizer):
    rows = target_rows(generate_problems(4, "train", 0), stages=2)
    config = projector_sft_config(len(rows), lr=3e-3, batch_size=4, grad_clip=1.0)
    config.steps = 41
    source = SoftLatent(tiny_model)
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    train_projector(tiny_model, tiny_tokenizer, source, rows, tmp_path, config, with_lm=True, show_progress=False,
                    probe_every=0)
    first, last = read_metrics(tmp_path / "stage-1" / "metrics.jsonl"), read_metrics(tmp_path / "metrics.jsonl")
    assert (len(first), len(last)) == (20, 21)  # 41 // 2, and the remainder to the last stage
    assert last[-1]["loss"] < 0.5 * first[0]["loss"]
    assert any(not torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())
    assert json.loads((tmp_path / "model" / "projector.json").read_text())["source"] == "soft"
    assert not (tmp_path / "stage-1" / "model").exists()

    with pytest.raises(ValueError, match="soft latent source has no weights of its own"):
        train_projector(tiny_model, tiny_tokenizer, source, rows, tmp_path / "frozen", config, show_progress=False)
    with pytest.raises(ValueError, match="1 of 2 rows have a stage"):
        unstaged = {k: v for k, v in rows[1].items() if k != "stage"}
        train_projector(tiny_model, tiny_tokenizer, source, [rows[0], unstaged], tmp_path / "mixed", config,
                        with_lm=True, show_progress=False)


def test_rendered_records_need_embedded_task_questions(tiny_model, tiny_tokenizer):
    problems = generate_problems(3, "train", 0)
    examples = [Example(prompt=p.question, answer=str(p.answer)) for p in problems]
    rows = litereason_records(tiny_model, tiny_tokenizer, examples, stages=3)
    assert rows == target_rows(problems, 3)
    with pytest.raises(ValueError, match=r"rows \[2\] are not embedded-task questions"):
        litereason_records(tiny_model, tiny_tokenizer, [examples[0], Example(prompt="What is 2+2?", answer="4")],
                           stages=1)


def test_rl_with_a_soft_source_trains_the_lm_skips_the_refresh_and_saves_the_source(tmp_path, tiny_model,
                                                                                   tiny_model_dir):
    SoftLatent(tiny_model).save(tiny_model_dir)
    out = tmp_path / "run"
    assert main(["train", "--method", "litereason", "--model", str(tiny_model_dir), "--steps", "2",
                 "--prompts-per-step", "2", "--samples-per-prompt", "2", "--max-new-tokens", "8",
                 "--set", "train_problems=8", "--output", str(out)]) == 0
    assert json.loads((out / "model" / "projector.json").read_text())["source"] == "soft"

    problems = generate_problems(4, "train", 0)
    examples = [Example(prompt=p.question, answer=str(p.answer)) for p in problems]
    from thinklean.models.tiny import load_pretrained

    model, tokenizer = load_pretrained(tiny_model_dir)
    trainer = LiteReasonTrainer(model, tokenizer, RLConfig(method="litereason", steps=1, save_every=0), examples,
                                tmp_path / "refresh")
    assert isinstance(trainer.projector, SoftLatent)
    trainer.correct_rollouts = [(0, e, solution_text(p, "full", random.Random(0))) for e, p in zip(examples, problems)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.on_epoch_end(1)
    assert not (tmp_path / "refresh" / "projector_refresh.jsonl").exists() and trainer.correct_rollouts == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_data_and_sft_commands_build_a_staged_soft_start_model(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "lr.jsonl"
    assert main(["data", "litereason", "--model", str(tiny_model_dir), "--n", "3", "--stages", "2",
                 "--output", str(data)]) == 0
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert [r["stage"] for r in rows] == [1, 1, 1, 2, 2, 2] and all("latent_targets" in r for r in rows)
    assert "6 rows with latent targets (3 at stage 1, 3 at stage 2)" in capsys.readouterr().out
    assert main(["data", "litereason", "--model", str(tiny_model_dir), "--stages", "2", "--targets", "digits",
                 "--output", str(tmp_path / "bad.jsonl")]) == 2
    assert "invalid choice: 'digits' (choose from 'results', 'checks', 'safe')" in capsys.readouterr().err

    assert main(["litereason-sft", "--model", str(tiny_model_dir), "--data", str(data), "--source", "soft",
                 "--output", str(tmp_path / "no-lm")]) == 2
    assert "--source soft has no weights of its own: add --with-lm" in capsys.readouterr().err
    out = tmp_path / "sft"
    assert main(["litereason-sft", "--model", str(tiny_model_dir), "--data", str(data), "--source", "soft",
                 "--with-lm", "--steps", "4", "--batch-size", "3", "--probe-every", "0",
                 "--output", str(out)]) == 0
    assert [len(read_metrics(out / d / "metrics.jsonl")) for d in ("stage-1", ".")] == [2, 2]
    assert json.loads((out / "model" / "projector.json").read_text())["source"] == "soft"


def test_the_start_recipe_defaults_are_the_soft_curriculum():
    from thinklean.methods.litereason import PAPER_RECIPE, StartRecipe

    recipe = StartRecipe()
    assert (recipe.source, recipe.stages, recipe.targets, recipe.steps, recipe.lr, recipe.with_lm) == \
        ("soft", 4, "results", 4000, 3e-4, True)
    assert (recipe.polish_steps, recipe.polish_lr) == (2000, 1e-4)
    assert (PAPER_RECIPE.source, PAPER_RECIPE.stages, PAPER_RECIPE.steps, PAPER_RECIPE.lr) == ("projector", 0, None, 1e-4)
    assert PAPER_RECIPE.polish_steps == 0
    assert math.isclose(PAPER_RECIPE.grad_clip, 0.2)


def test_the_start_model_polish_trains_the_curriculum_model_on_its_last_stage(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from thinklean.methods.litereason import PAPER_RECIPE, StartRecipe, build_start_model

    with pytest.raises(ValueError, match="polish_steps 2 needs curriculum stages"):
        build_start_model(tiny_model_dir, tmp_path / "paper", dataclasses.replace(PAPER_RECIPE, polish_steps=2))
    recipe = StartRecipe(problems=3, stages=2, steps=2, polish_steps=3, batch_size=2)
    build = tmp_path / "build"
    model_dir = build_start_model(tiny_model_dir, build, recipe, show_progress=False)
    rows = [json.loads(line) for line in (build / "litereason.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == [1, 1, 1, 2, 2, 2]
    # the curriculum: one step per stage; then the polish: 3 steps on the 3 last-stage rows
    assert [len(read_metrics(build / "staged" / d / "metrics.jsonl")) for d in ("stage-1", ".")] == [1, 1]
    assert len(read_metrics(build / "metrics.jsonl")) == 3
    assert json.loads((model_dir / "projector.json").read_text())["source"] == "soft"
    staged, polished = load_file(build / "staged" / "model" / "model.safetensors"), load_file(model_dir / "model.safetensors")
    assert any(not torch.equal(staged[k], polished[k]) for k in staged)
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert build_start_model(tiny_model_dir, build, recipe) == model_dir
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp
    # a resumed polish starts from the staged model and its rows: the base model is not read
    shutil.rmtree(model_dir)
    assert build_start_model(tmp_path / "no-base-model", build, recipe, show_progress=False) == model_dir
    # rows written for 2 stages give a 3-stage recipe nothing to polish on
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(build / "litereason.jsonl", other / "litereason.jsonl")
    with pytest.raises(ValueError, match=r"litereason.jsonl: no row of stage 3 to polish on \(stages found: \[1, 2\]\)"):
        build_start_model(tiny_model_dir, other, dataclasses.replace(recipe, stages=3), show_progress=False)


def test_fsdp_with_a_soft_source_is_refused_before_training(tmp_path, tiny_model, tiny_tokenizer, monkeypatch):
    monkeypatch.setattr("thinklean.methods.litereason.fsdp_requested", lambda accelerator: True)
    examples = [Example(prompt=p.question, answer=str(p.answer)) for p in generate_problems(2, "train", 0)]
    SoftLatent(tiny_model).save(tmp_path / "soft")
    with pytest.raises(ConfigError, match="soft latent source reads the LM's head and embeddings"):
        LiteReasonTrainer(tiny_model, tiny_tokenizer, RLConfig(method="litereason", steps=1, save_every=0,
                                                               method_kwargs={"projector": str(tmp_path / "soft")}),
                          examples, tmp_path / "run")


def test_the_step_error_benchmark_reads_latents_back_per_operation(tmp_path, tiny_model_dir, tiny_model, monkeypatch):
    from pathlib import Path

    SoftLatent(tiny_model).save(tiny_model_dir)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import litereason_steps

    result = litereason_steps.main(["--model", str(tiny_model_dir), "--quick", "--threads", "1", "--max-new-tokens", "6",
                          "--out", str(tmp_path / "steps.json")])
    # an untrained model opens no segment: every response is off the layout, no step is read
    assert result["off_layout"] == 1.0 and result["steps"]["risky"]["steps"] == result["steps"]["safe"]["steps"] == 0
    assert json.loads((tmp_path / "steps.json").read_text())["n"] == 8


def test_the_step_error_benchmark_reads_a_written_multiplication_by_the_value_its_check_carries(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import litereason_steps

    checked = (f"<think> {SEGMENT} 123 * 6 = 748. Let me check: 100 * 6 = 600, 23 * 6 = 138, 600 + 138 = 738. "
               f"The result is 738. {SEGMENT} 9 * 4 = 36. </think> \\boxed{{40}}")
    first, second = litereason_steps.WRITTEN_PRODUCT.finditer(checked)
    assert int(first[4] or first[3]) == 738  # the check's sum, not the first result
    assert int(second[4] or second[3]) == 36  # unchecked: its first result; no check read across a segment
