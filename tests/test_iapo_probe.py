"""IAPO early-exit probe: the chunked KV-cache probe equals one forward per prefix; information gain."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from thinklean.methods.iapo_probe import answer_entropies, discounted_gain, information_gain, naive_answer_entropies
from thinklean.rollout.engine import SamplingConfig, generate

EXIT_STRING = "</think> \\boxed{"  # four tokens with the embedded tokenizer
PROMPT_LENGTHS = [6, 3, 1, 4]
RESPONSE_LENGTHS = [9, 5, 1, 7]


def _sharpen(model, seed: int):
    """Re-draw the weights larger than the default init so entropies differ clearly between
    prefixes (a freshly initialised model is near-uniform and would hide position/mask bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.15)
    return model


def _padded_batch(seed: int = 0):
    """Left-padded prompts and right-padded responses of different lengths, RolloutBatch layout.

    Padding slots hold random token ids, not the pad id: attending to a pad key would change the
    result.
    """
    generator = torch.Generator().manual_seed(seed)
    rows, prompt_width, response_width = len(PROMPT_LENGTHS), max(PROMPT_LENGTHS), max(RESPONSE_LENGTHS)
    prompt_ids = torch.randint(10, 350, (rows, prompt_width), generator=generator)
    response_ids = torch.randint(10, 350, (rows, response_width), generator=generator)
    prompt_mask = torch.zeros(rows, prompt_width, dtype=torch.long)
    response_mask = torch.zeros(rows, response_width, dtype=torch.long)
    for row, (p, r) in enumerate(zip(PROMPT_LENGTHS, RESPONSE_LENGTHS)):
        prompt_mask[row, prompt_width - p:] = 1
        response_mask[row, :r] = 1
    return prompt_ids, prompt_mask, response_ids, response_mask


@pytest.fixture()
def exit_ids(tiny_tokenizer):
    ids = tiny_tokenizer(EXIT_STRING, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # the multi-token case is the one the block mask must get right
    return ids


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("seed", [1, 2])
def test_chunked_probe_equals_one_forward_per_prefix(tiny_model, exit_ids, attention, seed):
    model = _sharpen(tiny_model, seed)
    model.set_attn_implementation(attention)
    batch = _padded_batch(seed)
    expected = naive_answer_entropies(model, *batch, exit_ids)
    valid = batch[3].bool()
    assert expected[valid].std() > 0.02  # the model is not uniform: a wrong prefix would show
    for chunk_size in (1, 3, 7, 50):  # 50 > T: the whole response in one chunk
        got = answer_entropies(model, *batch, exit_ids, chunk_size=chunk_size)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("chunk_size", [1, 2, 16])
def test_strided_probe_is_exact_at_its_anchors_and_linear_between(tiny_model, exit_ids, chunk_size):
    model = _sharpen(tiny_model, 7)
    batch = _padded_batch(7)
    naive = naive_answer_entropies(model, *batch, exit_ids)
    got = answer_entropies(model, *batch, exit_ids, chunk_size=chunk_size, stride=3)
    # Stride 3 probes 0, 3, 6, ... and each row's last position (RESPONSE_LENGTHS = 9, 5, 1, 7).
    anchors = {0: [0, 3, 6, 8], 1: [0, 3, 4], 2: [0], 3: [0, 3, 6]}
    for row, columns in anchors.items():
        n = RESPONSE_LENGTHS[row]
        expected = np.interp(np.arange(n), columns, naive[row, columns].numpy())
        torch.testing.assert_close(got[row, :n], torch.tensor(expected, dtype=torch.float32), atol=1e-4, rtol=0)
        assert torch.equal(got[row, n:], torch.zeros(got.shape[1] - n))
    # Row 0, position 1 by hand: a third of the way from H_0 to H_3.
    assert abs(float(got[0, 1]) - float(naive[0, 0] + (naive[0, 3] - naive[0, 0]) / 3)) < 1e-4
    # A stride past every length probes only the first and last position of each row.
    wide = answer_entropies(model, *batch, exit_ids, chunk_size=chunk_size, stride=50)
    torch.testing.assert_close(wide[:, 0], naive[:, 0], atol=1e-4, rtol=0)
    ends = torch.tensor(RESPONSE_LENGTHS) - 1
    torch.testing.assert_close(wide[torch.arange(4), ends], naive[torch.arange(4), ends], atol=1e-4, rtol=0)


@pytest.mark.parametrize("stride", [1, 4])
def test_token_entropy_from_the_probe_forward_matches_a_plain_forward(tiny_model, exit_ids, stride):
    model = _sharpen(tiny_model, 8)
    batch = _padded_batch(8)
    prompt_ids, prompt_mask, response_ids, response_mask = batch
    answer, own = answer_entropies(model, *batch, exit_ids, chunk_size=3, temperature=0.8, stride=stride,
                                   max_batch_tokens=60, with_token_entropy=True)
    torch.testing.assert_close(answer, answer_entropies(model, *batch, exit_ids, chunk_size=3, temperature=0.8,
                                                        stride=stride, max_batch_tokens=60), atol=1e-5, rtol=0)
    model.eval()
    for row, (p, r) in enumerate(zip(PROMPT_LENGTHS, RESPONSE_LENGTHS)):
        sequence = torch.cat([prompt_ids[row][prompt_mask[row].bool()], response_ids[row, :r]])[None]
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=sequence).logits[0, p - 1: p + r - 1] / 0.8, -1)
        expected = -(probs * probs.log()).sum(-1)  # H of the distribution that produced o_0 .. o_{r-1}
        torch.testing.assert_close(own[row, :r], expected, atol=1e-4, rtol=0)
        assert torch.equal(own[row, r:], torch.zeros(own.shape[1] - r))


def test_temperature_scales_the_probed_distribution(tiny_model, exit_ids):
    model = _sharpen(tiny_model, 3)
    batch = _padded_batch(3)
    expected = naive_answer_entropies(model, *batch, exit_ids, temperature=0.7)
    got = answer_entropies(model, *batch, exit_ids, chunk_size=4, temperature=0.7)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert not torch.allclose(got, answer_entropies(model, *batch, exit_ids, chunk_size=4), atol=1e-3)


@pytest.mark.parametrize("max_batch_tokens", [1, 60, 2048])  # every row alone; length-sorted pairs; the default
def test_max_batch_tokens_splits_rows_without_changing_result(tiny_model, exit_ids, max_batch_tokens):
    model = _sharpen(tiny_model, 4)
    batch = _padded_batch(4)
    whole = answer_entropies(model, *batch, exit_ids, chunk_size=3, max_batch_tokens=None)
    split = answer_entropies(model, *batch, exit_ids, chunk_size=3, max_batch_tokens=max_batch_tokens)
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=0)


def test_probe_on_sampled_rollout_matches_naive(tiny_model, tiny_tokenizer, exit_ids):
    model = _sharpen(tiny_model, 5)
    prompts = ["3 + 4 =\n", "12 * 7 - 5 =\n", "9 =\n"]
    # Stop strings that random text hits early, so the responses end at different lengths.
    config = SamplingConfig(max_new_tokens=8, stop_strings=("e", "a"))
    batch = generate(model, tiny_tokenizer, prompts, num_samples=2, config=config,
                     generator=torch.Generator().manual_seed(0))
    assert len(set(batch.lengths.tolist())) > 1 and len(set(batch.prompt_mask.sum(1).tolist())) > 1
    tensors = (batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    expected = naive_answer_entropies(model, *tensors, exit_ids)
    torch.testing.assert_close(answer_entropies(model, *tensors, exit_ids, chunk_size=4), expected,
                               atol=1e-4, rtol=0)


def test_padding_positions_are_zero_and_training_flag_is_restored(tiny_model, exit_ids):
    model = _sharpen(tiny_model, 6)
    batch = _padded_batch(6)
    model.train()
    entropy = answer_entropies(model, *batch, exit_ids, chunk_size=2)
    assert model.training
    padding = ~batch[3].bool()
    assert torch.equal(entropy[padding], torch.zeros(int(padding.sum())))
    assert bool((entropy[~padding] > 0).all())
    model.eval()
    naive_answer_entropies(model, *batch, exit_ids)
    answer_entropies(model, *batch, exit_ids)
    assert not model.training


def test_probe_rejects_bad_arguments(tiny_model, exit_ids):
    batch = _padded_batch()
    with pytest.raises(ValueError, match="exit_ids is empty"):
        answer_entropies(tiny_model, *batch, [])
    with pytest.raises(ValueError, match="chunk_size"):
        answer_entropies(tiny_model, *batch, exit_ids, chunk_size=0)
    with pytest.raises(ValueError, match="stride"):
        answer_entropies(tiny_model, *batch, exit_ids, stride=0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        answer_entropies(tiny_model, batch[0], batch[1], batch[2], batch[3][:, :-1], exit_ids)


def test_information_gain_by_hand():
    # Row 0: H = [3, 2, 2, 0.5], full length.
    #   g = [3-2, 2-2, 2-0.5, 0.5-0.5]                       = [1, 0, 1.5, 0]
    #   s = [(3+3)/2-2, (3+2)/2-2, (2+2)/2-0.5, (2+0.5)/2-0.5] = [1, 0.5, 1.5, 0.75]
    # Row 1: length 2, H = [4, 1] (+ junk in the padding): g = [3, 0]; s = [(4+4)/2-1, (4+1)/2-1] = [3, 1.5]
    # Row 2: length 1: no neighbour on either side, g = s = 0.
    # Row 3: empty.
    entropy = torch.tensor([[3.0, 2.0, 2.0, 0.5], [4.0, 1.0, 7.0, 9.0], [2.5, 8.0, 8.0, 8.0], [5.0, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    gain = information_gain(entropy, mask, smooth=False)
    smoothed = information_gain(entropy, mask)
    torch.testing.assert_close(
        gain, torch.tensor([[1.0, 0.0, 1.5, 0.0], [3.0, 0, 0, 0], [0.0, 0, 0, 0], [0.0, 0, 0, 0]])
    )
    torch.testing.assert_close(
        smoothed, torch.tensor([[1.0, 0.5, 1.5, 0.75], [3.0, 1.5, 0, 0], [0.0, 0, 0, 0], [0.0, 0, 0, 0]])
    )


def test_information_gain_rejects_left_padded_or_mismatched_masks():
    with pytest.raises(ValueError, match="right-padded"):
        information_gain(torch.ones(1, 3), torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        information_gain(torch.ones(2, 3), torch.ones(2, 4))


def test_discounted_gain_by_hand():
    # Row 0: gain [1, 0, 2], discount 0.5: c_2 = 2, c_1 = 0 + 0.5 * 2 = 1, c_0 = 1 + 0.5 * 1 = 1.5.
    # Row 1: length 2 (junk 9 in the padding must not leak): gain [4, -2]: c = [4 - 1, -2] = [3, -2].
    gain = torch.tensor([[1.0, 0.0, 2.0], [4.0, -2.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    torch.testing.assert_close(discounted_gain(gain, mask, 0.5), torch.tensor([[1.5, 1.0, 2.0], [3.0, -2.0, 0.0]]))
    torch.testing.assert_close(discounted_gain(gain, mask, 0.0), torch.tensor([[1.0, 0.0, 2.0], [4.0, -2.0, 0.0]]))
    with pytest.raises(ValueError, match=r"discount must be in \[0, 1\)"):
        discounted_gain(gain, mask, 1.0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        discounted_gain(gain, mask[:, :2], 0.5)
