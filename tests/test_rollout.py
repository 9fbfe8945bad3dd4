"""Rollout engine: log-probs, padding, forced prefixes, stopping, determinism."""

from __future__ import annotations

import math
import random

import pytest
import torch

from thinklean.data import formats
from thinklean.rollout import RolloutBatch, SamplingConfig, generate

# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny BPE tokenizer and a random tiny Qwen2 (no downloads).
# ---------------------------------------------------------------------------------------------


def _synthetic_corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    ops = [("Add", "+", lambda a, b: a + b), ("Subtract", "-", lambda a, b: a - b),
           ("Multiply by", "*", lambda a, b: a * b)]
    corpus = []
    for _ in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        word, sym, fn = rng.choice(ops)
        question = f"Start with {a}. {word} {b}. What is the result?\n"
        if rng.random() < 0.5:
            response = formats.think_response(f"{a} {sym} {b} = {fn(a, b)}.", fn(a, b))
        else:
            response = formats.no_think_response(fn(a, b))
        corpus.append(question + response + formats.EOS)
    return corpus


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=formats.SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(_synthetic_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=formats.PAD, eos_token=formats.EOS)


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=128, tie_word_embeddings=True,
        max_position_embeddings=512,
    )
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    return Qwen2ForCausalLM(config).eval()


PROMPTS = [
    formats.format_prompt("Start with 7. Add 5. What is the result?"),
    formats.format_prompt("Start with 3. Multiply by 4. Subtract 2. Add 9. Multiply by 2. What is the result?"),
    formats.format_prompt("Start with 1. What is the result?"),
]


def _full_forward_logprobs(model, batch: RolloutBatch, temperature: float) -> torch.Tensor:
    """Reference: score [prompt + response] in ONE uncached forward pass. Returns [B, T]."""
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    P = batch.prompt_ids.shape[1]
    scale = temperature if temperature > 0 else 1.0
    logprobs = torch.log_softmax(logits[:, P - 1:-1] / scale, dim=-1)
    token_logprobs = logprobs.gather(-1, batch.response_ids[..., None]).squeeze(-1)
    return token_logprobs * batch.response_mask


def _bias_eos(model, tokenizer, bias: float):
    """Shift the EOS logit by ``bias`` (a forward hook), to make EOS likely or impossible."""
    eos = tokenizer.eos_token_id

    def hook(module, inputs, output):
        output = output.clone()
        output[..., eos] += bias
        return output

    return model.lm_head.register_forward_hook(hook)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_sampled_logprobs_match_one_full_forward_pass_for_padded_batch(model, tokenizer):
    prefixes = [formats.THINK, formats.NO_THINK, "", f"{formats.THINK} Start with", formats.NO_THINK, ""]
    batch = generate(
        model, tokenizer, PROMPTS, num_samples=2,
        config=SamplingConfig(max_new_tokens=12, temperature=0.7, top_p=0.9),
        forced_prefixes=prefixes, generator=torch.Generator().manual_seed(1),
    )
    # prompts really have different lengths, so left padding is exercised
    assert len(set(batch.prompt_mask.sum(1).tolist())) == 3
    reference = _full_forward_logprobs(model, batch, temperature=0.7)
    assert torch.allclose(batch.logprobs, reference, atol=1e-4)
    assert (batch.logprobs[batch.response_mask == 0] == 0).all()
    assert (batch.logprobs[batch.response_mask == 1] < 0).all()


def test_greedy_logprobs_are_unscaled_log_softmax(model, tokenizer):
    batch = generate(model, tokenizer, PROMPTS, config=SamplingConfig(max_new_tokens=8, temperature=0))
    reference = _full_forward_logprobs(model, batch, temperature=0)
    assert torch.allclose(batch.logprobs, reference, atol=1e-4)


def test_greedy_in_padded_batch_equals_greedy_alone_and_chunking_changes_nothing(model, tokenizer):
    config = SamplingConfig(max_new_tokens=16, temperature=0)
    together = generate(model, tokenizer, PROMPTS, config=config)
    chunked = generate(model, tokenizer, PROMPTS, config=SamplingConfig(max_new_tokens=16, temperature=0, batch_size=2))
    assert chunked.texts == together.texts
    for i, prompt in enumerate(PROMPTS):
        alone = generate(model, tokenizer, [prompt], config=config)
        n = int(alone.lengths[0])
        assert int(together.lengths[i]) == n
        assert together.response_ids[i, :n].tolist() == alone.response_ids[0, :n].tolist()
        assert together.texts[i] == alone.texts[0]
        assert torch.allclose(together.logprobs[i, :n], alone.logprobs[0, :n], atol=1e-4)


def test_forced_prefixes_open_every_sample_with_mask_and_finite_logprobs(model, tokenizer):
    prefixes = [formats.THINK, formats.NO_THINK] * 3  # mixed modes inside one batch and group
    batch = generate(
        model, tokenizer, PROMPTS, num_samples=2, config=SamplingConfig(max_new_tokens=6),
        forced_prefixes=prefixes, generator=torch.Generator().manual_seed(0),
    )
    think_id = tokenizer.convert_tokens_to_ids(formats.THINK)
    no_think_id = tokenizer.convert_tokens_to_ids(formats.NO_THINK)
    assert batch.response_ids[:, 0].tolist() == [think_id, no_think_id] * 3
    assert batch.forced_prefix_lens.tolist() == [1] * 6
    assert (batch.response_mask[:, 0] == 1).all()
    assert torch.isfinite(batch.logprobs[:, 0]).all() and (batch.logprobs[:, 0] < 0).all()
    assert [formats.response_mode(t) for t in batch.texts] == ["think", "no_think"] * 3
    # a multi-token prefix is written verbatim too
    multi = generate(model, tokenizer, PROMPTS[:1], config=SamplingConfig(max_new_tokens=10),
                     forced_prefixes=[f"{formats.THINK} Start with 7"])
    k = int(multi.forced_prefix_lens[0])
    assert k > 2
    assert multi.texts[0].startswith(f"{formats.THINK} Start with 7")
    assert tokenizer.decode(multi.response_ids[0, :k]) == f"{formats.THINK} Start with 7"


def test_forced_prefixes_must_have_one_string_per_sample(model, tokenizer):
    with pytest.raises(ValueError, match="one string per sample"):
        generate(model, tokenizer, PROMPTS, num_samples=2, forced_prefixes=[formats.THINK] * 3)


def test_max_new_tokens_caps_response_including_prefix_and_marks_unfinished(model, tokenizer):
    handle = _bias_eos(model, tokenizer, -1e4)  # EOS impossible: every row must be cut
    try:
        batch = generate(
            model, tokenizer, PROMPTS, num_samples=2, config=SamplingConfig(max_new_tokens=5),
            forced_prefixes=[formats.THINK, ""] * 3, generator=torch.Generator().manual_seed(0),
        )
    finally:
        handle.remove()
    assert batch.response_ids.shape[1] == 5
    assert batch.lengths.tolist() == [5] * 6
    assert not batch.finished.any()


def test_eos_stops_a_sample_and_only_padding_follows(model, tokenizer):
    handle = _bias_eos(model, tokenizer, 4.0)  # EOS likely but not certain
    try:
        batch = generate(
            model, tokenizer, PROMPTS, num_samples=4, config=SamplingConfig(max_new_tokens=8),
            generator=torch.Generator().manual_seed(0),
        )
        # rows leave the cached batch as they finish; the survivors' log-probs must not notice
        assert torch.allclose(batch.logprobs, _full_forward_logprobs(model, batch, 1.0), atol=1e-4)
    finally:
        handle.remove()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert batch.finished.any() and batch.lengths.min() < 8
    for i in range(len(batch.texts)):
        n = int(batch.lengths[i])
        row = batch.response_ids[i].tolist()
        if batch.finished[i]:
            assert row[n - 1] == eos and eos not in row[: n - 1]
        else:
            assert n == 8 and eos not in row[:n]
        assert row[n:] == [pad] * (len(row) - n)
        assert formats.EOS not in batch.texts[i]
        assert batch.texts[i] == tokenizer.decode([t for t in row[:n] if t != eos])


def test_stop_string_ends_the_response_at_the_token_that_completes_it(model, tokenizer):
    config = SamplingConfig(max_new_tokens=20, temperature=0)
    handle = _bias_eos(model, tokenizer, -1e4)
    try:
        free = generate(model, tokenizer, PROMPTS, config=config)
        # pick a stop string the first row really produces: the text of its 4th-6th tokens
        ids = free.response_ids[0].tolist()
        head, stop = tokenizer.decode(ids[:3]), tokenizer.decode(ids[:6])
        stop_string = stop[len(head):]
        assert stop_string
        stopped = generate(model, tokenizer, PROMPTS,
                           config=SamplingConfig(max_new_tokens=20, temperature=0, stop_strings=(stop_string,)))
    finally:
        handle.remove()
    for i in range(len(PROMPTS)):
        ids = free.response_ids[i].tolist()
        # expected stop: the first token whose text completes the stop string
        expected = next((t + 1 for t in range(len(ids)) if stop_string in tokenizer.decode(ids[: t + 1])), 20)
        assert int(stopped.lengths[i]) == expected
        assert stopped.response_ids[i, :expected].tolist() == ids[:expected]
        assert bool(stopped.finished[i]) == (expected < 20 or stop_string in tokenizer.decode(ids))
    assert stopped.finished[0] and stopped.texts[0].endswith(stop_string)
    assert int(stopped.lengths[0]) <= 6


def test_same_seed_gives_same_samples_and_other_seed_differs(model, tokenizer):
    config = SamplingConfig(max_new_tokens=10, temperature=1.0)

    def run(seed):
        return generate(model, tokenizer, PROMPTS, num_samples=3, config=config,
                        generator=torch.Generator().manual_seed(seed))

    a, b, c = run(123), run(123), run(124)
    assert a.texts == b.texts and torch.equal(a.response_ids, b.response_ids)
    assert torch.equal(a.logprobs, b.logprobs)
    assert a.texts != c.texts


def test_tiny_top_p_samples_the_argmax(model, tokenizer):
    greedy = generate(model, tokenizer, PROMPTS, config=SamplingConfig(max_new_tokens=10, temperature=0))
    nucleus = generate(model, tokenizer, PROMPTS, config=SamplingConfig(max_new_tokens=10, temperature=1.0, top_p=1e-6),
                       generator=torch.Generator().manual_seed(5))
    assert nucleus.texts == greedy.texts
    # at temperature 1 the tempered distribution is the model's, so the log-probs agree too
    assert torch.allclose(nucleus.logprobs, greedy.logprobs, atol=1e-5)


def test_masks_lengths_and_group_ids_are_consistent_and_prompt_major(model, tokenizer):
    batch = generate(model, tokenizer, PROMPTS, num_samples=3,
                     config=SamplingConfig(max_new_tokens=7, batch_size=4),
                     forced_prefixes=[formats.THINK] * 9, generator=torch.Generator().manual_seed(0))
    B = 9
    assert batch.group_ids.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batch.response_ids.shape == batch.response_mask.shape == batch.logprobs.shape
    assert batch.response_ids.shape[0] == B and len(batch.texts) == B
    assert torch.equal(batch.lengths, batch.response_mask.sum(1))
    # masks are contiguous: prompt mask is a suffix of ones, response mask a prefix of ones
    T = batch.response_mask.shape[1]
    assert torch.equal(batch.response_mask, (torch.arange(T)[None] < batch.lengths[:, None]).long())
    P = batch.prompt_mask.shape[1]
    prompt_lens = batch.prompt_mask.sum(1)
    assert torch.equal(batch.prompt_mask, (torch.arange(P)[None] >= P - prompt_lens[:, None]).long())
    for i in range(B):
        expected = tokenizer(PROMPTS[i // 3], add_special_tokens=True)["input_ids"]
        assert batch.prompt_ids[i, P - len(expected):].tolist() == expected
        assert (batch.prompt_ids[i, : P - len(expected)] == tokenizer.pad_token_id).all()
    assert batch.lengths.dtype == torch.long and batch.finished.dtype == torch.bool


def test_training_flag_is_restored(model, tokenizer):
    model.train()
    try:
        generate(model, tokenizer, PROMPTS[:1], config=SamplingConfig(max_new_tokens=3))
        assert model.training
        assert all(m.training for m in model.modules())
    finally:
        model.eval()
    generate(model, tokenizer, PROMPTS[:1], config=SamplingConfig(max_new_tokens=3))
    assert not model.training


def test_no_gradients_are_recorded(model, tokenizer):
    batch = generate(model, tokenizer, PROMPTS[:1], config=SamplingConfig(max_new_tokens=3))
    assert not batch.logprobs.requires_grad
    assert math.isfinite(float(batch.logprobs.sum()))


@pytest.mark.parametrize("temperature, eos_bias", [(0.0, 1.1), (1.0, 3.0)])
def test_static_cache_decoding_samples_the_same_tokens_as_the_dynamic_cache(model, tokenizer, monkeypatch, temperature,
                                                                             eos_bias):
    # The fixed-shape path without torch.compile (compiling takes a minute on a CPU; the compiled
    # path's identity on the shipped model is in docs/scaling.md). EOS is made likely so rows
    # finish at different steps: slots idle, then the cache shrinks to fewer slots.
    from thinklean.rollout import engine

    monkeypatch.setattr(engine, "_compiled", lambda model: model)
    shrinks = []
    select = engine._StaticDecode._select_slots
    monkeypatch.setattr(engine._StaticDecode, "_select_slots", lambda self, index: (shrinks.append(index.numel()),
                                                                                   select(self, index)))
    handle = _bias_eos(model, tokenizer, eos_bias)
    try:
        def run(decode):
            config = SamplingConfig(max_new_tokens=24, temperature=temperature, decode=decode)
            return generate(model, tokenizer, PROMPTS, num_samples=3, config=config,
                            forced_prefixes=["<think>", "", ""] * 3, generator=torch.Generator().manual_seed(3))

        dynamic, static = run("dynamic"), run("static")
    finally:
        handle.remove()
    assert shrinks[0] == 9 and any(n < 9 for n in shrinks[1:])  # prefill of 4 distinct contexts spread to 9 slots
    assert len(set(dynamic.lengths.tolist())) > 1
    assert torch.equal(static.response_ids, dynamic.response_ids) and static.texts == dynamic.texts
    assert torch.equal(static.finished, dynamic.finished)
    assert torch.allclose(static.logprobs, dynamic.logprobs, atol=1e-5)


def test_static_decoding_falls_back_to_the_dynamic_cache_for_an_undeclared_model(model, tokenizer, monkeypatch):
    from thinklean.rollout import engine

    monkeypatch.setattr(type(model), "_can_compile_fullgraph", False)
    assert "does not declare" in engine.static_decode_problem(model)
    monkeypatch.setattr(engine, "_StaticDecode", None)  # would fail if it were used
    config = SamplingConfig(max_new_tokens=5, temperature=0, decode="static")
    assert generate(model, tokenizer, PROMPTS, config=config).texts == generate(
        model, tokenizer, PROMPTS, config=SamplingConfig(max_new_tokens=5, temperature=0)).texts
    with pytest.raises(ValueError, match="decode must be 'dynamic' or 'static'"):
        generate(model, tokenizer, PROMPTS, config=SamplingConfig(decode="compiled"))
