import pytest
import torch

from thinklean.data.formats import SPECIAL_TOKENS
from thinklean.models.tiny import load_model, load_pretrained, save_pretrained


def test_tokenizer_round_trip_keeps_tags_and_digits(tiny_tokenizer):
    text = "Start with 12. Add 8.\n<think> 12 + 8 = 20. </think> \\boxed{20}<|endoftext|>"
    ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
    assert tiny_tokenizer.decode(ids) == text
    pieces = [tiny_tokenizer.decode([i]) for i in ids]
    assert "<think>" in pieces and "</think>" in pieces and "<|endoftext|>" in pieces
    assert "1" in pieces and "2" in pieces and "12" not in pieces  # digits are single tokens


def test_every_tag_is_one_special_token(tiny_tokenizer):
    for tag in SPECIAL_TOKENS:
        assert len(tiny_tokenizer(tag, add_special_tokens=False).input_ids) == 1, tag
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id


def test_save_and_load_round_trip_is_bit_identical(tmp_path, tiny_model, tiny_tokenizer):
    save_pretrained(tiny_model, tiny_tokenizer, tmp_path / "m")
    model, tokenizer = load_pretrained(tmp_path / "m")
    for (name, a), (_, b) in zip(tiny_model.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), name
    assert tokenizer("7 + 5").input_ids == tiny_tokenizer("7 + 5").input_ids


def test_loading_refuses_directories_without_safetensors(tmp_path, tiny_model, tiny_tokenizer):
    save_pretrained(tiny_model, tiny_tokenizer, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model(tmp_path / "m")
