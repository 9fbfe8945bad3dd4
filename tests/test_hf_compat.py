"""Argument names read off the model's forward, for old and new transformers releases."""

from types import SimpleNamespace

import torch

from thinklean.models.hf_compat import cache_argument, logits_to_keep_argument, output_cache


class NewNames(torch.nn.Module):
    def forward(self, input_ids=None, cache=None, logits_to_keep=0):
        return input_ids


class OldNames(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None, num_logits_to_keep=0):
        return input_ids


class NoLimit(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None):
        return input_ids


def test_names_follow_the_forward_signature():
    assert (cache_argument(NewNames()), logits_to_keep_argument(NewNames())) == ("cache", "logits_to_keep")
    assert (cache_argument(OldNames()), logits_to_keep_argument(OldNames())) == (
        "past_key_values", "num_logits_to_keep")
    assert logits_to_keep_argument(NoLimit()) is None


def test_a_wrapper_is_read_through_its_module():
    wrapper = SimpleNamespace(module=NewNames(), forward=lambda *args, **kwargs: None)  # DDP-like
    assert cache_argument(wrapper) == "cache"


def test_output_cache_reads_either_field():
    marker = object()
    assert output_cache(SimpleNamespace(cache=marker)) is marker
    assert output_cache(SimpleNamespace(past_key_values=marker)) is marker
    assert output_cache(SimpleNamespace(cache=None, past_key_values=marker)) is marker
