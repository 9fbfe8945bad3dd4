"""The real vLLM engine on a CUDA GPU (skipped without CUDA or without ``pip install 'thinklean[gpu]'``).

Run on a GPU machine: ``python -m pytest tests/gpu -m gpu``.
"""

from __future__ import annotations

import copy

import pytest
import torch

from thinklean.data.formats import format_prompt
from thinklean.eval.evaluate import arith_examples
from thinklean.models.tiny import load_pretrained
from thinklean.rollout import SamplingConfig, generate
from thinklean.rollout.engine import position_ids_from_mask
from thinklean.rollout.vllm_engine import VLLMRollout, vllm_installed
from thinklean.runlog import read_metrics
from thinklean.train.rl import RLConfig, RLTrainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(not vllm_installed(), reason="needs vLLM: pip install 'thinklean[gpu]'"),
]


@pytest.fixture(scope="module")
def engine_and_model():
    """The shipped base model on the GPU (float32) and a vLLM engine holding its weights."""
    model, tokenizer = load_pretrained("base")
    model.cuda()
    return VLLMRollout.launch(model, tokenizer, gpu_memory_utilization=0.2), model, tokenizer


def _prompts(tokenizer, n: int = 16) -> list[str]:
    return [format_prompt(e.prompt, tokenizer) for e in arith_examples(n, "test", 0)]


def _greedy_agreement(engine, model, tokenizer) -> float:
    """Fraction of prompts whose greedy response ids (after a forced ``<think>``) are the same."""
    config = SamplingConfig(max_new_tokens=48, temperature=0.0)
    prompts = _prompts(tokenizer)
    ours = engine.generate(prompts, 1, config, ["<think>"] * len(prompts))
    reference = generate(model, tokenizer, prompts, 1, config, ["<think>"] * len(prompts))
    same = [a[: int(n)].tolist() == b[: int(m)].tolist() for a, n, b, m in
            zip(ours.response_ids, ours.lengths, reference.response_ids, reference.lengths)]
    return sum(same) / len(prompts)


def _logprob_gap(engine, model, tokenizer) -> float:
    """Largest |vLLM log-prob - ``model``'s log-prob| over tokens the engine sampled at temperature 1."""
    batch = engine.generate(_prompts(tokenizer, 8), 2, SamplingConfig(max_new_tokens=24, temperature=1.0), seed=0)
    device = next(model.parameters()).device
    ids = torch.cat([batch.prompt_ids, batch.response_ids], 1).to(device)
    mask = torch.cat([batch.prompt_mask, batch.response_mask], 1).to(device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits.float()
    T = batch.response_ids.shape[1]
    ours = torch.log_softmax(logits[:, -T - 1 : -1], -1).gather(-1, ids[:, -T:, None])[..., 0].cpu()
    return float(((ours - batch.logprobs).abs() * batch.response_mask).max())


def test_greedy_vllm_matches_the_hf_engine(engine_and_model):
    engine, model, tokenizer = engine_and_model
    # float32 in both; different kernels may flip a near-tie argmax now and then
    assert _greedy_agreement(engine, model, tokenizer) >= 0.9
    assert _logprob_gap(engine, model, tokenizer) < 1e-2


def test_sync_weights_makes_vllm_follow_an_updated_policy(engine_and_model):
    engine, model, tokenizer = engine_and_model
    updated = copy.deepcopy(model)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    assert _logprob_gap(engine, updated, tokenizer) > 0.05  # the engine still has the old weights
    engine.sync_weights(updated)
    assert _logprob_gap(engine, updated, tokenizer) < 1e-2
    engine.sync_weights(model)


def test_grpo_trains_with_vllm_rollouts(tmp_path, engine_and_model):
    """Runs last: it reuses the module's engine (vLLM's external_launcher initialises
    torch.distributed once per process, so a second engine would need a fresh process)."""
    engine, model, tokenizer = engine_and_model
    config = RLConfig(steps=3, prompts_per_step=4, samples_per_prompt=4, max_new_tokens=16, save_every=0,
                      rollout_backend="vllm")
    trainer = RLTrainer(copy.deepcopy(model), tokenizer, config, arith_examples(32, "train", 0), tmp_path)
    trainer._vllm = engine  # holds the same weights as the copy
    trainer.train(show_progress=False)
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert len(metrics) == 3 and all(m["rollout_tokens_per_s"] > 0 for m in metrics)
    assert trainer._vllm_step == 2  # synced before the rollouts of steps 2 and 3
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_cli_eval_with_vllm_agrees_with_hf(tmp_path):
    """`thinklean eval --rollout vllm` in a fresh process (one vLLM engine per process) serves the
    shipped base model's directory; greedy texts agree with the hf engine's on at least 90% of problems."""
    import json
    import subprocess
    import sys

    texts = {}
    for rollout in ("hf", "vllm"):
        out = tmp_path / rollout
        done = subprocess.run([sys.executable, "-m", "thinklean.cli", "eval", "--model", "base", "--n", "16",
                               "--max-new-tokens", "64", "--rollout", rollout, "--gpu-memory-utilization", "0.2",
                               "--output", str(out)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        texts[rollout] = [r["text"] for r in json.loads((out / "eval.json").read_text())["responses"]]
    assert sum(a == b for a, b in zip(texts["hf"], texts["vllm"])) >= 0.9 * len(texts["hf"])
