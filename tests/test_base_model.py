"""The shipped base model: integrity, architecture, accurate well-formed output, resumable build."""

import json

import pytest

from transformers import PreTrainedTokenizerFast

from thinklean.models.tiny import BASE_MODEL_DIR, load_pretrained
from thinklean.train.base_model import sha256_file

needs_base = pytest.mark.skipif(not (BASE_MODEL_DIR / "BUILD.json").is_file(), reason="base model not built")


@needs_base
def test_shipped_weights_match_the_recorded_checksum():
    build = json.loads((BASE_MODEL_DIR / "BUILD.json").read_text())
    assert sha256_file(BASE_MODEL_DIR / "model.safetensors") == build["sha256"]
    assert build["command"] == "thinklean demo --rebuild"


@needs_base
def test_shipped_build_records_the_current_recipe_from_base_v3():
    from thinklean.models.tiny import BASE_V3_MODEL_DIR
    from thinklean.train.base_model import BASE_STAGES, stage_record

    build = json.loads((BASE_MODEL_DIR / "BUILD.json").read_text())
    # a recipe changed without a rebuild would leave the shipped weights describing another one
    assert build["stages"] == json.loads(json.dumps([stage_record(s) for s in BASE_STAGES]))
    assert build["stages"][0]["variant"]["name"] == "x7x9-restate" and build["stages"][0]["mask_products"] is True
    assert build["init"]["path"] == "base-v3"
    assert build["init"]["sha256"] == sha256_file(BASE_V3_MODEL_DIR / "model.safetensors")
    # base-v3's own record names base-v2, whose record names base-v1: the chain back to scratch
    assert build["init"]["build"]["init"]["path"] == "base-v2"


@needs_base
def test_base_model_is_the_documented_tiny_qwen2():
    model, tokenizer = load_pretrained()
    config = model.config
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (256, 4, 4, 1024)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)


@needs_base
def test_base_model_solves_the_task_with_well_formed_finished_answers():
    from thinklean.eval.evaluate import EvalConfig, arith_examples, evaluate

    model, tokenizer = load_pretrained()
    summary = evaluate(model, tokenizer, arith_examples(36, "test", seed=1), EvalConfig(max_new_tokens=320))
    assert summary["format_error_rate"] <= 0.1
    assert summary["truncated_rate"] == 0.0
    # greedy decoding checks every step, the safe ones too (34 of 36 right, all 36 in the full
    # style, when written): the base model overthinks
    assert summary["accuracy"] >= 0.85
    assert summary["steps"]["risky"]["check_rate"] == 1.0 and summary["steps"]["safe"]["check_rate"] >= 0.9
    assert summary["per_style"]["full"]["n"] >= 30


def test_build_resumes_finished_stages_with_the_work_dirs_own_tokenizer(tmp_path, monkeypatch):
    import thinklean.train.base_model as base_model
    from thinklean.train.base_model import BuildStage, build_base_model
    from thinklean.train.sft import SFTConfig

    stages = tuple(BuildStage(name, SFTConfig(steps=2, batch_size=2, lr=1e-3), {"terse": 1.0}, 8)
                   for name in ("one", "two"))
    first = build_base_model(tmp_path / "out", tmp_path / "work", stages=stages, init=None, show_progress=False)
    assert [s["stage"] for s in first["summaries"]] == ["one", "two"]
    assert sha256_file(tmp_path / "out" / "model.safetensors") == first["sha256"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a resumed build reuses the work dir's tokenizer and finished stages")

    monkeypatch.setattr(base_model, "build_tokenizer", must_not_run)
    monkeypatch.setattr(base_model, "train_sft", must_not_run)
    again = build_base_model(tmp_path / "out", tmp_path / "work", stages=stages, init=None, show_progress=False)
    assert again["sha256"] == first["sha256"]
    assert again["summaries"] == first["summaries"]  # recorded even though nothing was re-trained


def test_build_from_an_init_model_records_it_and_trains_with_masked_repairs(tmp_path, tiny_model_dir):
    from thinklean.train.base_model import BuildStage, build_base_model
    from thinklean.train.sft import SFTConfig

    stage = BuildStage("checks", SFTConfig(steps=2, batch_size=4, lr=1e-3), {"full": 1.0}, 8, repair_rate=1.0)
    info = build_base_model(tmp_path / "out", tmp_path / "work", stages=(stage,), init=tiny_model_dir, show_progress=False)
    assert info["init"]["path"] == tiny_model_dir.name
    assert info["init"]["sha256"] == sha256_file(tiny_model_dir / "model.safetensors")
    assert info["stages"][0]["repair_rate"] == 1.0
    assert load_pretrained(tmp_path / "out")[1].get_vocab() == load_pretrained(tiny_model_dir)[1].get_vocab()


def test_a_stage_passes_its_check_rate_and_product_masking_to_its_rows(tmp_path, tiny_model_dir, monkeypatch):
    import thinklean.train.base_model as base_model
    from thinklean.train.base_model import BuildStage, build_base_model
    from thinklean.train.sft import SFTConfig

    seen: list[list[dict]] = []
    real = base_model.sft_records
    monkeypatch.setattr(base_model, "sft_records", lambda *a, **kw: seen.append(real(*a, **kw)) or seen[-1])
    stage = BuildStage("kinds", SFTConfig(steps=1, batch_size=4, lr=1e-3), {"partial": 1.0}, 16,
                       variant="x7x9-kinds", check_rate=1.0, mask_products=True)
    info = build_base_model(tmp_path / "out", tmp_path / "work", stages=(stage,), init=tiny_model_dir, show_progress=False)
    rows = seen[0]
    # check rate 1: every step of a partial row is checked; every risky step's first product is masked
    assert all(r["solution"].count("Let me check:") + r["solution"].count("Wait, let me verify:") == len(r["risky_steps"])
               and r["solution"].count("Double-check:") == r["difficulty"] - len(r["risky_steps"]) for r in rows)
    assert [len(r["masked_spans"]) for r in rows] == [len(r["risky_steps"]) for r in rows]
    assert sum(len(r["risky_steps"]) for r in rows) > 0
    assert (info["stages"][0]["check_rate"], info["stages"][0]["mask_products"]) == (1.0, True)


@needs_base
def test_earlier_base_models_load_by_name_with_their_recorded_weights():
    from thinklean.models.tiny import resolve_model_path

    for name in ("base-v1", "base-v2", "base-v3"):
        path = resolve_model_path(name)
        assert path.name == name and path.parent == BASE_MODEL_DIR.parent
        assert sha256_file(path / "model.safetensors") == json.loads((path / "BUILD.json").read_text())["sha256"]
