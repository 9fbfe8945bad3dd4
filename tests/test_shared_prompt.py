"""Scoring responses on a shared prompt KV cache equals scoring full prompt + response rows."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from thinklean.rollout.engine import position_ids_from_mask
from thinklean.train.shared_prompt import shared_prompt_forward


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_response_logits_on_the_shared_cache_equal_full_rows(arch, tiny_model):
    model = (tiny_model if arch == "qwen2" else _llama()).eval()
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, V, (2, 5), generator=g)
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])  # first prompt left-padded
    prompts = prompts * prompt_mask
    index = torch.tensor([1, 0, 1])  # three samples: prompts 1, 0, 1
    responses = torch.randint(3, V, (3, 4), generator=g)
    response_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    responses = responses * response_mask

    shared = shared_prompt_forward(model, prompts, prompt_mask)
    logits = shared.response_logits(model, index, responses, response_mask)

    ids = torch.cat([prompts[index], responses], 1)
    mask = torch.cat([prompt_mask[index], response_mask], 1)
    full = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits[:, 4:-1]
    assert logits.shape == (3, 4, V)
    real = response_mask.bool()
    torch.testing.assert_close(logits[real], full[real], atol=1e-5, rtol=1e-5)
