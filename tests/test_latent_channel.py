"""The latent channel on the shipped base model: latent inputs on the embedding scale, and the
projector's SFT gradient through the whole latent chain (issue #25's defects)."""

from __future__ import annotations

import pytest
import torch

from thinklean.data.formats import format_prompt
from thinklean.data.litereason import litereason_prompt
from thinklean.eval.evaluate import arith_examples
from thinklean.eval.latent_probe import LatentProbe
from thinklean.models.projector import ReasoningProjector, embedding_norm
from thinklean.models.tiny import load_pretrained
from thinklean.rollout.engine import SamplingConfig
from thinklean.rollout.latent import generate_latent, latent_forward, segment_finder

RESPONSE = ("<think> <implicit_thought>3</implicit_thought> 12 * 3 = 36. <implicit_thought>2</implicit_thought> "
            "</think> \\boxed{36}")


@pytest.fixture(scope="module")
def base():
    """The shipped base model (frozen) and its tokenizer."""
    model, tokenizer = load_pretrained()
    return model.requires_grad_(False), tokenizer


def _prompts(tokenizer, n: int) -> list[str]:
    return [format_prompt(litereason_prompt(e.prompt), tokenizer) for e in arith_examples(n, "test", 0)]


@pytest.mark.parametrize("output_norm", [
    "embedding",
    pytest.param("none", marks=pytest.mark.xfail(strict=True, reason="the paper's projector: copies of the last MLP "
                                                 "chained three times give latent inputs up to ~1e6x too large")),
])
def test_real_init_latent_inputs_are_within_10x_of_the_token_embedding_norm(base, output_norm):
    model, tokenizer = base
    projector = ReasoningProjector.from_model(model, output_norm=output_norm)
    batch = generate_latent(model, tokenizer, projector, _prompts(tokenizer, 6), 1,
                            SamplingConfig(max_new_tokens=8, temperature=0.0),
                            forced_prefixes=["<think> <implicit_thought>3</implicit_thought>"] * 6)
    norms = torch.cat(batch.latent_inputs).norm(dim=-1)
    reference = embedding_norm(model)
    assert norms.numel() == 6 * 3
    assert bool(((norms > reference / 10) & (norms < reference * 10)).all()), (reference, norms.tolist())


def _unrolled_gradient(model, projector, prompt: list[int], response: list[int], segments, scored: list[int],
                       detach_chain: bool) -> list[torch.Tensor]:
    """The projector's gradient of the scored tokens' log-likelihood, computed by hand: one row,
    no cache, the whole sequence re-run for every latent step. ``detach_chain``: each latent
    step's projector input is cut from the graph (the defect the test must catch)."""
    projector.zero_grad(set_to_none=True)
    embed = model.get_input_embeddings()
    steps_after = dict(segments)
    embeds = embed(torch.tensor(prompt))
    scoring = []
    for t, token in enumerate(response):
        scoring.append(embeds.shape[0] - 1)
        embeds = torch.cat([embeds, embed(torch.tensor([token]))])
        for _ in range(steps_after.get(t + 1, 0)):
            hidden = model(inputs_embeds=embeds[None], output_hidden_states=True).hidden_states[-1][0, -1]
            latent = projector(hidden.detach() if detach_chain else hidden)
            embeds = torch.cat([embeds, latent[None]])
    logprobs = torch.log_softmax(model(inputs_embeds=embeds[None]).logits[0], -1)
    rows = torch.tensor([scoring[t] for t in scored])
    logprobs[rows, torch.tensor([response[t] for t in scored])].sum().backward()
    return [p.grad.clone() for p in projector.parameters()]


def test_the_sft_gradient_runs_through_the_whole_latent_chain():
    # float64: the gradient through three chained copies of the model's MLP is ill-conditioned
    # enough that float32 rounding alone moves it by ~0.3% between the two computations. base-v3:
    # there the later latent steps carry most of the gradient (the shipped model: 1.5-8%), so
    # cutting the chain must move it by half
    model, tokenizer = load_pretrained("base-v3", dtype=torch.float64)
    model.requires_grad_(False)
    projector = ReasoningProjector.from_model(model)
    prompt = tokenizer(_prompts(tokenizer, 1)[0], add_special_tokens=False).input_ids
    response = tokenizer(RESPONSE, add_special_tokens=False).input_ids
    segments = segment_finder(tokenizer, projector.max_steps)(response)
    assert [n for _, n in segments] == [3, 2]
    scored = list(range(segments[0][0], len(response)))  # the SFT loss: every token after the first segment

    projector.zero_grad(set_to_none=True)
    ids = torch.tensor([response])
    out = latent_forward(model, projector, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long), ids,
                         torch.ones_like(ids), [segments], grad_through_projector=True)
    logprobs = torch.log_softmax(out.logits[0], -1)
    logprobs[torch.tensor(scored), ids[0, scored]].sum().backward()
    library = [p.grad.clone() for p in projector.parameters()]

    unrolled = _unrolled_gradient(model, projector, prompt, response, segments, scored, detach_chain=False)
    detached = _unrolled_gradient(model, projector, prompt, response, segments, scored, detach_chain=True)
    for got, want, cut in zip(library, unrolled, detached):
        assert float((got - want).norm()) < 1e-5 * float(want.norm())
        # the steps after the first reach the loss through the chain: cutting it changes the gradient
        assert float((got - cut).norm()) > 0.5 * float(want.norm())


def test_the_probe_reads_a_problem_independent_latent_as_cosine_one_and_zero_swap_kl(base):
    model, tokenizer = base
    probe = LatentProbe(tokenizer, problems=4)
    projector = ReasoningProjector.from_model(model)
    live = probe.measure(model, projector)
    assert live["probe_latent_norm"] == pytest.approx(live["probe_embedding_norm"], rel=1e-5)
    assert live["probe_latent_cosine"] < 0.99 and live["probe_swap_kl"] > 0.01

    constant = model.get_input_embeddings().weight[7].detach()
    projector.forward = lambda hidden: constant.expand_as(hidden)  # the same latent for every problem
    dead = probe.measure(model, projector)
    assert dead["probe_latent_cosine"] == pytest.approx(1.0)
    assert dead["probe_swap_kl"] == pytest.approx(0.0, abs=1e-6)
    assert dead["probe_latent_norm"] == dead["probe_latent_norm_max"] == pytest.approx(float(constant.norm()))
