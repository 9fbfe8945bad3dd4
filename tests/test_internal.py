"""BuPO internal policies: hooks, the residual decomposition, internal log-probs, IPA gradients, entropies."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from thinklean.core.losses import entropy_from_logits
from thinklean.models.internal import (
    decoder_parts,
    entropy_summary,
    internal_logprobs,
    internal_states,
    layer_entropies,
    layer_entropy_sums,
    layer_policy_logits,
    projected_entropy,
)

TOL = 1e-5
SMALL = dict(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)


def _small(config_class, model_class, seed: int = 0):
    torch.manual_seed(seed)
    return model_class(config_class(**SMALL)).eval()


@pytest.fixture()
def llama():
    """A 3-layer Llama built locally (no final-norm weight tying, untied unembedding)."""
    return _small(LlamaConfig, LlamaForCausalLM)


@pytest.fixture(params=["qwen2", "llama", "qwen3", "mistral"])
def layout_model(request, tiny_model):
    builders = {
        "qwen2": lambda: tiny_model.eval(),
        "llama": lambda: _small(LlamaConfig, LlamaForCausalLM),
        "qwen3": lambda: _small(Qwen3Config, Qwen3ForCausalLM),
        "mistral": lambda: _small(MistralConfig, MistralForCausalLM),
    }
    return builders[request.param]()


def _batch(model, seed: int = 1):
    """Two rows of 6 tokens, the first left-padded by 2; positions = cumsum(mask) - 1."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, model.config.vocab_size, (2, 6), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :2] = 0
    input_ids[0, :2] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def _spread(model: nn.Module, scale: float = 5.0) -> nn.Module:
    """Scale the weight matrices so that entropies differ clearly across layers (HF's init is tiny)."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(scale)
    return model.eval()


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _model_logits(model, input_ids, attention_mask, position_ids, **kwargs):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)


# --------------------------------------------------------------------------------- hooks


def test_final_norm_of_last_stream_reproduces_model_logits(layout_model):
    input_ids, attention_mask, position_ids = _batch(layout_model)
    parts = decoder_parts(layout_model)
    with torch.no_grad():
        states = internal_states(layout_model, input_ids, attention_mask, position_ids)
        logits = parts.unembedding(parts.final_norm(states["stream"][parts.num_layers]))
    expected = _model_logits(layout_model, input_ids, attention_mask, position_ids).logits
    assert set(states["stream"]) == set(range(parts.num_layers + 1))
    torch.testing.assert_close(logits, expected, atol=TOL, rtol=0)


def test_stream_is_previous_stream_plus_attention_plus_ffn(layout_model):
    input_ids, attention_mask, position_ids = _batch(layout_model)
    with torch.no_grad():
        states = internal_states(layout_model, input_ids, attention_mask, position_ids)
        hidden = _model_logits(layout_model, input_ids, attention_mask, position_ids,
                               output_hidden_states=True).hidden_states
    num_layers = len(states["attn"])
    for layer in range(1, num_layers + 1):
        stream, attn, ffn = states["stream"], states["attn"][layer], states["ffn"][layer]
        torch.testing.assert_close(stream[layer], stream[layer - 1] + attn + ffn, atol=TOL, rtol=0)
        torch.testing.assert_close(states["mid"][layer], stream[layer - 1] + attn, atol=TOL, rtol=0)
    for layer in range(num_layers):  # HF's hidden_states[L] is already normed, so stop before it
        torch.testing.assert_close(states["stream"][layer], hidden[layer], atol=TOL, rtol=0)


def test_layer_zero_is_the_embedding(tiny_model):
    input_ids, attention_mask, position_ids = _batch(tiny_model)
    with torch.no_grad():
        states = internal_states(tiny_model, input_ids, attention_mask, position_ids, names=("stream",), up_to_layer=0)
        embedded = tiny_model.get_input_embeddings()(input_ids)
        logprobs = internal_logprobs(tiny_model, input_ids, attention_mask, layer=0)
    assert set(states["stream"]) == {0}
    torch.testing.assert_close(states["stream"][0], embedded, atol=0, rtol=0)
    hand = torch.log_softmax(embedded @ tiny_model.lm_head.weight.T, -1)[:, :-1]
    torch.testing.assert_close(logprobs, hand.gather(-1, input_ids[:, 1:, None]).squeeze(-1), atol=TOL, rtol=0)
    with pytest.raises(ValueError, match=r"kind='attn' must be an int in \[1, 2\]"):
        internal_logprobs(tiny_model, input_ids, attention_mask, layer=0, kind="attn")
    with pytest.raises(ValueError, match=r"\[0, 2\], got 3"):
        internal_logprobs(tiny_model, input_ids, attention_mask, layer=3)


def test_last_layer_policy_equals_model_only_with_final_norm(llama):
    input_ids, attention_mask, position_ids = _batch(llama)
    expected = _model_logits(llama, input_ids, attention_mask, position_ids).logits
    with torch.no_grad():
        raw = layer_policy_logits(llama, input_ids, attention_mask, position_ids, layer=3)
        normed = layer_policy_logits(llama, input_ids, attention_mask, position_ids, layer=3, apply_final_norm=True)
        last_two = layer_policy_logits(llama, input_ids, attention_mask, position_ids, layer=3,
                                       apply_final_norm=True, logits_to_keep=2)
    assert (raw - expected).abs().max() > 1e-2
    torch.testing.assert_close(normed, expected, atol=TOL, rtol=0)
    torch.testing.assert_close(last_two, expected[:, -2:], atol=TOL, rtol=0)


def test_internal_logprobs_equal_log_softmax_of_hand_unembedded_stream(tiny_model, llama):
    for model in (tiny_model.eval(), llama):
        input_ids, attention_mask, position_ids = _batch(model)
        hidden = _model_logits(model, input_ids, attention_mask, position_ids, output_hidden_states=True).hidden_states
        weight = model.get_output_embeddings().weight
        with torch.no_grad():
            got = internal_logprobs(model, input_ids, attention_mask, layer=1)
            labels = torch.roll(input_ids, 1, dims=1)
            got_labels = internal_logprobs(model, input_ids, attention_mask, layer=1, labels=labels)
            got_attn = internal_logprobs(model, input_ids, attention_mask, layer=1, kind="attn", labels=labels)
            attn = internal_states(model, input_ids, attention_mask, names=("attn",))["attn"][1]
        hand = torch.log_softmax(hidden[1] @ weight.T, -1)
        assert got.shape == (2, 5)
        torch.testing.assert_close(got, hand[:, :-1].gather(-1, input_ids[:, 1:, None]).squeeze(-1), atol=TOL, rtol=0)
        torch.testing.assert_close(got_labels, hand.gather(-1, labels[..., None]).squeeze(-1), atol=TOL, rtol=0)
        hand_attn = torch.log_softmax(attn @ weight.T, -1).gather(-1, labels[..., None]).squeeze(-1)
        torch.testing.assert_close(got_attn, hand_attn, atol=TOL, rtol=0)


def test_last_layer_with_final_norm_gives_the_models_own_logprobs(tiny_model):
    input_ids, attention_mask, position_ids = _batch(tiny_model)
    logits = _model_logits(tiny_model.eval(), input_ids, attention_mask, position_ids).logits
    own = torch.log_softmax(logits[:, :-1] / 0.7, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    with torch.no_grad():
        got = internal_logprobs(tiny_model, input_ids, attention_mask, layer=2, apply_final_norm=True, temperature=0.7)
    torch.testing.assert_close(got, own, atol=TOL, rtol=0)


def test_ipa_gradients_reach_only_layers_up_to_l_and_the_embeddings(tiny_model, llama):
    for model, layer in ((tiny_model.train(), 1), (llama.train(), 2)):
        input_ids, attention_mask, _ = _batch(model)
        internal_logprobs(model, input_ids, attention_mask, layer=layer).sum().backward()
        for name, parameter in model.named_parameters():
            block = int(name.split(".")[2]) if name.startswith("model.layers.") else None
            if (block is not None and block >= layer) or name == "model.norm.weight":
                assert parameter.grad is None, name
            else:
                assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_layer_policy_skips_the_layers_above_l(llama):
    calls = []
    handles = [block.register_forward_hook(lambda *_, i=i: calls.append(i))
               for i, block in enumerate(llama.model.layers)]
    norm_handle = llama.model.norm.register_forward_hook(lambda *_: calls.append("norm"))
    try:
        input_ids, attention_mask, position_ids = _batch(llama)
        layer_policy_logits(llama, input_ids, attention_mask, position_ids, layer=1)
        assert calls == [0]  # layers 2, 3 and the final norm never ran
        calls.clear()
        layer_policy_logits(llama, input_ids, attention_mask, position_ids, layer=2, kind="ffn")
        assert calls == [0, 1]
    finally:
        for handle in handles + [norm_handle]:
            handle.remove()


def test_final_norm_option_sends_gradient_to_the_final_norm(llama):
    input_ids, attention_mask, _ = _batch(llama)
    internal_logprobs(llama, input_ids, attention_mask, layer=1, apply_final_norm=True).sum().backward()
    assert llama.model.norm.weight.grad is not None
    assert all(p.grad is None for p in llama.model.layers[1].parameters())


def test_hooks_are_removed_after_success_and_after_an_error(tiny_model):
    input_ids, attention_mask, _ = _batch(tiny_model)
    before = _hook_count(tiny_model)
    internal_logprobs(tiny_model, input_ids, attention_mask, layer=1)
    layer_entropies(tiny_model, input_ids, attention_mask)
    assert _hook_count(tiny_model) == before

    def fail(name, layer, tensor):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        internal_states(tiny_model, input_ids, attention_mask, callback=fail)
    assert _hook_count(tiny_model) == before


def test_unsupported_architecture_error_names_the_class():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="GPT2LMHeadModel is not supported.*model.model.layers"):
        internal_logprobs(gpt2, torch.ones(1, 4, dtype=torch.long), None, layer=1)


def test_layer_with_extra_submodules_is_rejected(llama):
    llama.model.layers[1].post_feedforward_layernorm = nn.Identity()  # Gemma-like block
    with pytest.raises(ValueError, match=r"LlamaForCausalLM.*layers\[1\].*post_feedforward_layernorm"):
        decoder_parts(llama)


# ------------------------------------------------------------------------------- entropies


def test_projected_entropy_matches_hand_values_for_every_vocab_chunk():
    # Row 1: logits (0, 0, 0, ln 3) -> p = (1/6, 1/6, 1/6, 1/2), H = 3/6 ln 6 + 1/2 ln 2 = ln(12) / 2.
    # Row 2: all logits 0 -> uniform over 4 -> H = ln 4.
    weight = torch.tensor([[0.0], [0.0], [0.0], [math.log(3.0)]])
    hidden = torch.tensor([[1.0], [0.0]])
    for vocab_chunk in (1, 2, 3, None):
        got = projected_entropy(hidden, weight, position_chunk=1, vocab_chunk=vocab_chunk)
        torch.testing.assert_close(got, torch.tensor([0.5 * math.log(12.0), math.log(4.0)]), atol=1e-6, rtol=0)


def test_zero_unembedding_gives_uniform_entropy_log_v_everywhere(tiny_model):
    with torch.no_grad():
        tiny_model.lm_head.weight.zero_()  # tied: the embeddings are zero too, every logit is 0
    input_ids, attention_mask, _ = _batch(tiny_model)
    result = layer_entropies(tiny_model, input_ids, attention_mask)
    log_v = math.log(tiny_model.config.vocab_size)
    assert result["H"] == pytest.approx([log_v] * 3, abs=1e-5)
    for key in ("dH", "dH_attn", "dH_ffn"):
        assert result[key][0] is None
        assert result[key][1:] == pytest.approx([0.0, 0.0], abs=1e-5)
    assert result["num_tokens"] == 3 + 5  # row 0: 4 real tokens -> 3 predicted; row 1: 6 -> 5


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_layer_entropies_follow_the_module_definitions_on_one_token(name, tiny_model, llama):
    """Mask one token (row 1, t=4): every entropy is read at the position before it (t=3)."""
    model = _spread(tiny_model) if name == "qwen2" else llama
    input_ids, attention_mask, position_ids = _batch(model)
    response_mask = torch.zeros_like(input_ids)
    response_mask[1, 4] = 1
    weight = model.get_output_embeddings().weight
    block = model.model.layers[0]

    @torch.no_grad()
    def entropy(vector):
        return float(entropy_from_logits(vector[1, 3] @ weight.T))

    with torch.no_grad():
        states = internal_states(model, input_ids, attention_mask, position_ids)
        hidden = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       output_hidden_states=True).hidden_states
        attn = states["attn"][1]
        expected_attn = entropy(attn) - entropy(block.input_layernorm(hidden[0]))
        expected_ffn = entropy(states["ffn"][1]) - entropy(block.post_attention_layernorm(hidden[0] + attn))
        last = states["stream"][len(hidden) - 1]
        last_normed = entropy(model.model.norm(last))
    module = layer_entropies(model, input_ids, attention_mask, response_mask)
    residual = layer_entropies(model, input_ids, attention_mask, response_mask, variant="residual")
    normed = layer_entropies(model, input_ids, attention_mask, response_mask, apply_final_norm=True)

    assert module["num_tokens"] == 1
    assert min(abs(expected_attn), abs(expected_ffn), abs(entropy(hidden[1]) - entropy(hidden[0]))) > 0.05
    assert module["H"] == pytest.approx([entropy(h) for h in hidden[:-1]] + [entropy(last)], abs=1e-5)
    assert module["dH"][1] == pytest.approx(entropy(hidden[1]) - entropy(hidden[0]), abs=1e-5)
    assert module["dH_attn"][1] == pytest.approx(expected_attn, abs=1e-5)
    assert module["dH_ffn"][1] == pytest.approx(expected_ffn, abs=1e-5)
    assert residual["dH_attn"][1] == pytest.approx(entropy(hidden[0] + attn) - entropy(hidden[0]), abs=1e-5)
    assert residual["dH_ffn"][1] == pytest.approx(entropy(hidden[1]) - entropy(hidden[0] + attn), abs=1e-5)
    assert residual["H"] == pytest.approx(module["H"], abs=1e-6)
    assert normed["H"][-1] == pytest.approx(last_normed, abs=1e-5)
    assert normed["dH_attn"] == pytest.approx(module["dH_attn"], abs=1e-6)  # modules are never normed


def test_layer_entropies_do_not_depend_on_chunk_sizes(llama):
    input_ids, attention_mask, _ = _batch(llama)
    response_mask = torch.zeros_like(input_ids)
    response_mask[:, 3:] = 1  # 3 tokens per row, each preceded by a real token
    reference = layer_entropies(llama, input_ids, attention_mask, response_mask)
    chunked = layer_entropies(llama, input_ids, attention_mask, response_mask, position_chunk=2, vocab_chunk=7)
    assert reference["num_tokens"] == chunked["num_tokens"] == 6
    for key in ("H", "H_attn", "H_attn_in", "H_ffn", "H_ffn_in"):
        assert chunked[key] == pytest.approx(reference[key], abs=1e-5)


def test_entropy_sums_of_two_batches_average_over_all_their_tokens(llama):
    """Row 0 scores 2 tokens, row 1 scores 4: the combined mean weights tokens, not batches."""
    input_ids, attention_mask, _ = _batch(llama)
    response_mask = torch.zeros_like(input_ids)
    response_mask[0, 4:] = 1
    response_mask[1, 2:] = 1
    whole = layer_entropies(llama, input_ids, attention_mask, response_mask)
    parts = [layer_entropy_sums(llama, input_ids[i : i + 1], attention_mask[i : i + 1], response_mask[i : i + 1])
             for i in (0, 1)]
    combined = entropy_summary({key: parts[0][key] + parts[1][key] for key in parts[0]})
    means = [entropy_summary(p)["H"] for p in parts]
    assert combined["num_tokens"] == whole["num_tokens"] == 6
    assert combined["H"] == pytest.approx(whole["H"], abs=1e-5)
    assert combined["H"] == pytest.approx([(2 * a + 4 * b) / 6 for a, b in zip(*means)], abs=1e-5)
    assert abs(means[0][3] - means[1][3]) > 1e-3  # so a plain mean of the two would differ
