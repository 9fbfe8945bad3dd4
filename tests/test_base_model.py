"""The shipped base model: integrity, architecture, and well-formed output (accuracy is in BUILD.json)."""

import json

import pytest

from transformers import PreTrainedTokenizerFast

from thinklean.models.tiny import BASE_MODEL_DIR, load_pretrained
from thinklean.train.base_model import sha256_file

pytestmark = pytest.mark.skipif(not (BASE_MODEL_DIR / "BUILD.json").is_file(), reason="base model not built")


def test_shipped_weights_match_the_recorded_checksum():
    build = json.loads((BASE_MODEL_DIR / "BUILD.json").read_text())
    assert sha256_file(BASE_MODEL_DIR / "model.safetensors") == build["sha256"]
    assert build["command"] == "thinklean demo --rebuild"


def test_base_model_is_the_documented_tiny_qwen2():
    model, tokenizer = load_pretrained()
    config = model.config
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (256, 4, 4, 1024)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)


def test_base_model_writes_well_formed_finished_answers():
    from thinklean.eval.evaluate import EvalConfig, arith_examples, evaluate

    model, tokenizer = load_pretrained()
    summary = evaluate(model, tokenizer, arith_examples(36, "test", seed=1), EvalConfig(max_new_tokens=320))
    assert summary["format_error_rate"] <= 0.1
    assert summary["truncated_rate"] == 0.0
