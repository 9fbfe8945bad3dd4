"""The trainer and the HF rollout engine on a CUDA GPU (skipped without CUDA; no vLLM needed).

Run on a GPU machine: ``python -m pytest tests/gpu``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from thinklean.eval.evaluate import arith_examples
from thinklean.models.tiny import build_model, load_pretrained
from thinklean.runlog import read_metrics
from thinklean.train.rl import RLConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_grpo_steps_on_cuda_and_the_saved_model_reloads(digit_trainer, tmp_path, tiny_tokenizer):
    model = build_model(tiny_tokenizer, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=4, intermediate_size=128)
    before = copy.deepcopy(model)
    config = RLConfig(steps=2, prompts_per_step=4, samples_per_prompt=4, max_new_tokens=16, lr=1e-3, save_every=0)
    trainer = digit_trainer(model, tiny_tokenizer, config, arith_examples(32, "train", 0), tmp_path)
    trainer.train(show_progress=False)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    assert next(trained.parameters()).is_cuda
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2
    assert any(not torch.equal(a, b.cpu()) for a, b in zip(before.parameters(), trained.parameters()))
    reloaded, _ = load_pretrained(tmp_path / "model")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, trained.cpu()(ids).logits)


def test_eval_and_analyze_run_on_cuda(tmp_path, tiny_model_dir):
    from thinklean.cli import main

    for command in ("eval", "analyze"):
        out = tmp_path / command
        assert main([command, "--model", str(tiny_model_dir), "--n", "2", "--max-new-tokens", "8", "--device", "cuda",
                     "--output", str(out)]) == 0
    assert (tmp_path / "eval" / "eval.json").is_file() and (tmp_path / "analyze" / "analysis.json").is_file()
