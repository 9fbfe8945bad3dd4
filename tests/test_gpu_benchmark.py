"""benchmarks/gpu.py: its FLOP count by hand, and a CPU smoke run of the whole script."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def gpu_benchmark():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import gpu

        yield gpu
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_training_flops_by_hand(gpu_benchmark):
    # 3 layers, 2 heads of dim 4, 100 matmul weights; sequences of 2 and 3 tokens:
    # 6*100*2 + 12*3*2*4 * (2*3/2) = 1200 + 864; 6*100*3 + 288 * (3*4/2) = 1800 + 1728
    config = SimpleNamespace(hidden_size=8, num_attention_heads=2, num_hidden_layers=3)
    assert gpu_benchmark.training_flops(config, 100, [2, 3]) == 1200 + 864 + 1800 + 1728


def test_matmul_parameters_count_the_tied_unembedding_once(gpu_benchmark):
    model, _ = gpu_benchmark.build("tiny", torch.float32)
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    attention = c.hidden_size * head_dim * (c.num_attention_heads + 2 * c.num_key_value_heads) \
        + c.num_attention_heads * head_dim * c.hidden_size
    mlp = 3 * c.hidden_size * c.intermediate_size
    expected = c.num_hidden_layers * (attention + mlp) + c.vocab_size * c.hidden_size
    assert gpu_benchmark.matmul_parameters(model) == expected


def test_cpu_smoke_run_writes_the_table_json(gpu_benchmark, tmp_path, capsys, monkeypatch):
    from thinklean.rollout import engine

    monkeypatch.setattr(engine, "_compiled", lambda model: model)  # hf-static uncompiled: seconds, not a minute
    out = tmp_path / "gpu.json"
    assert gpu_benchmark.main(["--size", "tiny", "--device", "cpu", "--prompts", "2", "--samples", "2",
                               "--max-new-tokens", "6", "--steps", "1", "--warmup", "0", "--no-vllm",
                               "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["gpu"] is None and result["vllm"] == "skipped (--no-vllm)"
    hf = result["backends"]["hf"]
    assert hf["rollout_tokens_per_s"] > 0 and hf["update_tokens_per_s"] > 0 and hf["update_mfu"] is None
    assert 0 < hf["response_tokens"] <= 2 * 2 * 6
    static = result["backends"]["hf-static"]
    assert static["rollout_tokens_per_s"] > 0 and static["response_tokens"] == hf["response_tokens"]
    assert "rollout tok/s" in capsys.readouterr().out
