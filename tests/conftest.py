"""Shared fixtures: a small embedded tokenizer and tiny random Qwen2 models (no downloads)."""

from __future__ import annotations

import os

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from thinklean.data.arith import tokenizer_corpus
from thinklean.models.tiny import build_model, build_tokenizer, save_pretrained



def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The embedded BPE trained on a small corpus (fast to build; same code path as the real one)."""
    return build_tokenizer(corpus=tokenizer_corpus(n=300))


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    """A fresh 2-layer, hidden-64 Qwen2 with the embedded tokenizer's vocabulary."""
    return build_model(tiny_tokenizer, seed=0, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, intermediate_size=128)


@pytest.fixture()
def tiny_model_dir(tmp_path, tiny_model, tiny_tokenizer):
    """``tiny_model`` saved as a plain HF directory (safetensors + tokenizer)."""
    path = tmp_path / "tiny-model"
    save_pretrained(tiny_model, tiny_tokenizer, path)
    return path


def random_projector(model: torch.nn.Module):
    """A Reasoning Projector for ``model`` with N(0, 0.12) weights. Copies of a freshly
    initialised MLP (std 0.02) shrink a hidden state to ~1e-8 over three blocks, so latents would
    barely matter; these weights give vectors of embedding size."""
    from thinklean.models.projector import ReasoningProjector

    projector = ReasoningProjector.from_model(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in projector.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.12)
    return projector


@pytest.fixture()
def make_projector():
    """:func:`random_projector`, for tests that build their own model."""
    return random_projector


@pytest.fixture()
def projector(tiny_model):
    """:func:`random_projector` for ``tiny_model``."""
    return random_projector(tiny_model)



@pytest.fixture(scope="session")
def digit_trainer():
    """An ``RLTrainer`` subclass whose reward is the fraction of response tokens that are digits: it
    varies within a group even for a random model, so every step has a gradient."""
    from thinklean.train.rl import RLTrainer

    class DigitTrainer(RLTrainer):
        def compute_rewards(self, batch, examples, correct):
            digits = torch.tensor(self.tokenizer.convert_tokens_to_ids(list("0123456789")))
            hits = (torch.isin(batch.response_ids, digits) & batch.response_mask.bool()).sum(1).float()
            return hits / batch.lengths.clamp(min=1).float(), {}

    return DigitTrainer
