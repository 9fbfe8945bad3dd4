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
