"""LiteReason latent decoding: cached rollout == recomputation, layout of the batch, training forward."""

from __future__ import annotations

import pytest
import torch

from thinklean.data import formats
from thinklean.rollout.engine import SamplingConfig, generate
from thinklean.rollout.latent import LatentRolloutBatch, generate_latent, latent_forward

PROMPTS = [
    formats.format_prompt("Start with 7. Add 5. What is the result?"),
    formats.format_prompt("Start with 3. Multiply by 4. Subtract 2. What is the result?"),
]
ONE_SEGMENT = "<think> <implicit_thought>2</implicit_thought>"  # 5 tokens: <think> Ġ <it> 2 </it>
# 11 tokens: <think> Ġ <it> 3 </it> Ġ 4 Ġ <it> 1 </it>; the second segment is closed by a token
# forced after the first segment's latent steps, inside the decode loop.
TWO_SEGMENTS = "<think> <implicit_thought>3</implicit_thought> 4 <implicit_thought>1</implicit_thought>"


def _bias_logits(model, tokenizer, biases: dict[str, float]):
    """Add a constant to some tokens' logits (a crafted model); returns the hook handle."""
    bias = torch.zeros(model.config.vocab_size)
    for token, value in biases.items():
        bias[tokenizer.convert_tokens_to_ids(token)] = value
    return model.lm_head.register_forward_hook(lambda module, args, out: out + bias.to(out.dtype))


def _reference(model, projector, prompt: list[int], response: list[int], segments) -> tuple[torch.Tensor, torch.Tensor]:
    """From scratch, one row, no cache, no padding: ``[len(response), V]`` logits scoring each
    token and the ``[latent steps, d]`` latent input embeddings.

    Every latent step re-runs the whole sequence so far as ``inputs_embeds``.
    """
    embed = model.get_input_embeddings()
    steps_after = dict(segments)
    with torch.no_grad():
        embeds = embed(torch.tensor(prompt))
        scoring_rows, latents = [], []
        for t, token in enumerate(response):
            scoring_rows.append(embeds.shape[0] - 1)
            embeds = torch.cat([embeds, embed(torch.tensor([token]))])
            for _ in range(steps_after.get(t + 1, 0)):
                hidden = model(inputs_embeds=embeds[None], output_hidden_states=True).hidden_states[-1][0, -1]
                latents.append(projector(hidden))
                embeds = torch.cat([embeds, latents[-1][None]])
        logits = model(inputs_embeds=embeds[None]).logits[0]
    return logits[scoring_rows].float(), torch.stack(latents) if latents else embeds[:0]


def _reference_logits(model, projector, prompt: list[int], response: list[int], segments) -> torch.Tensor:
    return _reference(model, projector, prompt, response, segments)[0]


def _row(batch: LatentRolloutBatch, i: int) -> tuple[list[int], list[int]]:
    prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist()
    return prompt, batch.response_ids[i, : batch.lengths[i]].tolist()


def _gathered_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, ids[..., None]).squeeze(-1)


def test_cached_latent_rollout_matches_recomputation_from_scratch(tiny_model, tiny_tokenizer, projector):
    config = SamplingConfig(max_new_tokens=14, temperature=1.0)
    batch = generate_latent(tiny_model, tiny_tokenizer, projector, PROMPTS, 1, config,
                            generator=torch.Generator().manual_seed(0), forced_prefixes=[ONE_SEGMENT, TWO_SEGMENTS])
    assert batch.latent_segments == [[(5, 2)], [(5, 3), (11, 1)]]
    assert batch.latent_steps.tolist() == [2, 4]

    forward = latent_forward(tiny_model, projector, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                             batch.response_mask, batch.latent_segments)
    replayed = latent_forward(tiny_model, projector, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                              batch.response_mask, batch.latent_segments, latent_inputs=batch.latent_inputs)
    for i in range(2):
        prompt, response = _row(batch, i)
        reference, latents = _reference(tiny_model, projector, prompt, response, batch.latent_segments[i])
        # The rollout recorded the embeddings its latent steps were fed...
        assert latents.shape == (batch.latent_steps[i], 64)
        torch.testing.assert_close(batch.latent_inputs[i], latents, atol=1e-4, rtol=0)
        # ...and feeding them back in one call scores like the recomputation.
        torch.testing.assert_close(replayed.logits[i, : len(response)].float(), reference, atol=1e-4, rtol=0)
        # The rollout (KV cache, one latent per step) scored every token like the recomputation...
        expected = _gathered_logprobs(reference, torch.tensor(response), 1.0)
        torch.testing.assert_close(batch.logprobs[i, : len(response)], expected, atol=1e-4, rtol=0)
        # ...and the training forward gives the same full next-token logits, including the
        # logits right after each segment's last latent step.
        torch.testing.assert_close(forward.logits[i, : len(response)].float(), reference, atol=1e-4, rtol=0)
        # The latent steps do change what follows them (the check above is not vacuous).
        without_latents = _reference_logits(tiny_model, projector, prompt, response, [])
        assert (without_latents[5] - reference[5]).abs().max() > 1e-2


def test_lengths_and_masks_count_discrete_tokens_only(tiny_model, tiny_tokenizer, projector):
    handle = _bias_logits(tiny_model, tiny_tokenizer, {formats.EOS: -1e4})  # no row stops early
    config = SamplingConfig(max_new_tokens=14, temperature=1.0)
    batch = generate_latent(tiny_model, tiny_tokenizer, projector, PROMPTS, 2, config,
                            generator=torch.Generator().manual_seed(1),
                            forced_prefixes=[ONE_SEGMENT, "<think>", TWO_SEGMENTS, ""])
    handle.remove()
    # Latent steps use no budget: every row holds exactly max_new_tokens discrete tokens.
    assert batch.lengths.tolist() == [14, 14, 14, 14]
    assert batch.response_mask.sum(1).tolist() == [14, 14, 14, 14]
    assert batch.response_ids.shape == (4, 14) and batch.logprobs.shape == (4, 14)
    assert not batch.finished.any()
    assert batch.latent_steps.tolist() == [2, 0, 4, 0]
    # The tags and the number stay in the response as ordinary tokens with log-probs.
    prefix = tiny_tokenizer(ONE_SEGMENT, add_special_tokens=False)["input_ids"]
    assert batch.response_ids[0, :5].tolist() == prefix
    assert batch.texts[0].startswith(ONE_SEGMENT)
    assert (batch.logprobs[0, :5] < 0).all()


def test_a_generated_closing_tag_starts_latent_steps(tiny_model, tiny_tokenizer, projector):
    # Crafted model: the closing tag always wins, so after the forced "<implicit_thought>3" the
    # first generated token closes the segment; later closing tags have no opening tag.
    handle = _bias_logits(tiny_model, tiny_tokenizer, {formats.LATENT_END: 1e3})
    config = SamplingConfig(max_new_tokens=8, temperature=0.0)
    batch = generate_latent(tiny_model, tiny_tokenizer, projector, PROMPTS[:1], 1, config,
                            forced_prefixes=["<think> <implicit_thought>3"])
    end_id = tiny_tokenizer.convert_tokens_to_ids(formats.LATENT_END)
    assert batch.response_ids[0, 4:].tolist() == [end_id] * 4
    assert batch.latent_segments == [[(5, 3)]]
    assert batch.latent_steps.tolist() == [3]
    forward = latent_forward(tiny_model, projector, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                             batch.response_mask, batch.latent_segments)
    handle.remove()
    torch.testing.assert_close(_gathered_logprobs(forward.logits, batch.response_ids, 1.0), batch.logprobs,
                               atol=1e-4, rtol=0)


def test_a_latent_row_and_a_plain_row_share_a_batch(tiny_model, tiny_tokenizer, projector):
    config = SamplingConfig(max_new_tokens=10, temperature=0.0)
    batch = generate_latent(tiny_model, tiny_tokenizer, projector, PROMPTS, 1, config,
                            forced_prefixes=[ONE_SEGMENT, "<think>"])
    assert batch.latent_segments == [[(5, 2)], []]
    # The plain row decodes exactly as the ordinary engine decodes it alone.
    plain = generate(tiny_model, tiny_tokenizer, PROMPTS[1:], 1, config, forced_prefixes=["<think>"])
    assert batch.response_ids[1, : batch.lengths[1]].tolist() == plain.response_ids[0, : plain.lengths[0]].tolist()
    torch.testing.assert_close(batch.logprobs[1, : batch.lengths[1]], plain.logprobs[0, : plain.lengths[0]],
                               atol=1e-4, rtol=0)
    # The latent row matches the from-scratch recomputation.
    prompt, response = _row(batch, 0)
    reference = _reference_logits(tiny_model, projector, prompt, response, [(5, 2)])
    torch.testing.assert_close(batch.logprobs[0, : len(response)],
                               _gathered_logprobs(reference, torch.tensor(response), 1.0), atol=1e-4, rtol=0)


def _mixed_batch(model, tokenizer, projector) -> LatentRolloutBatch:
    """6 rows over 2 decoding chunks: one or two segments, or none."""
    config = SamplingConfig(max_new_tokens=16, temperature=0.8, top_p=0.9, batch_size=4)
    return generate_latent(model, tokenizer, projector, PROMPTS + [formats.format_prompt("Start with 1.")],
                           2, config, generator=torch.Generator().manual_seed(2),
                           forced_prefixes=[ONE_SEGMENT, "<think>", TWO_SEGMENTS, "", "<think>", ONE_SEGMENT])


@pytest.mark.parametrize("replay", [False, True], ids=["rebuilt", "recorded"])
def test_latent_forward_logprobs_equal_the_rollouts(tiny_model, tiny_tokenizer, projector, replay):
    batch = _mixed_batch(tiny_model, tiny_tokenizer, projector)
    assert [len(s) for s in batch.latent_segments] == [1, 0, 2, 0, 0, 1]
    forward = latent_forward(tiny_model, projector, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                             batch.response_mask, batch.latent_segments,
                             latent_inputs=batch.latent_inputs if replay else None)
    logprobs = _gathered_logprobs(forward.logits, batch.response_ids, 0.8) * batch.response_mask
    torch.testing.assert_close(logprobs, batch.logprobs, atol=1e-4, rtol=0)
    assert forward.hidden.shape == (6, batch.response_ids.shape[1], 64)


def test_recorded_latent_inputs_keep_the_rollouts_state(tiny_model, tiny_tokenizer, projector):
    batch = _mixed_batch(tiny_model, tiny_tokenizer, projector)
    with torch.no_grad():  # the projector changes after the rollout (as a refresh would)
        for p in projector.parameters():
            p.mul_(1.5)

    def logprobs(latent_inputs):
        out = latent_forward(tiny_model, projector, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                             batch.response_mask, batch.latent_segments, latent_inputs=latent_inputs)
        return _gathered_logprobs(out.logits, batch.response_ids, 0.8) * batch.response_mask

    torch.testing.assert_close(logprobs(batch.latent_inputs), batch.logprobs, atol=1e-4, rtol=0)
    assert (logprobs(None) - batch.logprobs).abs().max() > 1e-2  # rebuilt latents are other states


def test_recorded_latent_inputs_give_the_lm_the_same_gradient(tiny_model, tiny_tokenizer, projector):
    batch = _mixed_batch(tiny_model, tiny_tokenizer, projector)

    def gradients(latent_inputs) -> dict[str, torch.Tensor]:
        tiny_model.zero_grad()
        out = latent_forward(tiny_model, projector, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                             batch.response_mask, batch.latent_segments, latent_inputs=latent_inputs)
        (_gathered_logprobs(out.logits, batch.response_ids, 0.8) * batch.response_mask).sum().backward()
        return {name: p.grad.clone() for name, p in tiny_model.named_parameters()}

    rebuilt, recorded = gradients(None), gradients(batch.latent_inputs)
    for name, grad in rebuilt.items():
        torch.testing.assert_close(recorded[name], grad, atol=1e-4, rtol=1e-3, msg=name)
    assert all(p.grad is None for p in projector.parameters())


def test_latent_forward_rejects_recorded_inputs_that_do_not_fit(tiny_model, tiny_tokenizer, projector):
    batch = _mixed_batch(tiny_model, tiny_tokenizer, projector)
    args = (tiny_model, projector, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask,
            batch.latent_segments)
    with pytest.raises(ValueError, match=r"hold \[2, 0, 3, 0, 0, 2\] vectors per row but the segments ask for \[2, 0, 4"):
        latent_forward(*args, latent_inputs=[v[:3] for v in batch.latent_inputs])
    with pytest.raises(ValueError, match="cannot get a gradient"):
        latent_forward(*args, grad_through_projector=True, latent_inputs=batch.latent_inputs)


def test_segment_number_is_parsed_and_clamped(tiny_model, tiny_tokenizer, projector):
    # Crafted model that never writes a tag itself, so only the forced prefixes make segments.
    handle = _bias_logits(tiny_model, tiny_tokenizer, {formats.LATENT: -1e4, formats.LATENT_END: -1e4})
    prefixes = [
        "<implicit_thought>9</implicit_thought>",   # 9 > max_steps = 5
        "<implicit_thought></implicit_thought>",    # no number: 1
        "</implicit_thought>",                      # no opening tag: not a segment
        "<implicit_thought>12</implicit_thought>",  # two digit tokens, clamped
        "<implicit_thought>0</implicit_thought>",   # at least 1
    ]
    batch = generate_latent(tiny_model, tiny_tokenizer, projector, PROMPTS[:1], 5,
                            SamplingConfig(max_new_tokens=6, temperature=0.0), forced_prefixes=prefixes)
    assert batch.latent_segments == [[(3, 5)], [(2, 1)], [], [(4, 5)], [(3, 1)]]
    assert batch.latent_steps.tolist() == [5, 1, 0, 5, 1]
    # A closing tag that uses up the budget ends the row: no latent steps, no segment.
    short = generate_latent(tiny_model, tiny_tokenizer, projector, PROMPTS[:1], 1,
                            SamplingConfig(max_new_tokens=3, temperature=0.0), forced_prefixes=prefixes[:1])
    handle.remove()
    assert short.latent_segments == [[]] and short.latent_steps.tolist() == [0]
    assert short.lengths.tolist() == [3]


def test_projector_gets_gradient_only_when_asked(tiny_model, tiny_tokenizer, projector):
    config = SamplingConfig(max_new_tokens=8, temperature=1.0)
    batch = generate_latent(tiny_model, tiny_tokenizer, projector, PROMPTS, 1, config,
                            generator=torch.Generator().manual_seed(3), forced_prefixes=[ONE_SEGMENT, "<think>"])

    def loss(grad_through_projector: bool) -> torch.Tensor:
        out = latent_forward(tiny_model, projector, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
                             batch.response_mask, batch.latent_segments, grad_through_projector=grad_through_projector)
        return (_gathered_logprobs(out.logits, batch.response_ids, 1.0) * batch.response_mask).sum()

    # RL: the latent embeddings are state; the LM learns, the projector does not.
    loss(False).backward()
    assert all(p.grad is None for p in projector.parameters())
    assert tiny_model.get_input_embeddings().weight.grad is not None

    # Projector SFT: LM frozen, the loss reaches the projector through the unrolled latent steps.
    tiny_model.requires_grad_(False)
    loss(True).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
